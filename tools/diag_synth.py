"""Do calibration images distilled from the model's BatchNorm statistics help a real CNN? (issue 21)

``generate``: ``--n`` images for EfficientNet-Lite0 from ``graphprune.calib.synthetic_images`` (seeded
noise, Adam on the pixels so every BatchNorm layer's batch mean/std matches its running ones; pixels
clamped to the photos' normalised range), saved with the time it took and the BatchNorm loss of the
result beside that of real photos and of the starting noise.

``prune``: the default call at ``--macs`` of the MACs, calibrated on the first ``--calib`` photos and
4 seeded crops/flips of each (tools/diag_ridge.py's ``bench`` layout; none with ``--calib 0``) followed
by the saved images, scored exactly as tools/diag_ridge.py scores (tools/diag_cnn.py ``scores``) on the
photos from ``--test-from`` on and 4 seeded crops/flips of each.

    .venv/bin/python tools/diag_synth.py generate --n 64 --out /tmp/synth64.pt
    .venv/bin/python tools/diag_synth.py prune --synthetic /tmp/synth64.pt --calib 16 --test-from 32
    .venv/bin/python tools/diag_synth.py prune --synthetic /tmp/synth64.pt --calib 32
    .venv/bin/python tools/diag_synth.py prune --synthetic /tmp/synth64.pt --calib 0 --test-from 32
    .venv/bin/python tools/diag_synth.py generate --n 64 --seed 1 --out /tmp/synth64s1.pt   # 64 more: 128 in all
    .venv/bin/python tools/diag_synth.py prune --synthetic /tmp/synth64.pt /tmp/synth64s1.pt --calib 16 --test-from 32
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")

from json_rows import append_rows  # noqa: E402

MODEL = "efficientnet_lite0"


def generate(ns, model, x) -> None:
    from graphprune.calib import synthetic as S

    e = __import__("vision_data").entry(MODEL)
    lo = min((0 - m) / s for m, s in zip(e["mean"], e["std"]))
    hi = max((1 - m) / s for m, s in zip(e["mean"], e["std"]))
    kw = dict(seed=ns.seed, steps=ns.steps, batch_size=ns.batch, lr=ns.lr, class_weight=ns.class_weight,
              jitter=ns.jitter, bounds=(lo, hi))
    t = time.perf_counter()
    batches = S.synthetic_images(model, ns.n, tuple(x.shape[1:]), **kw)
    seconds = time.perf_counter() - t
    images = torch.cat([b for (b,) in batches])
    noise = torch.randn((ns.batch, *x.shape[1:]), generator=torch.Generator().manual_seed(ns.seed))
    info = {"n": ns.n, **{k: v for k, v in kw.items() if k != "bounds"}, "bounds": [lo, hi],
            "seconds": round(seconds, 1), "threads": torch.get_num_threads(),
            "bn_loss": {"synthetic": S.bn_statistics_loss(model, images[:ns.batch]),
                        "photos": S.bn_statistics_loss(model, x[:ns.batch]),
                        "noise": S.bn_statistics_loss(model, noise)},
            "classes": len(set(__import__("vision_data").run(model, images).argmax(-1).tolist()))}
    torch.save({"images": images, "info": info}, ns.out)
    print(json.dumps(info), flush=True)


def prune(ns, model, x) -> dict:
    import bench_oneshot as bo
    import diag_cnn
    import diag_ridge
    import vision_data as vd

    import graphprune as gp

    sets = [torch.load(f) for f in ns.synthetic]  # several: their images one after another
    saved = {"images": torch.cat([x[:0]] + [s["images"] for s in sets]), "info": sets[0]["info"] if sets else {},
             "seeds": [s["info"]["seed"] for s in sets]}
    test_x = x[ns.calib if ns.test_from is None else ns.test_from:]
    crops = bo.augment(test_x, 4, seed=1)
    photos = diag_ridge.calibration(x, ns.calib, "bench") if ns.calib else x[:0]
    data = torch.cat([photos, saved["images"]])
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned, rep = gp.prune(copy.deepcopy(model), (x[:1],), budget={"macs": ns.macs}, runtime=None,
                               calib=[(data[i:i + 8],) for i in range(0, len(data), 8)])
    info = saved["info"]
    name = f"calib={ns.calib} photos + {len(photos) - ns.calib} crops + {len(saved['images'])} synthetic" + (
        f" (steps={info.get('steps')}, lr={info.get('lr')}, class_weight={info.get('class_weight')}, "
        f"seeds={saved['seeds']})" if info else "")
    row = {"model": MODEL, "macs": ns.macs, "variant": name + f", photos=all, test from {len(x) - len(test_x)}",
           "seconds": round(time.perf_counter() - t, 1),
           "generation_seconds": sum(s["info"]["seconds"] for s in sets) if sets else None,
           "test_photos": len(test_x), "calib_images": len(data), "macs_kept": rep.macs_after / rep.macs_before,
           "photos": diag_cnn.scores(vd.run(model, test_x), vd.run(pruned, test_x)),
           "crops": diag_cnn.scores(vd.run(model, crops), vd.run(pruned, crops))}
    print(json.dumps(row), flush=True)
    return row


def main() -> int:
    import vision_data as vd

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("generate", "prune"))
    p.add_argument("--n", type=int, default=64, help="generate: synthetic images")
    p.add_argument("--steps", type=int, default=40, help="generate: Adam steps per batch")
    p.add_argument("--batch", type=int, default=16, help="generate: images optimised together")
    p.add_argument("--lr", type=float, default=0.25)
    p.add_argument("--class-weight", type=float, default=0.0, help="generate: cross-entropy to random classes")
    p.add_argument("--jitter", type=int, default=0, help="generate: random shift (pixels) and flip per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("/tmp/synth.pt"), help="generate: where to save the images")
    p.add_argument("--synthetic", type=Path, nargs="*", default=[],
                   help="prune: image files saved by generate, used in this order (none: photos only)")
    p.add_argument("--macs", type=float, default=0.8)
    p.add_argument("--calib", type=int, default=16, help="prune: calibration photos (the first ones; 0: none)")
    p.add_argument("--test-from", type=int, default=None, help="prune: first held-out photo (default: --calib)")
    p.add_argument("--json", type=Path, default=None, help="prune: append the row to this JSON list")
    ns = p.parse_args()
    torch.manual_seed(0)
    model, x = vd.load_model(MODEL), vd.model_images(MODEL, photos="all")
    if ns.mode == "generate":
        generate(ns, model, x)
        return 0
    row = prune(ns, model, x)
    if ns.json is not None:
        append_rows(ns.json, [row])
    return 0


if __name__ == "__main__":
    sys.exit(main())
