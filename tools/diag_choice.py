"""Does the default call keep the plan that runs fastest afterwards? Eager PyTorch, several prunes.

The default call weighs up to nine plans (width multiples x time tilts) and keeps the fastest by
timing them inside the prune (planning/turns.py). This diagnostic prunes the same model
``--prunes`` times, each in a fresh process, and notes which plan each kept; then times every
candidate plan (from the first prune) beside the original in ``--retimes`` more fresh processes,
taking turns as tools/bench_eager.py does (median of three rounds of best-of-runs, batch 1, one
thread). A prune "chose well" when its kept plan is within 3% of the plan those later timings put
first (their median over the processes).

    .venv/bin/python tools/diag_choice.py --model efficientnet_lite0 --macs 0.8 --json docs/data/choice.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# every prune decides afresh (the point of the tool); a kept decision would repeat the first one
os.environ.setdefault("GRAPHPRUNE_PLAN_CACHE", "0")
WITHIN = 0.03


def prune_once(model: str, dtype: str, macs: float, save: Path | None) -> dict:
    """In this process: the default call, its candidates' in-prune figures and the kept label;
    with ``save``, the original and every candidate's module written there."""
    import copy
    import re
    import warnings

    sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
    import bench_runtime
    import torch

    import graphprune as gp
    from graphprune.planning import widths

    net, args = bench_runtime.torch_model(model)
    net, x = net.to(getattr(torch, dtype)).eval(), args[0].to(getattr(torch, dtype))
    seen: dict = {}
    real = widths.time_in_turns

    def spy(program, plans, runtime):
        seen["times"] = real(program, plans, runtime)
        if save is not None:
            seen["mods"] = [copy.deepcopy(program.apply(p).model) for p in plans]
        return seen["times"]

    widths.time_in_turns = spy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, report = gp.prune(copy.deepcopy(net), (x,), budget={"macs": macs})
    note = next(n for n in report.notes if n.startswith("widths: tried"))
    labels = re.findall(r"(up to \d+(?: tilt [\d.]+)?): [\d.]+ ms", note)
    if save is not None:
        torch.save({"mods": [net] + seen["mods"], "x": x}, save)
    return {"labels": labels, "times": seen["times"], "kept": note.split("; kept ")[1].replace(",", "")}


def retime(saved: Path) -> list[float]:
    """In this process: each candidate's speedup over the original, taking turns (bench_eager.timed)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tools")]
    import bench_eager
    import torch

    d = torch.load(saved, weights_only=False)
    ms = bench_eager.timed(d["mods"], d["x"], 1)
    return [ms[0] / m for m in ms[1:]]


def child(*argv: str) -> object:
    out = subprocess.run([sys.executable, __file__, *argv], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--macs", type=float, default=0.8)
    p.add_argument("--prunes", type=int, default=4)
    p.add_argument("--retimes", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        kind, *rest = a.child
        print(json.dumps(prune_once(a.model, a.dtype, a.macs, Path(rest[0]) if rest else None)
                         if kind == "prune" else retime(Path(rest[0]))))
        return
    common = ["--model", a.model, "--dtype", a.dtype, "--macs", str(a.macs)]
    with tempfile.TemporaryDirectory() as tmp:
        saved = Path(tmp) / "plans.pt"
        prunes = [child(*common, "--child", "prune", str(saved))]
        prunes += [child(*common, "--child", "prune") for _ in range(a.prunes - 1)]
        retimes = [child(*common, "--child", "retime", str(saved)) for _ in range(a.retimes)]
    labels = [lab.replace(",", "") for lab in prunes[0]["labels"]]
    speed = [statistics.median(r[i] for r in retimes) for i in range(len(labels))]
    best = max(speed)
    rows = []
    for k, pr in enumerate(prunes):
        got = speed[labels.index(pr["kept"])] if pr["kept"] in labels else None
        rows.append({"prune": k, "kept": pr["kept"], "retimed_speedup": got,
                     "chose_well": got is not None and got >= best * (1 - WITHIN)})
    print(f"{a.model} {a.dtype} {a.macs:.0%}: retimed speedup per plan (median of {a.retimes} processes)")
    for lab, s in zip(labels, speed):
        print(f"  {lab:18s} {s:.2f}x")
    for r in rows:
        print(f"  prune {r['prune']}: kept {r['kept']}, {r['retimed_speedup'] or float('nan'):.2f}x "
              f"({'within' if r['chose_well'] else 'not within'} 3% of the best, {best:.2f}x)")
    if a.json:
        a.json.write_text(json.dumps({"model": a.model, "dtype": a.dtype, "macs": a.macs, "labels": labels,
                                      "retimed": retimes, "prunes": prunes, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
