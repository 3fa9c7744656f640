"""Why does a real CNN lose its predictions in one shot? Variants of the MACs-budget call, scored.

EfficientNet-Lite0 (or the MobileNetV2 backbone) with its ImageNet weights (tools/fetch_vision.py)
is pruned to ``--macs`` of its MACs with each variant of ``gp.prune`` named on the command line
(``VARIANTS``), calibrated as tools/bench_oneshot.py does (the first ``--calib`` photos plus seeded
crops/flips). Each is scored on the *other* photos and on seeded crops/flips of them (more rows,
the same held-out images): top-1 agreement with the original, agreement where the original is
confident (max probability >= 0.5), mean KL(original || pruned) and the relative squared error of
the outputs (the only measure for a backbone without a classifier). ``--groups`` also prints where
the budget cut: each group's kind, width kept and the MACs its cut saves.

    .venv/bin/python tools/diag_cnn.py default expand-only --macs 0.8
    .venv/bin/python tools/diag_cnn.py default --model mobilenetv2_backbone --groups
    .venv/bin/python tools/diag_cnn.py sensitivity --photos all --calib 32 --rows 64 --levels 0.15 0.3 0.5 0.75
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

# name -> keyword arguments of gp.prune beside model, args, budget and calib ("calib": None drops it)
VARIANTS = {
    "magnitude": dict(calib=None),
    "default": dict(),
    "uniform": dict(allocation="uniform"),
    "sensitivity": dict(allocation="sensitivity"),
    "no-refit": dict(compensate=False),
    "bias-only": dict(compensate="bias"),
    "sequential": dict(compensate="sequential"),
    "activation": dict(importance="activation"),
    "expand-only": dict(targets=("ffn",)),
    "depth": dict(targets=("blocks", "ffn", "hidden")),  # whole residual blocks weighed against widths
    "expand-only+sensitivity": dict(targets=("ffn",), allocation="sensitivity"),
    # EfficientNet-Lite0's expanded channels alone: 'ffn' less the stem, the blocks 0/15 projections, the head conv
    "expansions": dict(targets=("ffn",), ignore=["_bn0", "_blocks.0._bn2", "_blocks.15._bn2", "_bn1"]),
}


def scores(ref: torch.Tensor, out: torch.Tensor, classes: bool = True) -> dict:
    """Agreement, agreement where the original is confident, mean KL and relative squared error
    (``classes`` False: outputs are pooled features, the error alone)."""
    err = float(((out - ref) ** 2).sum() / (ref ** 2).sum())
    if not classes:
        return {"rel_error": err}
    p, lq = ref.softmax(-1), out.log_softmax(-1)
    conf = p.max(-1).values >= 0.5
    same = (ref.argmax(-1) == out.argmax(-1)).float()
    return {"agreement": float(same.mean()), "agreement_confident": float(same[conf].mean()) if conf.any() else None,
            "confident": int(conf.sum()), "kl": float((p * (p.clamp_min(1e-12).log() - lq)).sum(-1).mean()),
            "rel_error": err}


@torch.no_grad()
def reestimate_bn(model, batches: list) -> int:
    """BatchNorm running statistics recomputed on the calibration batches (cumulative average, the
    model's weights untouched): what the pruned model's own activations look like. Returns the
    number of BatchNorm layers reset."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative: every batch weighs the same
        m.train()
    for (b,) in batches:
        model(b)
    for m, (mom, tr) in zip(bns, saved):
        m.momentum = mom
        m.train(tr)
    return len(bns)


def where_cut(model, x, rep) -> list[dict]:
    """Per group: its kind, the width kept, and the share of the model's MACs its cut saved."""
    import graphprune as gp
    from graphprune.planning.budget import CostModel
    from graphprune.planning.targets import select_groups

    dg = gp.trace(model, (x[:1],))
    groups = select_groups(dg)
    cost = CostModel(dg, groups)
    full = cost.measure({})["macs"]
    rows = []
    for g in groups:
        kept = rep.kept.get(g.id, (g.size, g.size))[0]
        convs = sorted({m.name.rsplit(".", 1)[0] for m in g.members if m.name.endswith("weight")})
        rows.append({"group": g.id, "kind": g.kind, "kept": kept, "size": g.size,
                     "macs_saved": (full - cost.measure({g.id: kept})["macs"]) / full, "modules": convs[:2]})
    return rows


def per_group(model, x, calib, test, macs: float, ratio: float) -> list[dict]:
    """Each group pruned *alone* at ``ratio`` (OBS-ranked as the default call ranks), without and
    with the default refit: the relative output error on the calibration batches and on held-out
    ``test`` batches, and the share of MACs the cut saves. Errors that add up across groups
    (one-shot's regime) make these the costs a budget allocation trades against MACs."""
    from graphprune.options import PruneOptions
    from graphprune.pipeline import plan_program
    from graphprune.planning.allocate import Repair
    from graphprune.planning.budget import CostModel
    from graphprune.planning.plan import keep_masks, make_plan
    from graphprune.planning.scoring import output_errors
    from graphprune.program.torch_program import TorchProgram

    program = TorchProgram(model, (x[:1],))
    planned = plan_program(program, PruneOptions(calib=calib, budget={"macs": macs}, runtime=None))
    dg, groups = program.graph(), [g for g in program.graph().prunable_groups() if g.id in planned.plan.sizes]
    cost = CostModel(dg, groups)
    full = cost.measure({})["macs"]
    repair = Repair(program, dg, planned.plan, planned.batches, "refit", planned.ctx.stats)
    plain, fixed = [], []
    for g in groups:
        p = make_plan([g], planned.scores, 0.0, 1, {g.id: ratio})
        plain.append((keep_masks(dg, p), {}))
        fixed.append(repair.variant(p))
    tb = program.batches(test)
    errs = {k: output_errors(program, b, v, k) for k, b, v in
            (("calib", planned.batches, plain), ("test", tb, plain), ("calib_refit", planned.batches, fixed),
             ("test_refit", tb, fixed))}
    rows = []
    for i, g in enumerate(groups):
        kept = g.size - len(make_plan([g], planned.scores, 0.0, 1, {g.id: ratio}).pruned[g.id])
        rows.append({"group": g.id, "kind": g.kind, "size": g.size,
                     "macs_saved": (full - cost.measure({g.id: kept})["macs"]) / full,
                     **{k: float(e[i]) for k, e in errs.items()}})
    return rows


def main() -> int:
    import bench_oneshot as bo
    import vision_data as vd

    import graphprune as gp
    import graphprune.planning.budget_sensitivity as bs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="*", default=["default"], help=f"of {sorted(VARIANTS)}")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--macs", type=float, default=0.8)
    p.add_argument("--calib", type=int, default=16)
    p.add_argument("--augment", type=int, default=4, help="crops/flips per calibration photo")
    p.add_argument("--test-augment", type=int, default=4, help="crops/flips per held-out photo, scored too")
    p.add_argument("--groups", action="store_true", help="print where each variant's budget cut")
    p.add_argument("--photos", choices=("base", "all"), default="base",
                   help="base: the first 48 photos (the documented runs); all: every fetched photo (110)")
    p.add_argument("--bn", action="store_true", help="also score each variant with BatchNorm re-estimated")
    p.add_argument("--per-group", type=float, default=None, metavar="RATIO",
                   help="instead: each group alone at RATIO, its error on calibration and held-out photos")
    p.add_argument("--levels", type=float, nargs="+", default=None,
                   help="the ratios a budget's sensitivity tries per group (default: budget_sensitivity.BUDGET_LEVELS)")
    p.add_argument("--rows", type=int, default=None,
                   help="the calibration rows allocation='sensitivity' scores on (default: allocate.ROWS)")
    p.add_argument("--json", type=Path, default=None, help="append the rows to this JSON list")
    p.add_argument("--divergence", choices=("mse", "kl"), default=None,
                   help="how allocation compares a variant's outputs (graphprune/planning/scoring.py DIVERGENCE)")
    p.add_argument("--greedy-steps", type=int, default=None,
                   help="OBS order of single columns in this many chunks (graphprune/importance/data.py GREEDY_STEPS)")
    ns = p.parse_args()
    if ns.greedy_steps is not None:
        import graphprune.importance.data as data

        data.GREEDY_STEPS = ns.greedy_steps
    if ns.levels:
        bs.BUDGET_LEVELS = tuple(ns.levels)
    if ns.rows:
        bs.ROWS = ns.rows
    if ns.divergence:
        import graphprune.planning.scoring as scoring

        scoring.DIVERGENCE = ns.divergence
    unknown = [v for v in ns.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    torch.manual_seed(0)
    model = vd.load_model(ns.model)
    x = vd.model_images(ns.model, photos=ns.photos)
    calib_x, test_x = x[:ns.calib], x[ns.calib:]
    data = torch.cat([calib_x, bo.augment(calib_x, ns.augment)]) if ns.augment else calib_x
    calib = [(data[i:i + 8],) for i in range(0, len(data), 8)]
    crops = bo.augment(test_x, ns.test_augment, seed=1) if ns.test_augment else test_x[:0]
    ref, ref_crops = vd.run(model, test_x), vd.run(model, crops) if len(crops) else crops  # --test-augment 0: none
    classes = bool(vd.entry(ns.model)["num_classes"])  # a backbone without its classifier: feature error only

    def score(a: torch.Tensor, b: torch.Tensor) -> dict:
        return scores(a, b, classes)

    if ns.per_group is not None:
        test = [(t,) for t in torch.cat([test_x, crops]).split(8)]
        for r in per_group(model, x, calib, test, ns.macs, ns.per_group):
            print(json.dumps(r), flush=True)
        return 0
    # the noise floor: the original itself on flipped photos, and with BatchNorm re-estimated on the calibration set
    rows = [{"model": ns.model, "variant": "original, photos flipped",
             "photos": score(ref, vd.run(model, test_x.flip(-1)))}]
    if ns.bn:
        same = copy.deepcopy(model)
        reestimate_bn(same, calib)
        rows.append({"model": ns.model, "variant": "original + BN re-estimated",
                     "photos": score(ref, vd.run(same, test_x)),
                     "crops": score(ref_crops, vd.run(same, crops)) if len(crops) else None})
    for r in rows:
        print(json.dumps(r), flush=True)
    for name in ns.variants:
        kw = {"calib": calib, **VARIANTS[name]}  # the variant's calib (None: no data) wins
        if kw["calib"] is None:
            del kw["calib"]
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned, rep = gp.prune(copy.deepcopy(model), (x[:1],), budget={"macs": ns.macs}, runtime=None, **kw)
        row = {"model": ns.model, "macs": ns.macs, "variant": name, "seconds": round(time.perf_counter() - t, 1),
               "levels": list(bs.BUDGET_LEVELS), "rows": bs.ROWS,
               "divergence": ns.divergence or "mse", "greedy_steps": ns.greedy_steps,
               "allocation": next((n for n in rep.notes if n.startswith("allocation")), ""),
               "macs_kept": rep.macs_after / rep.macs_before, "photos": score(ref, vd.run(pruned, test_x)),
               # the report's own estimate from the calibration items (graphprune/planning/heldout.py)
               "check": rep.to_dict().get("heldout"),
               "crops": score(ref_crops, vd.run(pruned, crops)) if len(crops) else None}
        rows.append(row)
        print(json.dumps(row), flush=True)
        if ns.bn:
            reestimate_bn(pruned, calib)
            row = dict(row, variant=name + " + BN re-estimated", photos=score(ref, vd.run(pruned, test_x)),
                       crops=score(ref_crops, vd.run(pruned, crops)) if len(crops) else None)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if ns.groups:
            for g in where_cut(model, x, rep):
                print("   ", json.dumps(g))
    if ns.json is not None:
        append_rows(ns.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
