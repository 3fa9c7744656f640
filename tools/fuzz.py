"""Fuzz the engine with random architectures and the exactness oracle.

Draws ``--examples`` random models from the property test's generator
(tests/random_arch.py: convs plain/grouped/depthwise/transposed, BatchNorm, SE gates,
residual/cat/split, channel-last linears, attention incl. GQA by repeat_kv and by
repeat_interleave, LSTM/GRU/RNN, LayerNorm, token mixing, tuple outputs) and holds each
to the whole property (tests/test_property.py: trace, oracle, in-place prune equals the
masked original, ratio 0 is bit-identical). Stops at the first wrong model and prints
its recipe (hypothesis shrinks it first).

    .venv/bin/python tools/fuzz.py --examples 2000 --workers 2 --out docs/data/fuzz.json
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _worker(args: tuple[int, int, int]) -> dict:
    """Run ``n`` examples with hypothesis seed ``seed``; returns counts (or the failure)."""
    n, seed, worker = args
    os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
    import random_arch as ra
    import torch
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis import strategies as st
    from test_property import RATIOS, check_property

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    kinds: Counter = Counter()
    stats: Counter = Counter()
    done = [0]
    start = time.perf_counter()

    failed: list[str] = []

    # no shrinking: a random architecture is readable as drawn, and shrinking one can take hours
    @hseed(seed)
    @settings(max_examples=n, deadline=None, database=None, derandomize=False, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(recipe=ra.recipes(), ratio=RATIOS, importance=st.sampled_from(("random", "random", "l2")))
    def run(recipe, ratio, importance):
        try:
            out = check_property(recipe, ratio, importance)
        except BaseException:
            failed.append(f"{ra.describe(recipe)}\nreplay: check_property({recipe!r}, {ratio!r}, {importance!r})")
            raise
        kinds.update(ra.block_kinds(recipe))
        stats.update({"examples": 1, "groups_prunable": out["prunable"], "groups_pruned": out["pruned"],
                      "models_pruned": int(out["pruned"] > 0), "inexact_reported": out["inexact"]})
        done[0] += 1
        if done[0] % 50 == 0:
            print(f"  worker {worker}: {done[0]} examples, {time.perf_counter() - start:.0f} s", flush=True)

    try:
        run()
    except BaseException as exc:  # a wrong model or a crash: report the (shrunk) recipe
        where = failed[-1] if failed else ""
        return {"failed": f"{type(exc).__name__}: {exc}\n{where}", "kinds": dict(kinds), "stats": dict(stats)}
    return {"failed": None, "kinds": dict(kinds), "stats": dict(stats)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=200, help="random models to check (all workers together)")
    ap.add_argument("--workers", type=int, default=1, help="processes (each draws its own stream)")
    ap.add_argument("--seed", type=int, default=0, help="base hypothesis seed (worker k uses seed + k)")
    ap.add_argument("--out", type=Path, help="write the summary as JSON here")
    a = ap.parse_args()
    per = [a.examples // a.workers + (1 if k < a.examples % a.workers else 0) for k in range(a.workers)]
    jobs = [(n, a.seed + k, k) for k, n in enumerate(per)]
    t0 = time.perf_counter()
    print(f"fuzzing {a.examples} random architectures on {a.workers} worker(s)", flush=True)
    if a.workers == 1:
        results = [_worker(jobs[0])]
    else:
        with mp.get_context("spawn").Pool(a.workers) as pool:
            results = pool.map(_worker, jobs)
    seconds = time.perf_counter() - t0
    kinds: Counter = Counter()
    stats: Counter = Counter()
    for r in results:
        kinds.update(r["kinds"])
        stats.update(r["stats"])
    failures = [r["failed"] for r in results if r["failed"]]
    summary = {"examples": stats["examples"], "wrong_models": len(failures), "seconds": round(seconds, 1),
               "workers": a.workers, "seed": a.seed, "stats": dict(stats), "block_kinds": dict(sorted(kinds.items())),
               "command": f"tools/fuzz.py --examples {a.examples} --workers {a.workers} --seed {a.seed}"}
    print()
    print(f"{'block kind':<28} models")
    for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"{k:<28} {v}")
    print()
    print(f"examples checked: {stats['examples']}  models with a pruned group: {stats['models_pruned']}  "
          f"groups pruned: {stats['groups_pruned']}  inexact groups reported: {stats['inexact_reported']}")
    print(f"wrong models: {len(failures)}  time: {seconds:.0f} s")
    for f in failures:
        print("FAILED:", f[:4000])
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
