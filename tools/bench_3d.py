"""3-D networks in eager PyTorch: the default call with floors at kernel cliffs, before them, and the peer.

PyTorch's CPU convolution leaves oneDNN for an unfolded volume (``slow_conv3d``) below a size, so a 3-D
layer cut too narrow runs slower than whole (graphprune/planning/cliffs.py). For each 3-D network of the
MONAI suite (models/monai_nets.py, random weights) at a MACs budget this prunes:

  default   ``graphprune.prune(model, (x,), budget={"macs": m})``: 1-D/3-D layers in the latency table,
            floors where a narrower layer runs slower
  before    the same call as before floors: no floors, 3-D layers left out of the table (patched here)
  peer      Torch-Pruning at the same MACs (counted as graphprune counts them; L2 magnitude)

then times the original and the three taking turns (median of three rounds of best-of-runs) at batch 1
on one and two threads, and prints speedups over the original. Nothing else should run meanwhile.

    .venv/bin/python tools/bench_3d.py --json docs/data/cliffs_3d.json
    .venv/bin/python tools/bench_3d.py --only basicunet3d --macs 0.5
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench_eager  # noqa: E402  (after the path)
import bench_runtime  # noqa: E402
from json_rows import append_rows  # noqa: E402

import graphprune as gp  # noqa: E402
import graphprune.pipeline as pipeline  # noqa: E402
from graphprune.planning import latency_table  # noqa: E402

THREADS = (1, 2)


def _before():
    """The code before floors: none found, and 3-D convolutions left out of the latency table."""
    sites, floors = latency_table.site_ops, pipeline.plan_floors
    latency_table.site_ops = lambda dg: [op for op in sites(dg) if op.kind != "conv" or len(op.w_shape) == 4]
    pipeline.plan_floors = lambda *a, **k: {}
    return lambda: (setattr(latency_table, "site_ops", sites), setattr(pipeline, "plan_floors", floors))


def one(name: str, macs: float, peer: bool) -> dict:
    from graphprune.zoo import monai_nets as Z

    x = Z.inputs(name)
    row: dict = {"model": name, "macs": macs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default, report = gp.prune(Z.build(name), (x,), budget={"macs": macs})
        note = next((n for n in report.notes if "no layer runs slower" in n), "")
        row["floors"] = note.split(" group(s)")[0].split(": ")[-1] if note else "0"
        row["floors_note"] = note  # each floor with its two times
        undo = _before()
        try:
            before, _ = gp.prune(Z.build(name), (x,), budget={"macs": macs})
        finally:
            undo()
        models = [Z.build(name).eval(), default, before]
        if peer:
            try:
                tp = bench_runtime.tp_prune(Z.build(name).eval(), (x,), macs)
                if tp is None:
                    row["peer"] = "no ratio meets the budget"
                else:
                    models.append(tp)
            except Exception as exc:  # the peer does not take every network: said in the table
                row["peer"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
    for threads in THREADS:
        ms = bench_eager.timed([copy.deepcopy(m).eval() for m in models], x, threads)
        for label, t in zip(("default", "before", "peer"), ms[1:]):
            row.setdefault(label, [])
            row[label] = row[label] + [round(ms[0] / t, 2)]
        row.setdefault("original_ms", []).append(round(ms[0], 1))
    return row


def main() -> None:
    from graphprune.zoo.monai_nets import D3, MODELS

    three_d = [n for n, (_, shape) in MODELS.items() if shape == D3]
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=three_d, help="these models only")
    ap.add_argument("--macs", type=float, nargs="*", default=[0.7], help="MACs budgets (default 0.7)")
    ap.add_argument("--no-peer", action="store_true", help="leave Torch-Pruning out")
    ap.add_argument("--json", type=Path, help="append the rows to this JSON list")
    args = ap.parse_args()
    rows = []
    print("| model | MACs | floors | original ms (t1 / t2) | default (t1 / t2) | before | Torch-Pruning |")
    print("|---|---|---|---|---|---|---|")
    for name in args.only or three_d:
        for macs in args.macs:
            row = one(name, macs, not args.no_peer)
            rows.append(row)
            fmt = lambda v: " / ".join(f"{s:.2f}x" for s in v) if isinstance(v, list) else v or "-"  # noqa: E731
            print(f"| {name} | {macs:.0%} | {row['floors']} | {' / '.join(map(str, row['original_ms']))} | "
                  f"{fmt(row['default'])} | {fmt(row['before'])} | {fmt(row.get('peer'))} |", flush=True)
    if args.json:
        append_rows(args.json, rows)


if __name__ == "__main__":
    main()
