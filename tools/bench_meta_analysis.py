"""Analyse full-size models with parameters on the meta device: time and peak memory.

Each model runs in its own subprocess so its peak RSS (ru_maxrss) is its own.

    .venv/bin/python tools/bench_meta_analysis.py               # zoo llama (7B), full_gqa, resnet50, vit,
                                                                # transformers Llama-7B and its GQA variant
    .venv/bin/python tools/bench_meta_analysis.py hf:llama-7b   # one model

The transformers models (hf:...) are LlamaForCausalLM built from a Llama-7B-sized
config (32 layers, hidden 4096, 32 heads, FFN 11008; GQA: 8 key/value heads) under
``torch.device("meta")``: nothing is allocated, only shapes are read.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["llama:full", "llama:full_gqa", "resnet50:full", "vit:full", "hf:llama-7b", "hf:llama-7b-gqa"]
HF_LLAMA = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, max_position_embeddings=4096, use_cache=False)


def _build(spec: str):
    import torch

    name, config = spec.split(":")
    if name == "hf":
        import transformers as T

        import graphprune as gp

        kv = 8 if config.endswith("gqa") else 32
        with torch.device("meta"):
            model = gp.hf.prepare(T.LlamaForCausalLM(T.LlamaConfig(num_key_value_heads=kv, **HF_LLAMA)))
        return model, (), gp.hf.example_inputs(model, batch=1, seq_len=16)
    from graphprune.zoo import ZOO

    entry = ZOO[name]
    with torch.device("meta"):
        return entry.build(config), entry.example_inputs(config), {}


def _one(spec: str) -> dict:
    import graphprune as gp

    model, args, kwargs = _build(spec)
    n_params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    t0 = time.perf_counter()
    g = gp.trace(model, args, kwargs)
    t_trace = time.perf_counter() - t0
    t1 = time.perf_counter()
    gp.plan(g, model, ratio=0.3, importance="random")  # timed: ranking every group
    t_plan = time.perf_counter() - t1
    outer = [x for x in g.prunable_groups() if x.kind == "head" or x.role == "outer"]
    kinds: dict[str, int] = {}
    for x in g.prunable_groups():
        kinds[x.kind] = kinds.get(x.kind, 0) + 1
    return {"model": spec, "params": n_params, "weights_gib_fp32": n_params * 4 / 2**30,
            "nodes": len(g.ir.nodes), "groups": len(g.groups), "prunable": len(g.prunable_groups()),
            "head_groups": len(outer), "kinds": kinds, "head_group_sizes": sorted({x.size for x in outer}),
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
    from graphprune.util.tables import table

    print(table(["model", "params", "fp32 weights", "nodes", "groups", "prunable", "heads groups",
                 "trace+solve", "plan", "peak RSS", "meta"],
                [[r["model"], f"{r['params'] / 1e9:.2f}B", f"{r['weights_gib_fp32']:.1f} GiB", r["nodes"], r["groups"],
                  r["prunable"], f"{r['head_groups']} (size {r['head_group_sizes']})", f"{r['trace_and_solve_s']}s",
                  f"{r['plan_s']}s", f"{r['peak_rss_gib']:.2f} GiB", r["all_params_meta"]] for r in rows]))
    for r in rows:
        print(f"{r['model']}: prunable groups by kind {dict(sorted(r['kinds'].items()))}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
