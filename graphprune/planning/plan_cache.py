"""Candidate plans' timings, kept per machine: the same prune twice gives the same model.

``round_to="auto"`` chooses between candidate plans by timing them (planning/turns.py), and a close
race can go either way from one run to the next: a user's CNN came out 63.8K or 75.6K parameters in
four runs of one command. The first prune's timings of a set of candidates are therefore kept, keyed
by the machine (processor, runtime and version, threads, device and dtype: measure.machine_id), the
model's structure (every op and the shapes it reads, which is all a run time depends on) and the
candidates' widths; a later prune that weighs the same candidates reuses them and chooses the same
plan. ``$GRAPHPRUNE_PLAN_CACHE=0`` times afresh every prune; the files live beside the profiles
(``$GRAPHPRUNE_CACHE``/plans).
"""
from __future__ import annotations

import hashlib
import json
import os

from ..util.atomic import atomic_path
from .measure import cache_root, machine_id

ENV = "GRAPHPRUNE_PLAN_CACHE"


def _structure(program) -> str:
    ir = program.graph().ir
    h = hashlib.sha256()
    for n in ir.nodes:
        h.update(f"{n.op}{[ir.values[i].shape for i in n.inputs if i in ir.values]};".encode())
    return h.hexdigest()


def plan_key(program, plans: list, runtime: str) -> str | None:
    """The cache key of timing ``plans`` of ``program`` on ``runtime`` here; None where caching is off."""
    if os.environ.get(ENV, "1") == "0" or not hasattr(program, "graph"):  # off, or a stand-in without a graph
        return None
    doc = [machine_id(runtime, 1, program.placement(runtime)), _structure(program), [repr(p.widths_key) for p in plans]]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()


def load(key: str | None) -> tuple[list[float], str] | None:
    """(times, how they were taken) kept under ``key``, or None."""
    if key is None:
        return None
    try:
        doc = json.loads((cache_root() / "plans" / f"{key}.json").read_text())
        return [float(t) for t in doc["times"]], str(doc["how"])
    except (OSError, ValueError, KeyError, TypeError):  # absent, or a file another version wrote
        return None


def store(key: str | None, times: list[float], how: str) -> None:
    if key is None:
        return
    path = cache_root() / "plans" / f"{key}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"times": list(times), "how": how}))
    except OSError:  # a read-only home: the prune goes on, timing afresh next time
        pass


def original_ms(program, runtime: str) -> float:
    """The unpruned model's latency on ``runtime`` as the planner weighs it, kept like the candidates'
    timings: the time tilt and the latency table scale every estimate by it, so a fresh figure each
    prune bent the tilts, changed the candidates' widths (and so this cache's key) and made the same
    command write a different model from run to run (a user's EEG detector: three models in four runs)."""
    key = plan_key(program, [], runtime)
    key = None if key is None else hashlib.sha256(f"original {key}".encode()).hexdigest()
    kept = load(key)
    if kept is not None and kept[0]:
        return kept[0][0]
    ms = program.latency_ms(runtime)
    store(key, [ms], "the original")
    return ms
