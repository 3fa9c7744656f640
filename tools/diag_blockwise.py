"""Block reconstruction by hand on EfficientNet-Lite0: the experiment behind recover(blockwise=True).

The default call prunes EfficientNet-Lite0 to ``--macs`` of its MACs, calibrated as tools/bench_oneshot.py
does (the first 32 photos and 4 seeded crops/flips of each). Then each of its 16 MBConv blocks is trained
alone on cached inputs (the pruned model's, block by block) toward the original's block output on the
channels the plan kept, ``--steps`` steps of 16 images at ``--lr`` (Adam, cosine), the first 16
calibration images held out; then the head (conv, BatchNorm, classifier) on the cached last features,
KL to the original's logits at T=2 (``--no-head`` skips it). The pool: the other 144 calibration images
and ``--blends`` seeded blends of two of them. Scored on the 78 other photos after the blocks and after
the head (top-1 agreement, KL, agreement where the original is confident).

    .venv/bin/python tools/diag_blockwise.py --macs 0.5 --lr 1e-3
    .venv/bin/python tools/diag_blockwise.py --macs 0.8 --lr 1e-4 --json docs/data/diag_blockwise.json
"""
from __future__ import annotations

import argparse
import copy
import json
import math
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

from json_rows import append_rows  # noqa: E402


def _stem(m, z):
    return F.relu6(m._bn0(m._conv_stem(z)))


def _head(m, z):
    return m._fc(F.adaptive_avg_pool2d(F.relu6(m._bn1(m._conv_head(z))), 1).flatten(1))


def _batched(f, z, b=32):
    with torch.no_grad():
        return torch.cat([f(z[i:i + b]) for i in range(0, len(z), b)])


def _kl(s, t):
    return F.kl_div(F.log_softmax(s / 2, -1), F.log_softmax(t / 2, -1), reduction="batchmean", log_target=True) * 4


def _fit(params, loss_of, n, held_loss, steps, lr, g) -> tuple[float, float]:
    """Adam with a cosine schedule; the best held-out weights are kept. (held-out before, after)."""
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    before = best = held_loss()
    saved = [p.detach().clone() for p in params]
    for it in range(steps):
        loss = loss_of(torch.randint(0, n, (16,), generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (it + 1) / steps))
        if (it + 1) % max(1, steps // 5) == 0 and (h := held_loss()) < best:
            best, saved = h, [p.detach().clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, saved):
            p.copy_(s), p.requires_grad_(False)
    return before, best


def main() -> int:
    import bench_oneshot as bo
    import diag_cnn
    import vision_data as vd

    import graphprune as gp
    from graphprune.planning.module_channels import ATTR

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--macs", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=200, help="steps of 16 images per block (and for the head)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--blends", type=int, default=240)
    ap.add_argument("--no-head", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ns = ap.parse_args()
    torch.manual_seed(0)
    teacher = vd.load_model("efficientnet_lite0")
    x = vd.model_images("efficientnet_lite0", photos="all")
    data = torch.cat([x[:32], bo.augment(x[:32], 4)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student, _ = gp.prune(copy.deepcopy(teacher), (x[:1],), budget={"macs": ns.macs}, runtime=None,
                              calib=[(data[i:i + 8],) for i in range(0, len(data), 8)])
    for p in [*teacher.parameters(), *student.parameters()]:
        p.requires_grad_(False)
    kept, test_x, ref = getattr(student, ATTR), x[32:], vd.run(teacher, x[32:])

    def score(stage: str) -> dict:
        out = vd.run(student, test_x)
        s = diag_cnn.scores(ref, out)
        row = {"model": "efficientnet_lite0", "macs": ns.macs, "stage": stage, "steps": ns.steps, "lr": ns.lr,
               "blends": ns.blends, "agreement": vd.agreement(ref, out), "kl": s["kl"],
               "agreement_confident": s.get("agreement_confident"), "seconds": time.perf_counter() - t0}
        print(json.dumps(row), flush=True)
        return row

    t0 = time.perf_counter()
    rows = [score("one shot")]
    g = torch.Generator().manual_seed(0)
    hold, train = data[:16], data[16:]
    lam = torch.distributions.Beta(1.0, 1.0).sample((ns.blends,)).view(-1, 1, 1, 1)
    i, j = torch.randint(0, len(train), (ns.blends,), generator=g), torch.randint(0, len(train), (ns.blends,), generator=g)
    pool = torch.cat([train, lam * train[i] + (1 - lam) * train[j]])
    s_in, t_in = _batched(lambda z: _stem(student, z), pool), _batched(lambda z: _stem(teacher, z), pool)
    s_held, t_held = _batched(lambda z: _stem(student, z), hold), _batched(lambda z: _stem(teacher, z), hold)
    for k, (sb, tb) in enumerate(zip(student._blocks, teacher._blocks)):
        idx = torch.as_tensor(kept.get(f"_blocks.{k}", {}).get(1, range(tb._bn2.num_features)))
        t_out, t_out_held = _batched(tb, t_in), _batched(tb, t_held)
        target, target_held, var = t_out[:, idx], t_out_held[:, idx], t_out[:, idx].var().clamp_min(1e-8)

        def held_loss(sb=sb, target_held=target_held, var=var):
            with torch.no_grad():
                return float(((sb(s_held) - target_held) ** 2).mean() / var)

        before, after = _fit(list(sb.parameters()), lambda b, sb=sb, target=target, var=var:
                             ((sb(s_in[b]) - target[b]) ** 2).mean() / var, len(pool), held_loss, ns.steps, ns.lr, g)
        print(f"block {k}: held-out relative error {before:.4f} -> {after:.4f}", flush=True)
        s_in, s_held, t_in, t_held = _batched(sb, s_in), _batched(sb, s_held), t_out, t_out_held
    rows.append(score("blocks"))
    if not ns.no_head:
        logits, logits_held = _batched(lambda z: _head(teacher, z), t_in), _batched(lambda z: _head(teacher, z), t_held)
        params = [p for m in (student._conv_head, student._bn1, student._fc) for p in m.parameters()]

        def head_held():
            with torch.no_grad():
                return float(_kl(_head(student, s_held), logits_held))

        before, after = _fit(params, lambda b: _kl(_head(student, s_in[b]), logits[b]), len(pool), head_held,
                             ns.steps, ns.lr, g)
        print(f"head: held-out KL {before:.4f} -> {after:.4f}", flush=True)
        rows.append(score("blocks, then head"))
    if ns.json:
        append_rows(ns.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
