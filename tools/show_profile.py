"""Print the width profile graphprune uses on this machine: per op kind, the alignment and the block
timings it came from (graphprune/planning/measure.py), for a runtime and, in PyTorch, a placement.

    .venv/bin/python tools/show_profile.py --runtime onnxruntime
    .venv/bin/python tools/show_profile.py --runtime torch --dtype bfloat16           # AMX / AVX-512 bf16
    .venv/bin/python tools/show_profile.py --runtime torch --device cuda --dtype float16
    .venv/bin/python tools/show_profile.py --runtime torch --fresh   # measure again, cache untouched
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphprune.planning import measure  # noqa: E402  (after the path)
from graphprune.planning.placement import Placement  # noqa: E402

SHOWN = (33, 40, 47, 48, 56, 63, 64)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runtime", choices=measure.RUNTIMES, default="onnxruntime")
    p.add_argument("--device", default="cpu", help="PyTorch only: cpu, cuda, cuda:1")
    p.add_argument("--dtype", default="float32", help="PyTorch only: float32, float16, bfloat16")
    p.add_argument("--fresh", action="store_true", help="measure now instead of reading the cache")
    a = p.parse_args()
    where = Placement(a.device, a.dtype)
    if a.runtime != "torch" and not where.default:
        sys.exit("--device and --dtype are PyTorch placements; onnxruntime is profiled on the CPU in float32")
    prof = measure.measure_profile(a.runtime, 1, where) if a.fresh else measure.load_profile(a.runtime, where=where)
    print(f"{prof.machine}\nmeasured in {prof.seconds:.1f} s")
    print("| kind | alignment | " + " | ".join(f"{w} ch (us)" for w in SHOWN) + " |")
    print("|---|---|" + "---|" * len(SHOWN))
    for kind, align in prof.align.items():
        times = prof.times.get(kind, {})
        print(f"| {kind} | {align} | " + " | ".join(f"{1000 * times[w]:.0f}" if w in times else "-" for w in SHOWN)
              + " |")


if __name__ == "__main__":
    main()
