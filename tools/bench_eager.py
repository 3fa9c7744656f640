"""The default call on a PyTorch module, timed where it runs: eager PyTorch on the CPU, float32 and bfloat16.

``graphprune.prune(model, args, budget={"macs": m})`` with ``runtime="auto"`` targets eager PyTorch on
the model's device and dtype (docs/runtime.md, "How the widths are found"): widths from that
placement's profile, the multiples and tilts timed there. Each model is pruned in each dtype, then
the original, the pruned module and Torch-Pruning's at the same MACs (``--no-peer`` leaves it out) are
timed taking turns (median of three rounds of best-of-runs) at batch 1 and 8 on one and two threads.
EfficientNet-Lite0 carries its ImageNet weights (tools/fetch_vision.py); MobileNetV2 and ResNet-50 are
the zoo's (models/).

    .venv/bin/python tools/bench_eager.py --json docs/data/eager.json
    .venv/bin/python tools/bench_eager.py --models mobilenetv2 --dtypes bfloat16 --macs 0.5
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench_runtime  # noqa: E402  (after the path)
import torch  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.planning.measure import best_of  # noqa: E402

CELLS = ((1, 1), (1, 2), (8, 1), (8, 2))  # (batch, threads)


def timed(models: list, x: torch.Tensor, threads: int, rounds: int = 3) -> list[float]:
    """Per module, the median over ``rounds`` of its best-of-runs ms, the modules taking turns."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        per: list[list[float]] = [[] for _ in models]
        with torch.no_grad():
            for _ in range(rounds):
                for i, m in enumerate(models):
                    per[i].append(best_of(lambda m=m: m(x), budget_s=0.2, least=3))
        return [statistics.median(t) for t in per]
    finally:
        torch.set_num_threads(before)


def one(name: str, dtype: str, macs: float, peer: bool) -> dict:
    model, args = bench_runtime.torch_model(name)
    cast = getattr(torch, dtype)
    model, x = model.to(cast).eval(), args[0].to(cast)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned, report = gp.prune(copy.deepcopy(model), (x,), budget={"macs": macs})
    row = {"model": name, "dtype": dtype, "macs_target": macs, "prune_s": time.perf_counter() - start,
           "macs_reduction": report.macs_before / report.macs_after,
           "widths": " ".join(n for n in report.notes if n.startswith("widths")),
           "report_speedup": report.latency.speedup if report.latency else None}
    tp = bench_runtime.tp_prune(copy.deepcopy(model), (x,), macs) if peer else None
    for batch, threads in CELLS:
        xb = x.repeat(batch, *[1] * (x.dim() - 1))
        dense, slim, *peer_ms = timed([model, pruned] + ([tp] if tp is not None else []), xb, threads)
        row[f"b{batch}_t{threads}"] = {"dense_ms": dense, "graphprune_ms": slim, "speedup": dense / slim,
                                       "tp_speedup": dense / peer_ms[0] if peer_ms else None}
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["efficientnet_lite0", "mobilenetv2", "resnet50"])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--macs", nargs="+", type=float, default=[0.8, 0.5])
    p.add_argument("--no-peer", action="store_true", help="leave Torch-Pruning out")
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    rows = []
    print("| model | dtype | MACs | MACs cut | b1 t1 | b1 t2 | b8 t1 | b8 t2 | kept | prune time | Torch-Pruning |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in a.models:
        for dtype in a.dtypes:
            for macs in a.macs:
                r = one(name, dtype, macs, not a.no_peer)
                rows.append(r)
                kept = r["widths"].rsplit("; kept ", 1)[-1] if "; kept " in r["widths"] else "the profile's steps"
                cells = " | ".join(f"{r[f'b{b}_t{t}']['speedup']:.2f}x" for b, t in CELLS)
                peer = " / ".join(f"{r[f'b{b}_t{t}']['tp_speedup']:.2f}x" if r[f"b{b}_t{t}"]["tp_speedup"] else "-"
                                  for b, t in CELLS)
                print(f"| {name} | {dtype} | {macs:.0%} | {r['macs_reduction']:.2f}x | {cells} | {kept} | "
                      f"{r['prune_s']:.0f} s | {peer} |", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
