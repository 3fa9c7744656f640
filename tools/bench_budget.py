"""Budgets on full-size transformers models: MACs 50% and params 60%, checked by an independent count
(torch's FlopCounterMode, the parameters' numel); a latency budget measured in onnxruntime.

    .venv/bin/python tools/bench_budget.py                # docs/budgets.md tables
    .venv/bin/python tools/bench_budget.py --latency-only

Models are random-init from the default transformers configs (ResNet-50, ConvNeXt-T, ViT-B/16,
BERT-base); batch 1, 224x224 images, 128 tokens. Latency: onnxruntime, one thread, batch 1,
median of 30 runs after a warm-up, each model exported with graphprune.export_onnx.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import graphprune as gp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def build(name: str):
    import transformers as T

    torch.manual_seed(0)
    if name == "resnet50":
        model = T.ResNetModel(T.ResNetConfig())
    elif name == "convnext-t":
        model = T.ConvNextModel(T.ConvNextConfig())
    elif name == "vit-b16":
        model = T.ViTModel(T.ViTConfig(), add_pooling_layer=False)
    elif name == "bert-base":
        model = T.BertModel(T.BertConfig(), add_pooling_layer=False)
    else:
        raise ValueError(name)
    model.eval()
    if name == "bert-base":
        inputs = {"input_ids": torch.randint(0, 30000, (1, 128)), "attention_mask": torch.ones(1, 128, dtype=torch.long)}
    else:
        inputs = {"pixel_values": torch.randn(1, 3, 224, 224)}
    return model, inputs


def flops(model, inputs) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model(**inputs)
    return fc.get_total_flops()


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def latency(model, inputs) -> float:
    """What the budget is measured against, measured again independently of the search."""
    from graphprune.program.onnx_program import OnnxProgram

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        gp.export_onnx(model, (), path, inputs, dynamic_batch=False)
        return OnnxProgram.load(path).latency_ms(repeat=30)


def run_budgets(names) -> list[dict]:
    rows = []
    for name in names:
        model, inputs = build(name)
        f0, p0 = flops(model, inputs), params(model)
        for budget in ({"macs": 0.5}, {"params": 0.6}):
            for allocation in ("uniform", "global"):
                m = copy.deepcopy(model)
                t = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m, report = gp.hf.prune(m, inputs, budget=budget, allocation=allocation)
                seconds = time.perf_counter() - t
                (key, want), = budget.items()
                got = flops(m, inputs) / f0 if key == "macs" else params(m) / p0
                row = {"model": name, "budget": f"{key} {want:.0%}", "allocation": allocation,
                       "flopcounter_macs": round(flops(m, inputs) / f0, 4), "numel_params": round(params(m) / p0, 4),
                       "met": round(got, 4), "error": round(got / want - 1, 4), "seconds": round(seconds, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def run_latency(names, fraction: float) -> list[dict]:
    rows = []
    for name in names:
        model, inputs = build(name)
        dense = latency(model, inputs)
        target = round(dense * fraction, 2)
        m = copy.deepcopy(model)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m, report = gp.hf.prune(m, inputs, budget={"latency_ms": target})
        seconds = time.perf_counter() - t
        after = latency(m, inputs)
        row = {"model": name, "dense_ms": round(dense, 2), "target_ms": target, "search_ms": round(report.budget.latency[2], 2),
               "remeasured_ms": round(after, 2), "error": round(after / target - 1, 4),
               "macs_kept": round(report.macs_after / report.macs_before, 3), "seconds": round(seconds, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency-only", action="store_true")
    ap.add_argument("--latency-fraction", type=float, default=0.5, help="latency target as a fraction of dense")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "data" / "budgets.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = json.loads(a.out.read_text()) if a.out.is_file() else {}
    if not a.latency_only:
        out["budgets"] = run_budgets(["resnet50", "convnext-t", "vit-b16", "bert-base"])
    out["latency"] = run_latency(["resnet50", "vit-b16"], a.latency_fraction)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=1) + "\n")
    print()
    print("| model | budget | allocation | MACs kept (FlopCounterMode) | params kept (numel) | off target | time |")
    print("|---|---|---|---|---|---|---|")
    for r in out.get("budgets", []):
        print(f"| {r['model']} | {r['budget']} | {r['allocation']} | {r['flopcounter_macs']:.1%} | "
              f"{r['numel_params']:.1%} | {r['error']:+.1%} | {r['seconds']} s |")
    print()
    print("| model | dense | target | found by the search | measured again | off target | MACs kept | time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in out["latency"]:
        print(f"| {r['model']} | {r['dense_ms']} ms | {r['target_ms']} ms | {r['search_ms']} ms | {r['remeasured_ms']} ms | "
              f"{r['error']:+.1%} | {r['macs_kept']:.0%} | {r['seconds']} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
