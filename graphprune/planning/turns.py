"""Candidate plans timed against each other: which of a few pruned models runs fastest here?

A shared machine's speed drifts by tens of percent over seconds (other tenants, clocks): timed one
after another, each for a quarter of a second, the plans a prune weighs were often ranked by when
each was timed. EfficientNet-Lite0 in eager PyTorch at 20% fewer MACs kept the plan that later
timings in fresh processes put first in 2 of 8 prunes (docs/runtime.md, "Plans timed run by run").
So where every candidate fits in memory at once, they run in rounds, one run each per round (the
order rotated from round to round): a drift reaches every plan of a round alike, each run is
divided by its round's median, and each plan's figure is the median of those ratios over the
rounds (times the typical round's median, to read as milliseconds). Where they do not fit, or a
program cannot hand out a runner, each plan is timed whole, twice, taking turns
(``Program.plan_latency_ms``). Plans with the same widths are timed once.
"""
from __future__ import annotations

import itertools
import statistics
import time
from typing import Callable

from ..util.progress import progress
from . import plan_cache
from .measure import run_timed
from .memory import free_memory, weight_parts

HELD_BYTES = 1 << 30  # the most weights of candidate models held at once for timing in rounds
ROUNDS = 7  # at least this many rounds
MOST_ROUNDS = 200
SECONDS_PER_PLAN = 0.5  # ... and rounds until this much time per plan is spent


class Timings(list):
    """Each plan's figure (ms), and how they were taken ("run by run" or "one by one")."""

    def __init__(self, figures, how: str) -> None:
        super().__init__(figures)
        self.how = how


def time_in_turns(program, plans: list, runtime: str) -> Timings:
    """Each plan's time (ms) on ``runtime``, comparable between the plans: timed in rounds where
    they fit in memory together, else timed twice each taking turns (the faster figure kept: a
    single timing of close plans once let one slow spell of the machine decide between them). A
    single plan is timed once: there is nothing to decide. Candidates timed by an earlier prune
    on this machine are not timed again (planning/plan_cache.py): the same call, the same model."""
    key = plan_cache.plan_key(program, plans, runtime) if len(plans) > 1 else None
    kept = plan_cache.load(key)
    if kept is not None:
        return Timings(kept[0], f"{kept[1]} by an earlier prune on this machine")
    times = _time(program, plans, runtime)
    plan_cache.store(key, times, times.how)
    return times


def _time(program, plans: list, runtime: str) -> Timings:
    if runtime in getattr(program, "round_runtimes", ()) and len(plans) > 1:
        keys = [p.widths_key for p in plans]
        unique = list(dict.fromkeys(keys))
        if len(unique) > 1 and _fits(program, len(unique)):
            first = [plans[keys.index(k)] for k in unique]
            runs = [program.apply(p).runner(runtime) for p in first]
            with program.timing(runtime):
                times = in_rounds(runs, f"timing {len(runs)} candidate plans on {runtime}, run by run",
                                  paused_check=not program.placement(runtime).gpu)
            return Timings([times[unique.index(k)] for k in keys], "run by run")
    rounds, n = (2 if len(plans) > 1 else 1), len(plans)
    times = [0.0] * n
    for k in progress(range(rounds * n), f"timing {n} candidate plan(s) on {runtime}", rounds * n):
        turn, i = divmod(k, n)
        times[i] = program.plan_latency_ms(plans[i], runtime, least=turn + 1)
    return Timings(times, "one by one")


def in_rounds(runs: list[Callable[[], object]], label: str = "timing in rounds",
              paused_check: bool = True) -> list[float]:
    """Per run, its median share of each round's median time, times the median round's median (ms).
    Each run is warmed up once first, and each round starts one run further on. A round one of
    whose runs the scheduler paused (wall time well above the CPU time the process spent: another
    process, a container's quota) is left out while three clean rounds remain (a minority of such
    rounds the medians already discount); ``paused_check=False`` keeps every round (a GPU's runs
    wait for the device without CPU time)."""
    for run in runs:
        run()
    n = len(runs)
    rounds: list[list[tuple[float, bool]]] = []
    start, budget = time.perf_counter(), SECONDS_PER_PLAN * n
    for _ in progress(itertools.count(), label):
        if len(rounds) >= MOST_ROUNDS or (len(rounds) >= ROUNDS and time.perf_counter() - start >= budget):
            break
        row: list[tuple[float, bool]] = [(0.0, True)] * n
        for i in [(len(rounds) + j) % n for j in range(n)]:
            ms, ok = run_timed(runs[i])
            row[i] = (ms, ok or not paused_check)
        rounds.append(row)
    clean = [r for r in rounds if all(ok for _, ok in r)]
    use = clean if len(clean) >= 3 else rounds
    medians = [statistics.median(ms for ms, _ in r) for r in use]
    typical = statistics.median(medians)
    return [typical * statistics.median(r[i][0] / m for r, m in zip(use, medians)) for i in range(n)]


def _fits(program, n: int) -> bool:
    """Whether ``n`` pruned copies of the program's model (each at most the original's weights, held
    ``program.held_copies`` times: a session's copy beside an ONNX model) fit in memory beside it:
    within :data:`HELD_BYTES` and a quarter of the memory the system has free."""
    weights = next(p.bytes for p in weight_parts(program.graph().ir) if p.name == "weights")
    free = free_memory()
    cap = min(HELD_BYTES, free // 4) if free is not None else HELD_BYTES
    return n * weights * getattr(program, "held_copies", 1) <= cap
