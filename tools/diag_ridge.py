"""Is the refit's ridge (or its cross-validation) what loses a real CNN's predictions? (issue 21)

EfficientNet-Lite0 with its ImageNet weights at ``--macs`` of its MACs, calibrated as
tools/bench_oneshot.py does (the first ``--calib`` photos, then 4 seeded crops/flips of each, laid
out photo by photo), scored on the photos from ``--test-from`` on and on 4 seeded crops/flips of each.

``sweep``: the default call's plan, then at every refit site the relative output error on the
held-out images (from the original model's inputs, as the refit sees them) with no refit, bias only,
and each ridge strength of ``GRID``; beside it the strength each fold layout's cross-validation picks:
``alt`` (the library's: items alternate), ``grouped`` (every copy of a photo in one fold), ``halves``,
``blocks8`` and ``blocks4`` (contiguous runs of items). ``--oracle FILE`` writes each site's held-out
best strength, for ``prune --ridge FILE``.

``prune``: the default call with the calibration set laid out as ``--layout`` (``bench``; ``grouped``:
reordered so that items alternate between even and odd photos, every copy of a photo in one of the
library's folds; ``photos``: no crops) and ``--ridge`` (None: cross-validated; a number; or a JSON of
module -> strength), scored as tools/diag_cnn.py scores, with the ridge each site used.

    .venv/bin/python tools/diag_ridge.py sweep --oracle /tmp/oracle.json
    .venv/bin/python tools/diag_ridge.py prune --layout grouped
    .venv/bin/python tools/diag_ridge.py prune --ridge /tmp/oracle.json
    .venv/bin/python tools/diag_ridge.py prune --photos all --calib 32   # the 110 photos: 78 held out
"""
from __future__ import annotations

import argparse
import collections
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

GRID = (1e-3, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)
LAYOUTS = ("alt", "grouped", "halves", "blocks8", "blocks4")


def calibration(x: torch.Tensor, n: int, layout: str) -> torch.Tensor:
    """The calibration images: ``n`` photos then 4 crops/flips of each (bench), or reordered so that
    even and odd photos' copies alternate item by item (grouped), or the photos alone."""
    import bench_oneshot as bo

    photos, crops = x[:n], bo.augment(x[:n], 4)
    if layout == "photos":
        return photos
    if layout == "bench":
        return torch.cat([photos, crops])
    items = []
    for a in range(0, n - 1, 2):
        items += [photos[a], photos[a + 1]]
        for j in range(4):
            items += [crops[4 * a + j], crops[4 * (a + 1) + j]]
    return torch.stack(items)


def folds_of(n: int, photos: int) -> dict[str, list[int]]:
    """Each layout's fold of every item of the bench layout (``photos`` photos, then 4 crops of each)."""
    photo = list(range(photos)) + [i // 4 for i in range(n - photos)]
    return {"alt": [i % 2 for i in range(n)], "grouped": [photo[i] % 2 for i in range(n)],
            "halves": [int(i >= n // 2) for i in range(n)], "blocks8": [(i // 8) % 2 for i in range(n)],
            "blocks4": [(i // 4) % 2 for i in range(n)]}


def site_inputs(model, comp) -> dict[str, dict]:
    """Per refit site (module path): its weight (out, in), bias, kept inputs and the library's ridge."""
    out = {}
    for s in comp.sites:
        mod = model.get_submodule(s.weight.rsplit(".", 1)[0])
        upd = comp.updates[s.weight]
        out[s.weight.rsplit(".", 1)[0]] = dict(
            w=mod.weight.detach().reshape(mod.weight.shape[0], -1).double(),
            b=None if mod.bias is None else mod.bias.detach().double(),
            keep=(upd.reshape(upd.shape[0], -1) != 0).any(0), with_bias=mod.bias is not None or "new bias" in s.action,
            lam=s.lam, cal_after=s.error_after)
    return out


@torch.no_grad()
def grams(model, sites: list[str], batches, keys_of) -> dict[str, dict[str, torch.Tensor]]:
    """Per site, input Grams (1x1 convs and linears: channels, with a trailing 1) summed per key:
    ``keys_of(batch, item)`` names the keys each item adds to."""
    out = {m: collections.defaultdict(lambda: 0) for m in sites}
    hooks, where = [], [0]

    def hook(module, inp, _out, m):
        t = inp[0].detach().double()
        f = t.movedim(1, -1).reshape(t.shape[0], -1, t.shape[1]) if t.dim() == 4 else t[:, None]
        f = torch.cat([f, torch.ones(*f.shape[:2], 1, dtype=f.dtype)], -1)
        for item in range(f.shape[0]):
            g = f[item].T @ f[item]
            for k in keys_of(where[0], item):
                out[m][k] = out[m][k] + g

    for m in sites:
        hooks.append(model.get_submodule(m).register_forward_hook(lambda mod, i, o, m=m: hook(mod, i, o, m)))
    for k, b in enumerate(batches):
        where[0] = k
        model(b)
    for h in hooks:
        h.remove()
    return out


def held_out_error(st: dict, w: torch.Tensor, b: torch.Tensor | None, ht: torch.Tensor) -> float:
    """||W x - W' x||^2 / ||W x||^2 over the held-out Gram (biases as a last column)."""
    zero = torch.zeros(st["w"].shape[0], dtype=torch.float64)
    wa = torch.cat([st["w"], (st["b"] if st["b"] is not None else zero)[:, None]], 1)
    d = wa - torch.cat([w.double(), (b.double() if b is not None else zero)[:, None]], 1)
    return float((d @ ht * d).sum() / (wa @ ht * wa).sum())


def sweep(model, x, data, test, photos: int, macs: float) -> dict[str, dict]:
    import graphprune as gp
    from graphprune.calib import refit as R

    calib = [(data[i:i + 8],) for i in range(0, len(data), 8)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, rep = gp.prune(copy.deepcopy(model), (x[:1],), budget={"macs": macs}, runtime=None, calib=calib)
    sites = site_inputs(model, rep.compensation)
    fold = folds_of(len(data), photos)
    g = grams(model, list(sites), [b for (b,) in calib], lambda k, i: [f"{lay}{fold[lay][8 * k + i]}" for lay in LAYOUTS])
    gt = grams(model, list(sites), test.split(16), lambda k, i: ["test"])
    rows = {}
    for m, st in sites.items():
        h, ht = g[m]["alt0"] + g[m]["alt1"], gt[m]["test"]
        args = (st["w"], st["b"], h, h, h, st["keep"], st["with_bias"])
        bias = R.refit(*args, mode="bias")
        row = {"features_kept": int(st["keep"].sum()), "lam": st["lam"], "calib_error": st["cal_after"],
               "none": held_out_error(st, st["w"] * st["keep"], st["b"], ht),
               "bias": held_out_error(st, bias.w, bias.b, ht), "ridge": {}}
        for lam in GRID:
            r = R.refit(*args, damp=lam)
            row["ridge"][str(lam)] = held_out_error(st, r.w, r.b, ht)
        for lay in LAYOUTS:
            row[f"cv_{lay}"] = R.refit(*args, folds=[(g[m][f"{lay}{j}"],) * 3 for j in (0, 1)]).lam
        row["best"] = float(min(row["ridge"], key=row["ridge"].get))
        rows[m] = row
        print(json.dumps({"site": m, **row}), flush=True)
    return rows


def main() -> int:
    import diag_cnn
    import vision_data as vd

    import graphprune as gp

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("sweep", "prune"))
    p.add_argument("--macs", type=float, default=0.8)
    p.add_argument("--calib", type=int, default=16, help="calibration photos (the first ones)")
    p.add_argument("--test-from", type=int, default=None, help="first held-out photo (default: --calib)")
    p.add_argument("--layout", default="bench", choices=("bench", "grouped", "photos"))
    p.add_argument("--photos", choices=("base", "all"), default="base",
                   help="base: the first 48 photos (the documented runs); all: every fetched photo (110)")
    p.add_argument("--ridge", default=None, help="a fixed ridge: a number or a JSON file of module -> strength")
    p.add_argument("--oracle", type=Path, default=None, help="sweep: write each site's held-out best strength here")
    p.add_argument("--json", type=Path, default=None, help="append the row (prune) or rows (sweep) to this JSON list")
    ns = p.parse_args()
    torch.manual_seed(0)
    model, x = vd.load_model("efficientnet_lite0"), vd.model_images("efficientnet_lite0", photos=ns.photos)
    test_x = x[ns.calib if ns.test_from is None else ns.test_from:]
    import bench_oneshot as bo
    crops = bo.augment(test_x, 4, seed=1)
    data = calibration(x, ns.calib, "bench" if ns.mode == "sweep" else ns.layout)
    if ns.mode == "sweep":
        rows = sweep(model, x, data, torch.cat([test_x, crops]), ns.calib, ns.macs)
        if ns.oracle is not None:
            ns.oracle.write_text(json.dumps({m: r["best"] for m, r in rows.items()}, indent=1))
        new = [{"model": "efficientnet_lite0", "macs": ns.macs, "variant": "ridge sweep (per site, held-out error)",
                "sites": rows}]
    else:
        kw = dict(calib=[(data[i:i + 8],) for i in range(0, len(data), 8)])
        if ns.ridge is not None:
            kw["ridge"] = json.loads(Path(ns.ridge).read_text()) if ns.ridge.endswith(".json") else float(ns.ridge)
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned, rep = gp.prune(copy.deepcopy(model), (x[:1],), budget={"macs": ns.macs}, runtime=None, **kw)
        name = f"layout={ns.layout}, calib={ns.calib} photos" + (f", ridge={ns.ridge}" if ns.ridge else "") \
            + (f", photos={ns.photos}, test from {len(x) - len(test_x)}" if ns.photos != "base" else "")
        row = {"model": "efficientnet_lite0", "macs": ns.macs, "variant": name, "seconds": round(time.perf_counter() - t, 1),
               "test_photos": len(test_x), "calib_images": len(data), "macs_kept": rep.macs_after / rep.macs_before,
               "photos": diag_cnn.scores(vd.run(model, test_x), vd.run(pruned, test_x)),
               "crops": diag_cnn.scores(vd.run(model, crops), vd.run(pruned, crops)),
               "lams": {s.weight: s.lam for s in rep.compensation.sites}}
        print(json.dumps(row), flush=True)
        print("ridge picked per site:", dict(collections.Counter(row["lams"].values())))
        new = [row]
    if ns.json is not None:
        append_rows(ns.json, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
