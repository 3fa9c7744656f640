"""Candidate plans timed against each other: which of a few pruned models runs fastest here?

A shared machine's speed drifts by tens of percent over seconds (other tenants, clocks): timed one
after another, each for a quarter of a second, the plans a prune weighs were often ranked by when
each was timed. EfficientNet-Lite0 in eager PyTorch at 20% fewer MACs kept the plan that later
timings in fresh processes put first in 2 of 8 prunes (docs/runtime.md, "Plans timed run by run").
So where every candidate fits in memory at once, they run in rounds, one run each per round: a
drift reaches every plan of a round alike, each run is divided by its round's median, and each
plan's figure is the median of those ratios over the rounds (times that typical round median, to
read as milliseconds). Where they do not fit, or a program cannot hand out a runner, each plan is
timed whole, twice, taking turns (``Program.plan_latency_ms``).
"""
from __future__ import annotations

import itertools
import statistics
import time
from typing import Callable

from ..util.progress import progress
from .memory import available_memory, weight_parts

HELD_BYTES = 1 << 30  # the most weights of candidate models held at once for timing in rounds
ROUNDS = 7  # at least this many rounds
MOST_ROUNDS = 200
SECONDS_PER_PLAN = 0.5  # ... and rounds until this much time per plan is spent


def time_in_turns(program, plans: list, runtime: str) -> list[float]:
    """Each plan's time (ms) on ``runtime``, comparable between the plans: timed in rounds where
    they fit in memory together, else timed twice each taking turns (the faster figure kept: a
    single timing of close plans once let one slow spell of the machine decide between them). A
    single plan is timed once: there is nothing to decide."""
    if len(plans) > 1 and hasattr(program, "runner") and _fits(program, len(plans)):
        with program.timing(runtime):
            runs = [program.apply(p).runner(runtime) for p in plans]
            if all(r is not None for r in runs):
                return in_rounds(runs, f"timing {len(plans)} candidate plans on {runtime}, run by run")
    rounds, n = (2 if len(plans) > 1 else 1), len(plans)
    times = [0.0] * n
    for k in progress(range(rounds * n), f"timing {n} candidate plan(s) on {runtime}", rounds * n):
        turn, i = divmod(k, n)
        times[i] = program.plan_latency_ms(plans[i], runtime, least=turn + 1)
    return times


def in_rounds(runs: list[Callable[[], object]], label: str = "timing in rounds") -> list[float]:
    """Per run, its median share of each round's median time, times the median round's median (ms).
    Each run is warmed up once first. A round one of whose runs the scheduler paused (wall time
    well above the CPU time the process spent: another process, a container's quota) is left out
    while enough clean rounds remain."""
    for run in runs:
        run()
    rounds: list[list[tuple[float, bool]]] = []
    start, budget = time.perf_counter(), SECONDS_PER_PLAN * len(runs)
    for _ in progress(itertools.count(), label):
        if len(rounds) >= MOST_ROUNDS or (len(rounds) >= ROUNDS and time.perf_counter() - start >= budget):
            break
        row = []
        for run in runs:
            c, t = time.process_time(), time.perf_counter()
            run()
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            row.append((wall * 1e3, wall <= 1.3 * cpu + 2e-4))
        rounds.append(row)
    clean = [r for r in rounds if all(ok for _, ok in r)]
    use = clean if len(clean) >= 3 else rounds  # a device's runs wait without CPU time: all rounds then
    medians = [statistics.median(ms for ms, _ in r) for r in use]
    typical = statistics.median(medians)
    return [typical * statistics.median(r[i][0] / m for r, m in zip(use, medians)) for i in range(len(runs))]


def _fits(program, n: int) -> bool:
    """Whether ``n`` pruned copies of the program's model fit in memory beside it (their weights at
    most the original's each): within :data:`HELD_BYTES` and a quarter of what the system has."""
    weights = next(p.bytes for p in weight_parts(program.graph().ir) if p.name == "weights")
    free = available_memory()
    return n * weights <= min(HELD_BYTES, free // 4 if free is not None else HELD_BYTES)
