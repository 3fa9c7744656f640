"""Analyse full-size models with parameters on the meta device: time and peak memory.

Each model runs in its own subprocess so its peak RSS (ru_maxrss) is its own.

    .venv/bin/python tools/bench_meta_analysis.py               # llama (7B), llama full_gqa, resnet50, vit
    .venv/bin/python tools/bench_meta_analysis.py llama:full     # one model
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["llama:full", "llama:full_gqa", "resnet50:full", "vit:full"]


def _one(spec: str) -> dict:
    import torch

    import graphprune as gp
    from models import ZOO

    name, config = spec.split(":")
    entry = ZOO[name]
    with torch.device("meta"):
        model = entry.build(config)
        args = entry.example_inputs(config)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    t0 = time.perf_counter()
    g = gp.trace(model, args)
    t_trace = time.perf_counter() - t0
    t1 = time.perf_counter()
    plan = gp.plan(g, model, ratio=0.3, importance="random")
    t_plan = time.perf_counter() - t1
    outer = [x for x in g.prunable_groups() if x.role == "outer"]
    return {"model": spec, "params": n_params, "weights_gib_fp32": n_params * 4 / 2**30,
            "nodes": len(g.ir.nodes), "groups": len(g.groups), "prunable": len(g.prunable_groups()),
            "head_groups": len(outer), "head_group_sizes": sorted({x.size for x in outer}),
            "trace_and_solve_s": round(t_trace, 2), "plan_s": round(t_plan, 2),
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "all_params_meta": all(p.is_meta for p in model.parameters())}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        print(json.dumps(_one(argv[1])))
        return 0
    rows = []
    for spec in argv or DEFAULT:
        print(f"analysing {spec} on meta...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--child", spec], cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-2000:], file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    sys.path.insert(0, str(ROOT))
    from graphprune.report import table

    print(table(["model", "params", "fp32 weights", "nodes", "groups", "prunable", "heads groups",
                 "trace+solve", "plan", "peak RSS", "meta"],
                [[r["model"], f"{r['params'] / 1e9:.2f}B", f"{r['weights_gib_fp32']:.1f} GiB", r["nodes"], r["groups"],
                  r["prunable"], f"{r['head_groups']} (size {r['head_group_sizes']})", f"{r['trace_and_solve_s']}s",
                  f"{r['plan_s']}s", f"{r['peak_rss_gib']:.2f} GiB", r["all_params_meta"]] for r in rows]))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
