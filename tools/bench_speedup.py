"""Does a smaller dense model run faster? onnxruntime speedup against the MACs ratio.

ResNet-50, MobileNetV2, ViT-B/16 and BERT-base (transformers configs, random init) pruned with
default settings (L2, ratio 0.3 and 0.5; heads and FFN units for the transformers, channels for
the CNNs) and ``round_to=8``; dense and pruned exported with graphprune.export_onnx and timed in
onnxruntime (CPU, ``--threads``), median of ``--repeat`` runs after a warm-up, at batch 1 and 32
(BERT: sequences of 128 tokens).

    .venv/bin/python tools/bench_speedup.py
    .venv/bin/python tools/bench_speedup.py --models resnet50 --batches 1 --ratios 0.5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")

MODELS = {
    "resnet50": ("ResNet-50", "ResNetForImageClassification", "ResNetConfig", {}),
    "mobilenetv2": ("MobileNetV2", "MobileNetV2ForImageClassification", "MobileNetV2Config", {}),
    "vit-b": ("ViT-B/16", "ViTForImageClassification", "ViTConfig", {}),
    "bert-base": ("BERT-base", "BertModel", "BertConfig", {}),
}


def build(key: str):
    import torch
    import transformers as T

    from graphprune.hf import example_inputs

    _, cls, cfg, extra = MODELS[key]
    torch.manual_seed(0)
    model = getattr(T, cls)(getattr(T, cfg)(**extra)).eval()
    inputs = example_inputs(model, batch=1, seq_len=128)
    return model, inputs


def latency(path: Path, feeds: dict, threads: int, repeat: int) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = threads
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    feeds = {n: a for n, a in zip(names, feeds.values())}
    sess.run(None, feeds)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> int:
    import copy

    import numpy as np

    import graphprune as gp

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "speedup.json")
    ns = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for key in ns.models:
            model, inputs = build(key)
            dense = tmp / f"{key}.onnx"
            gp.export_onnx(copy.deepcopy(model), (), dense, inputs)
            for ratio in ns.ratios:
                pruned, report = gp.hf.prune(copy.deepcopy(model), inputs, ratio=ratio, round_to=8)
                slim = tmp / f"{key}-{ratio}.onnx"
                gp.export_onnx(pruned, (), slim, inputs)
                for batch in ns.batches:
                    feeds = {k: np.repeat(v.numpy(), batch, axis=0) for k, v in inputs.items()}
                    reps = ns.repeat if batch == 1 else max(3, ns.repeat // 2)
                    before = latency(dense, feeds, ns.threads, reps)
                    after = latency(slim, feeds, ns.threads, reps)
                    row = {"model": MODELS[key][0], "ratio": ratio, "batch": batch, "threads": ns.threads,
                           "macs_ratio": report.macs_before / report.macs_after,
                           "params_ratio": report.params_before / report.params_after,
                           "dense_ms": before, "pruned_ms": after, "speedup": before / after}
                    rows.append(row)
                    print(f"{row['model']:12s} ratio {ratio:.1f} batch {batch:3d}: MACs /{row['macs_ratio']:.2f}, "
                          f"{before:9.2f} ms -> {after:9.2f} ms, speedup {row['speedup']:.2f}x", flush=True)
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| model | ratio | batch | MACs reduction | params reduction | dense | pruned | speedup |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['ratio']:.1f} | {r['batch']} | {r['macs_ratio']:.2f}x | "
                     f"{r['params_ratio']:.2f}x | {r['dense_ms']:.1f} ms | {r['pruned_ms']:.1f} ms | "
                     f"{r['speedup']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
