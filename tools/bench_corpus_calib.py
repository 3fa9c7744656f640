"""The calibrated default call on every CNN of the real-model corpus: ``gp.prune_onnx(src, dst,
budget={"macs": m}, calib=photos)``, as a user with a folder of images would call it, against the
same call without calibration (weight magnitude).

Calibration: the first ``--calib`` real photos of tools/fetch_vision.py (ImageNet-normalised, resized
to each file's input size); scored on the *other* photos: the relative squared error of each float
output, ``||pruned - original||^2 / ||original - mean||^2`` (1.0: no better than predicting its mean),
the worst output's in the table, and top-1 agreement where the model is a classifier (one output of rank 2). It reports what
``allocation="auto"`` chose (the report's allocation note) and the prune's wall time. onnxruntime on
the default providers; the files and their input sizes come from tools/fetch_corpus.py.

    .venv/bin/python tools/bench_corpus_calib.py                        # writes docs/data/corpus_calib.json
    .venv/bin/python tools/bench_corpus_calib.py --models ppocr_cls_v2 --macs 0.5
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench_runtime as br  # noqa: E402
import torch  # noqa: E402
import vision_data as vd  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.planning.measure import ort_session  # noqa: E402


def photos_for(path: Path, shapes: dict | None, n: int) -> tuple[str, list[np.ndarray], int]:
    """(input name, the photos resized to the file's input as (1 or batch, C, H, W) arrays, batch)."""
    feeds = br.feeds_for(path, 8, shapes)
    batch = 8 if feeds is not None else 1
    feeds = feeds or br.feeds_for(path, 1, shapes)
    (name, like), = feeds.items()
    _, c, h, w = like.shape
    x = vd.images(photos="all")
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    x = x.mean(1, keepdim=True).expand(-1, c, -1, -1) if c != 3 else x
    x = x.contiguous().numpy()
    return name, [x[i:i + batch] for i in range(0, len(x), batch)], n // batch


def outputs(path: Path, name: str, batches: list[np.ndarray]) -> list[np.ndarray]:
    sess = ort_session(path.read_bytes(), 0)
    outs = [sess.run(None, {name: b}) for b in batches]
    return [np.concatenate([o[i] for o in outs]) for i in range(len(outs[0]))]


def rel_error(r: np.ndarray, g: np.ndarray) -> float:
    r, g = r.astype(np.float64), g.astype(np.float64)
    return float(((g - r) ** 2).sum() / max(((r - r.mean()) ** 2).sum(), 1e-30))


def scores(ref: list[np.ndarray], got: list[np.ndarray]) -> dict:
    """Each float output's relative error on its own scale (a detector's box coordinates would
    otherwise swamp its class scores); the worst of them is the row's figure."""
    errors = [rel_error(r, g) for r, g in zip(ref, got) if r.dtype.kind == "f"]
    out = {"rel_error": max(errors), "rel_errors": errors}
    if len(ref) == 1 and ref[0].ndim == 2 and ref[0].shape[1] > 1:
        out["agreement"] = float((ref[0].argmax(1) == got[0].argmax(1)).mean())
    return out


def run(model: str, src: Path, shapes: dict | None, macs: float, calib_photos: int, tmp: Path) -> list[dict]:
    name, batches, n_calib = photos_for(src, shapes, calib_photos)
    calib, held = [{name: b} for b in batches[:n_calib]], batches[n_calib:]
    ref = outputs(src, name, held)
    rows = []
    for variant, extra in (("no data (magnitude)", {}), ("calibrated default", {"calib": calib})):
        dst = tmp / f"{model}-{macs}-{len(rows)}.onnx"
        t = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                report = gp.prune_onnx(src, dst, budget={"macs": macs}, input_shapes=shapes, **extra)
        except gp.GraphpruneError as e:
            rows.append({"model": model, "macs": macs, "variant": variant, "error": f"{type(e).__name__}: {e}"})
            print(json.dumps(rows[-1]), flush=True)
            continue
        row = {"model": model, "macs": macs, "variant": variant, "seconds": time.perf_counter() - t,
               "macs_kept": report.macs_after / report.macs_before,
               "allocation": next((n for n in report.notes if n.startswith("allocation")), ""),
               "held_out_photos": sum(len(b) for b in held), **scores(ref, outputs(dst, name, held)),
               # the report's own timing (onnxruntime, one thread, at the example's shape): never slower is the bar
               "latency_ms": [report.latency_before_ms, report.latency_after_ms]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--macs", type=float, nargs="+", default=[0.8])
    p.add_argument("--calib", type=int, default=32, help="photos used for calibration (the rest score)")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "corpus_calib.json")
    ns = p.parse_args()
    models = {k: v for k, v in br.corpus_models().items() if not ns.models or k in ns.models}
    if not models:
        print("no corpus CNNs: run tools/fetch_corpus.py", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, (src, shapes) in models.items():
            for macs in ns.macs:
                rows += run(model, src, shapes, macs, ns.calib, Path(tmp))
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(rows, indent=1))
    print("| model | MACs kept | variant | rel. output error (held-out photos) | top-1 agreement | allocation | time |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['macs']:.0%} | {r['variant']} | refused: {r['error'][:80]} | | | |")
            continue
        agr = f"{r['agreement']:.2f}" if "agreement" in r else "-"
        print(f"| {r['model']} | {r['macs_kept']:.0%} | {r['variant']} | {r['rel_error']:.3f} | {agr} | "
              f"{r['allocation'][:60]} | {r['seconds']:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
