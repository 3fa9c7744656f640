"""Do real CNNs survive? Top-1 agreement with the original after one-shot pruning and after recovery.

EfficientNet-Lite0 with its ImageNet weights (tools/fetch_vision.py) is pruned with the default call
at 20% and 50% fewer MACs, calibrated on the first ``--calib`` real photos (augmented: seeded random
resized crops and flips of them, ``--augment`` per photo) and scored on the *other* photos: top-1
agreement of the pruned model's predictions with the original's, with tools/diag_cnn.py's measures of
confidence (agreement where the original is confident, mean KL, relative logit error) on those photos
and on ``--test-augment`` seeded crops/flips of each; the first row is the noise floor (the original
on its flipped photos). Beside it: weight magnitude without data, and ``graphprune.recover``
(distillation from the original, ``--recover-s`` seconds on the augmented calibration photos) after
the default call. tools/diag_cnn.py tries other variants and measures each group alone.

    .venv/bin/python tools/bench_oneshot.py                       # writes docs/data/oneshot.json
    .venv/bin/python tools/bench_oneshot.py --macs 0.8 --recover-s 0
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
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")


def augment(x: torch.Tensor, per: int, seed: int = 0) -> torch.Tensor:
    """``per`` seeded random resized crops (40-100% of the area, any aspect 3/4-4/3) with flips of
    every photo, back at its size: more calibration rows from the same few photos."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = x.shape
    out = []
    for i in range(n):
        for _ in range(per):
            area = float(torch.empty(1).uniform_(0.4, 1.0, generator=g))
            aspect = float(torch.exp(torch.empty(1).uniform_(-0.288, 0.288, generator=g)))
            ch = min(h, max(8, int(round((area * h * w / aspect) ** 0.5))))
            cw = min(w, max(8, int(round((area * h * w * aspect) ** 0.5))))
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            crop = x[i:i + 1, :, top:top + ch, left:left + cw]
            crop = F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False)
            if bool(torch.rand(1, generator=g) < 0.5):
                crop = crop.flip(-1)
            out.append(crop)
    return torch.cat(out)


class FreshCrops:
    """Recovery data the way a DataLoader with random transforms gives it: each pass, every photo
    and ``per`` new crops/flips of it (a new seed per pass), photo by photo in batches of ``batch``;
    the same number of batches every pass, so recover() holds out the first pass's first batches."""

    def __init__(self, x: torch.Tensor, per: int, batch: int):
        self.x, self.per, self.batch, self.passes = x, per, batch, 0

    def __len__(self) -> int:
        return -(-len(self.x) * (1 + self.per) // self.batch)

    def __iter__(self):
        crops = augment(self.x, self.per, seed=100 + self.passes).view(len(self.x), self.per, *self.x.shape[1:])
        self.passes += 1
        data = torch.cat([self.x[:, None], crops], 1).flatten(0, 1)
        return ((data[i:i + self.batch],) for i in range(0, len(data), self.batch))


class WithStamps:
    """Recovery data with ``k`` fresh stamp composites (tools/stamp_data.py) ahead of ``crops`` each
    pass, pasted on new crops of the calibration photos: the held-out batches recover() keeps are
    composites of the first pass, never trained on."""

    def __init__(self, crops, x: torch.Tensor, k: int, batch: int, mean, std):
        self.crops, self.x, self.k, self.batch, self.mean, self.std, self.passes = crops, x, k, batch, mean, std, 0

    def __len__(self) -> int:
        return -(-self.k // self.batch) + len(self.crops)

    def __iter__(self):
        import stamp_data

        backgrounds = augment(self.x, 2, seed=500 + self.passes)
        pool = stamp_data.stamps(self.x.shape[-1])
        comp = stamp_data.composites(pool, backgrounds, self.k, self.mean, self.std, 900 + self.passes)
        self.passes += 1
        yield from ((comp[i:i + self.batch],) for i in range(0, len(comp), self.batch))
        yield from iter(self.crops)


def main() -> int:
    import diag_cnn
    import vision_data as vd

    import graphprune as gp

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--macs", nargs="*", type=float, default=[0.8, 0.5])
    p.add_argument("--calib", type=int, default=16, help="photos used for calibration (the rest score)")
    p.add_argument("--augment", type=int, default=4, help="augmented copies per calibration photo")
    p.add_argument("--test-augment", type=int, default=4, help="seeded crops/flips per held-out photo, scored too")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--photos", choices=("base", "all"), default="base",
                   help="base: the first 48 photos (the documented runs); all: every fetched photo (110)")
    p.add_argument("--recover-s", type=float, default=600.0, help="seconds of recovery (0: none)")
    p.add_argument("--only", nargs="*", default=None, help="variants to run (their names in the table)")
    p.add_argument("--fresh-crops", action="store_true",
                   help="recover on new crops/flips of the calibration photos every pass (FreshCrops)")
    p.add_argument("--mix", type=float, default=None,
                   help="recover(mix=): Beta(mix, mix) blends of two photos of a batch, the same for both models "
                        "(default: the library's, 1.0 for images; 0: none)")
    p.add_argument("--lr", type=float, default=None, help="recover(lr=) (default: probed)")
    p.add_argument("--features", action="store_true",
                   help="recover(features=True): match the blocks' outputs whose shapes both models share too")
    p.add_argument("--blockwise", action="store_true",
                   help="recover(blockwise=True): each block trained alone toward the original's output of it first")
    p.add_argument("--stamps", type=int, default=0,
                   help="recover on this many fresh stamp composites a pass too (tools/fetch_stamps.py, WithStamps)")
    p.add_argument("--calib-stamps", type=int, default=0,
                   help="append this many stamp composites (on crops of the calibration photos) to the calibration")
    p.add_argument("--recover-sensitivity", action="store_true",
                   help="recover after the allocation='sensitivity' variant too (a better start at deep cuts)")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "oneshot.json")
    ns = p.parse_args()
    torch.manual_seed(0)
    model = vd.load_model(ns.model)
    x = vd.model_images(ns.model, photos=ns.photos)
    calib_x, test_x = x[:ns.calib], x[ns.calib:]
    data = torch.cat([calib_x, augment(calib_x, ns.augment)]) if ns.augment else calib_x
    mean, std = vd.entry(ns.model)["mean"], vd.entry(ns.model)["std"]
    if ns.calib_stamps:
        import stamp_data

        pool, backgrounds = stamp_data.stamps(x.shape[-1]), augment(calib_x, 2, seed=77)
        data = torch.cat([data, stamp_data.composites(pool, backgrounds, ns.calib_stamps, mean, std, seed=78)])
    calib = [(data[i:i + ns.batch],) for i in range(0, len(data), ns.batch)]
    crops = augment(test_x, ns.test_augment, seed=1) if ns.test_augment else test_x[:0]
    ref, ref_crops = vd.run(model, test_x), vd.run(model, crops)

    def scored(m) -> dict:
        """Agreement on the held-out photos, with diag_cnn's confidence measures (KL, agreement where
        the original is confident) and the same on seeded crops/flips of the held-out photos."""
        out = {"agreement": vd.agreement(ref, vd.run(m, test_x))}
        out["held_out"] = diag_cnn.scores(ref, vd.run(m, test_x))
        if len(crops):
            out["held_out_crops"] = diag_cnn.scores(ref_crops, vd.run(m, crops))
        return out

    rows = [{"model": ns.model, "macs": 1.0, "variant": "original, held-out photos flipped (noise floor)",
             "seconds": 0.0,
             "agreement": vd.agreement(ref, vd.run(model, test_x.flip(-1))),
             "held_out": diag_cnn.scores(ref, vd.run(model, test_x.flip(-1)))}]
    print(json.dumps(rows[0]), flush=True)
    for macs in ns.macs:
        variants = {"magnitude, no data": dict(calib=None), "default call, calibrated": dict(calib=calib),
                    "allocation='sensitivity', calibrated": dict(calib=calib, allocation="sensitivity")}
        variants = {k: v for k, v in variants.items() if not ns.only or k in ns.only}
        for name, kw in variants.items():
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pruned, rep = gp.prune(copy.deepcopy(model), (x[:1],), budget={"macs": macs}, runtime=None, **kw)
            row = {"model": ns.model, "macs": macs, "variant": name, "seconds": time.perf_counter() - t,
                   **scored(pruned), "calib_images": len(data), "test_images": len(test_x), "test_crops": len(crops)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            if kw["calib"] is not None and ns.recover_s > 0 and ("allocation" not in kw or ns.recover_sensitivity):
                t = time.perf_counter()
                feed = FreshCrops(calib_x, ns.augment, ns.batch) if ns.fresh_crops else calib
                feed = WithStamps(feed, calib_x, ns.stamps, ns.batch, mean, std) if ns.stamps else feed
                res = gp.recover(pruned, model, feed, time_s=ns.recover_s, mix=ns.mix, lr=ns.lr,
                                 features=ns.features, blockwise=ns.blockwise)
                tag = (" + recover" + ", fresh crops" * ns.fresh_crops + f", {ns.stamps} stamps a pass" * bool(ns.stamps)
                       + (", mix=auto" if ns.mix is None else f", mix={ns.mix:g}") + (f", lr={ns.lr:g}" if ns.lr else "")
                       + ", features" * ns.features + ", blockwise" * ns.blockwise)
                row = dict(row, variant=name + tag, seconds=row["seconds"] + time.perf_counter() - t,
                           **scored(pruned), recover_steps=res.steps, recover_lr=res.lr, recover_stop=res.reason,
                           recover_best_step=res.best_step, recover_heldout=res.heldout_losses,
                           **({"recover_blocks": str(res.blocks)} if res.blocks is not None else {}))
                rows.append(row)
                print(json.dumps(row), flush=True)
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(rows, indent=1))
    print("| model | MACs kept | variant | top-1 agreement (photos) | where confident | KL | agreement (crops) "
          "| time |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        h, c = r["held_out"], r.get("held_out_crops") or {}
        conf = h.get("agreement_confident")
        print(f"| {r['model']} | {r['macs']:.0%} | {r['variant']} | {r['agreement']:.2f} | "
              f"{'-' if conf is None else f'{conf:.2f}'} ({h.get('confident', 0)}) | {h.get('kl', float('nan')):.2f} | "
              f"{c.get('agreement', float('nan')):.2f} | {r['seconds']:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
