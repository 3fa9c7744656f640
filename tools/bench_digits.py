"""Accuracy vs MACs reduction on a CNN trained on scikit-learn's bundled digits, beside Torch-Pruning.

    make bench-deps && .venv/bin/python tools/bench_digits.py          # docs/budgets.md, docs/img/digits.png

A small CNN (three conv-BN-ReLU stages) is trained on 1,200 of the 1,797 8x8 digits and tested on
the rest. For 2x, 3x and 4x fewer MACs it is pruned (L2 magnitude, no calibration data):
one-shot then fine-tuned for 3 epochs, or in 3 steps with 1 epoch of fine-tuning after each
(the same training budget), with uniform or global allocation; Torch-Pruning 1.6.1 does the same
with its MetaPruner (GroupMagnitudeImportance, its pruning ratio searched until its own MAC counter
meets the budget; global_pruning for "global", iterative_steps for "iterative"). Every MAC figure
is re-measured with torch's FlopCounterMode. Seeds are fixed; the whole run takes a few minutes.
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

os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import graphprune as gp  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def data():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:1200], perm[1200:]
    return (x[tr], y[tr]), (x[te], y[te])


def cnn() -> nn.Module:
    torch.manual_seed(0)

    def stage(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(*stage(1, 32), *stage(32, 64), nn.MaxPool2d(2), *stage(64, 128),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def train(model, train_set, epochs: int, lr: float = 3e-3) -> nn.Module:
    x, y = train_set
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def accuracy(model, test_set) -> float:
    x, y = test_set
    with torch.no_grad():
        return float((model.eval()(x).argmax(1) == y).float().mean())


def macs(model, x) -> int:
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        model.eval()(x)
    return fc.get_total_flops() // 2


def graphprune_run(base, x1, train_set, speedup: float, allocation: str, iterative: bool, test_set):
    """(pruned and fine-tuned model, accuracy right after a one-shot prune, before fine-tuning)."""
    model, before_ft = copy.deepcopy(base), None
    budget = {"macs": 1.0 / speedup}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if iterative:
            model, _ = gp.prune_iterative(model, (x1,), budget=budget, steps=3, allocation=allocation,
                                          callback=lambda m, k, r: train(m, train_set, 1, lr=1e-3))
        else:
            model, _ = gp.prune(model, (x1,), budget=budget, allocation=allocation)
            before_ft = accuracy(model, test_set)
            train(model, train_set, 3, lr=1e-3)
    return model, before_ft


def tp_run(base, x1, train_set, speedup: float, allocation: str, iterative: bool, test_set):
    """Torch-Pruning at the same MACs budget: its ratio searched with its own counter."""
    import torch_pruning as tp

    target = tp.utils.count_ops_and_params(base, x1)[0] / speedup
    steps = 3 if iterative else 1

    def pruner_for(model, ratio):
        return tp.pruner.MetaPruner(model, x1, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                    pruning_ratio=ratio, global_pruning=allocation == "global",
                                    iterative_steps=steps, ignored_layers=[model[-1]])

    lo, hi = 0.0, 0.95
    for _ in range(14):  # the ratio whose fully stepped result meets the budget
        mid = (lo + hi) / 2
        m = copy.deepcopy(base)
        p = pruner_for(m, mid)
        for _ in range(steps):
            p.step()
        if tp.utils.count_ops_and_params(m, x1)[0] <= target:
            hi = mid
        else:
            lo = mid
    model, before_ft = copy.deepcopy(base), None
    pruner = pruner_for(model, hi)
    for _ in range(steps):
        pruner.step()
        if not iterative:
            before_ft = accuracy(model, test_set)
        train(model, train_set, 1 if iterative else 3, lr=1e-3)
    return model, before_ft


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "data" / "digits.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    train_set, test_set = data()
    x1 = train_set[0][:1]
    t0 = time.perf_counter()
    base = train(cnn(), train_set, a.epochs)
    dense_acc, dense_macs = accuracy(base, test_set), macs(base, x1)
    print(f"dense: accuracy {dense_acc:.4f}, {dense_macs:,} MACs ({time.perf_counter() - t0:.0f} s)", flush=True)
    rows = []
    tools = [("graphprune", graphprune_run)]
    try:
        import torch_pruning  # noqa: F401

        tools.append(("torch-pruning", tp_run))
    except ImportError:
        print("torch-pruning is not installed (make bench-deps): graphprune only", file=sys.stderr)
    for speedup in (2, 3, 4):
        for tool, fn in tools:
            for allocation in ("uniform", "global"):
                for iterative in (False, True):
                    t = time.perf_counter()
                    m, before_ft = fn(base, x1, train_set, speedup, allocation, iterative, test_set)
                    row = {"tool": tool, "speedup": speedup, "allocation": allocation,
                           "schedule": "iterative 3x1 epoch" if iterative else "one-shot + 3 epochs",
                           "accuracy": round(accuracy(m, test_set), 4),
                           "before_fine_tuning": None if before_ft is None else round(before_ft, 4),
                           "macs_kept": round(macs(m, x1) / dense_macs, 4),
                           "seconds": round(time.perf_counter() - t, 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"dense_accuracy": dense_acc, "dense_macs": dense_macs, "rows": rows}, indent=1) + "\n")
    print()
    print("| MACs | tool | allocation | schedule | accuracy | before fine-tuning | MACs kept (FlopCounterMode) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        pre = "" if r["before_fine_tuning"] is None else f"{r['before_fine_tuning']:.1%}"
        print(f"| 1/{r['speedup']} | {r['tool']} | {r['allocation']} | {r['schedule']} | {r['accuracy']:.1%} | {pre} | "
              f"{r['macs_kept']:.1%} |")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.2))
        for tool, marker in (("graphprune", "o"), ("torch-pruning", "s")):
            for allocation, style in (("uniform", "-"), ("global", "--")):
                colors = ("tab:blue", "tab:orange") if tool == "graphprune" else ("tab:green", "tab:red")
                for sched, color in zip(("one-shot + 3 epochs", "iterative 3x1 epoch"), colors):
                    pts = [(r["speedup"], r["accuracy"]) for r in rows if r["tool"] == tool and
                           r["allocation"] == allocation and r["schedule"] == sched]
                    if pts:
                        xs, ys = zip(*pts)
                        ax.plot(xs, ys, style, marker=marker, color=color,
                                label=f"{tool}, {allocation}, {sched}")
        ax.axhline(dense_acc, color="black", lw=0.8, label="dense")
        ax.set_xlabel("MACs reduction (x)")
        ax.set_ylabel("test accuracy")
        ax.set_xticks([2, 3, 4])
        ax.legend(fontsize=6.5, loc="lower left")
        ax.set_title("digits CNN: accuracy vs MACs reduction")
        fig.tight_layout()
        (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
        fig.savefig(ROOT / "docs" / "img" / "digits.png", dpi=120)
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
