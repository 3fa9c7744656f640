"""End-to-end prune time: graphprune beside Torch-Pruning 1.6.1, each in a fresh process.

The models are transformers models built from configs (random init, eval mode), as users run
them. Timed: the one call that prunes (graphprune.hf.prune with default settings: tracing,
grouping, L2 scoring, rewrite; with ``measure_latency=False``, as the peer measures no latency:
the default call also times the model before and after, a few tenths of a second; Torch-Pruning's
MetaPruner construction + step with L2 group magnitude), at ratio 0.3 of heads and FFN units
(channels for CNNs); building the model and importing the packages are not timed. Median of
``--repeat`` fresh processes per cell; the tools alternate run by run, so a slow spell of the machine falls on both.

    .venv/bin/python tools/bench_speed.py                      # the table of docs/benchmarks.md
    .venv/bin/python tools/bench_speed.py --models resnet50 --repeat 1 --tools graphprune
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MODELS = {
    "resnet50": ("ResNet-50", "ResNetForImageClassification", "ResNetConfig", {}),
    "convnext-t": ("ConvNeXt-T", "ConvNextForImageClassification", "ConvNextConfig", {}),
    "vit-b": ("ViT-B/16", "ViTForImageClassification", "ViTConfig", {}),
    "bert-base": ("BERT-base", "BertModel", "BertConfig", {}),
    "bert-h2048": ("BERT 12 layers, hidden 2048", "BertModel", "BertConfig",
                   dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=16)),
    "bert-h512-l6": ("BERT hidden 512, 6 layers", "BertModel", "BertConfig",
                     dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=6)),
    "bert-h512-l12": ("BERT hidden 512, 12 layers", "BertModel", "BertConfig",
                      dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=12)),
    "bert-h512-l24": ("BERT hidden 512, 24 layers", "BertModel", "BertConfig",
                      dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=24)),
    "bert-h512-l48": ("BERT hidden 512, 48 layers", "BertModel", "BertConfig",
                      dict(hidden_size=512, intermediate_size=2048, num_attention_heads=8, num_hidden_layers=48)),
}
HEADLINE = ["resnet50", "convnext-t", "vit-b", "bert-base"]
RATIO = 0.3

CHILD = r'''
import json, sys, time, os
os.environ["GRAPHPRUNE_PROGRESS"] = "0"
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(2)
import transformers as T
import graphprune
from graphprune.hf import example_inputs
cls, cfg_cls, extra, tool, ratio = {args!r}
torch.manual_seed(0)
model = getattr(T, cls)(getattr(T, cfg_cls)(**extra)).eval()
inputs = example_inputs(model, batch=1)
if tool == "torch-pruning":
    import torch_pruning as tp
    num_heads, ignored = {{}}, []
    for name, m in model.named_modules():
        if hasattr(m, "query") and hasattr(m, "key") and hasattr(m, "value"):
            for p in (m.query, m.key, m.value):
                num_heads[p] = m.num_attention_heads
    for attr in ("classifier", "pooler", "embeddings"):
        if hasattr(model, attr):
            ignored.append(getattr(model, attr))
    base = getattr(model, "vit", None) or getattr(model, "bert", None)
    if base is not None:
        ignored += [base.embeddings] + ([base.pooler] if getattr(base, "pooler", None) is not None else [])
    t = time.perf_counter()
    pruner = tp.pruner.MetaPruner(model, inputs if cls.startswith("Bert") else inputs["pixel_values"],
                                  importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=ratio,
                                  num_heads=num_heads, prune_num_heads=bool(num_heads), prune_head_dims=False,
                                  head_pruning_ratio=ratio, ignored_layers=ignored,
                                  output_transform=(lambda out: out[0].sum()))
    pruner.step()
    seconds = time.perf_counter() - t
else:
    t = time.perf_counter()
    model, report = graphprune.hf.prune(model, inputs, ratio=ratio, measure_latency=False)
    seconds = time.perf_counter() - t
params = sum(p.numel() for p in model.parameters())
print(json.dumps({{"seconds": seconds, "params": params}}))
'''


def run_child(key: str, tool: str) -> dict:
    _, cls, cfg, extra = MODELS[key]
    code = CHILD.format(root=str(ROOT), args=(cls, cfg, extra, tool, RATIO))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if r.returncode != 0:
        return {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--tools", nargs="+", default=["graphprune", "torch-pruning"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "speed.json")
    ns = p.parse_args()
    results: dict = json.loads(ns.json.read_text()) if ns.json.exists() else {}
    for key in ns.models:
        # the tools take turns, run by run: a slow spell of the machine then costs both alike
        runs_of: dict[str, list] = {tool: [] for tool in ns.tools}
        for _ in range(ns.repeat):
            for tool in ns.tools:
                runs_of[tool].append(run_child(key, tool))
        for tool in ns.tools:
            runs = runs_of[tool]
            ok = [r for r in runs if "error" in r] == []
            cell = {"seconds": statistics.median(r["seconds"] for r in runs) if ok else None,
                    "runs": [r.get("seconds") for r in runs], "params": runs[0].get("params"),
                    "error": None if ok else next(r["error"] for r in runs if "error" in r)}
            results.setdefault(key, {})[tool] = cell
            print(f"{MODELS[key][0]:32s} {tool:14s} " + (f"{cell['seconds']:.2f} s" if ok else cell["error"]),
                  flush=True)
            ns.json.parent.mkdir(parents=True, exist_ok=True)
            ns.json.write_text(json.dumps(results, indent=1, sort_keys=True))
    print()
    print(table(results))
    return 0


def table(results: dict) -> str:
    lines = ["| model (transformers config, random init) | graphprune | Torch-Pruning 1.6.1 | graphprune / peer "
             "| run by run |", "|---|---|---|---|---|"]
    for key, (label, *_rest) in MODELS.items():
        cells = results.get(key, {})
        g, t = cells.get("graphprune", {}).get("seconds"), cells.get("torch-pruning", {}).get("seconds")
        if g is None and t is None:
            continue
        # ratios of the runs taken in turn (n-th graphprune run over n-th peer run): their spread
        pairs = [a / b for a, b in zip(cells.get("graphprune", {}).get("runs") or [],
                                       cells.get("torch-pruning", {}).get("runs") or []) if a and b]
        spread = f"{min(pairs):.2f}-{max(pairs):.2f}x" if pairs else ""
        lines.append(f"| {label} | {f'{g:.2f} s' if g else 'n/a'} | {f'{t:.2f} s' if t else 'n/a'} | "
                     f"{f'{g / t:.2f}x' if g and t else ''} | {spread} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
