"""How far off is the scoring-time estimate that decides ``allocation="auto"``? A calibrated budget on this
checkout's DenseNet-121 (models/densenet.py), the estimate (planning/budget_sensitivity.py ``scoring_seconds``,
per example row, times the rows scored) beside the scoring time the report's allocation note gives and the
whole call's wall time.

    .venv/bin/python tools/diag_auto_estimate.py --config full --size 96 --json docs/data/auto_estimate.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    import graphprune as gp
    from graphprune.planning import budget_sensitivity as bs
    from models.densenet import densenet121

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="full")
    p.add_argument("--size", type=int, default=96)
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--macs", type=float, default=0.7)
    p.add_argument("--json", type=Path, default=None)
    ns = p.parse_args()
    torch.manual_seed(0)
    model = densenet121(ns.config).eval()
    x = torch.randn(1, 3, ns.size, ns.size)
    calib = [(torch.randn(ns.batch, 3, ns.size, ns.size),) for _ in range(ns.batches)]
    seen, original = {}, bs.scoring_seconds

    def recorded(dg, groups):
        seen["per_row_s"], seen["groups"] = original(dg, groups), len(groups)
        return seen["per_row_s"]

    bs.scoring_seconds = recorded
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, report = gp.prune(model, (x,), calib=calib, budget={"macs": ns.macs}, measure_latency=False, runtime=None)
    wall = time.perf_counter() - start
    note = next((n for n in report.notes if n.startswith("allocation:")), "")
    found = re.search(r"on (\d+) calibration row\(s\) \(([\d.]+) s\)", note)
    rows, measured = (int(found.group(1)), float(found.group(2))) if found else (None, None)
    row = {"model": f"densenet121 {ns.config} {ns.size}x{ns.size}", "calib": f"{ns.batches} x {ns.batch}",
           "budget_macs": ns.macs, "groups": seen.get("groups"), "rows": rows,
           "estimated_s": None if rows is None else seen["per_row_s"] * rows, "measured_s": measured,
           "wall_s": wall, "note": note}
    print(json.dumps(row, indent=1))
    if ns.json:
        ns.json.write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
