"""What only a traced torch program offers: gradients of a loss, and
the sequential walk (every batch advanced through the original and the masked program to
the next site whose input lost channels, the site refit, the pruned walk going on with the
new weights)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..errors import PlanError
from ..program.torch_run import Walk
from ..util.progress import progress
from .compensate import refit_site
from .distributed import reduce_dict, shard
from .stats import Gram, features, real_rows, reduce_folds, split_folds


def gradients(model: torch.nn.Module, batches: list[tuple[tuple, dict]],
              loss_fn: Callable[[Any, Any], torch.Tensor] | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per parameter: sum over batches of w*g and of (w*g)^2, g the gradient of the loss."""
    params = dict(model.named_parameters())
    acc: dict[str, list[torch.Tensor]] = {}
    flags = {n: p.requires_grad for n, p in params.items()}
    try:
        for p in params.values():
            p.requires_grad_(True)
        mine = shard(len(batches))  # this rank's batches; the sums are reduced below
        for k in progress(mine, "gradients", len(mine)):
            args, kwargs = batches[k]
            model.zero_grad(set_to_none=True)
            out = model(*args, **kwargs)
            if loss_fn is not None:
                loss = loss_fn(out, kwargs if kwargs else args)
            else:
                loss = getattr(out, "loss", None) if not isinstance(out, dict) else out.get("loss")
                if loss is None:
                    raise PlanError("the model returns no loss for the calibration batches: pass loss_fn="
                                    "(output, batch) -> scalar, or batches it computes a loss from (labels=...)")
            loss.backward()
            with torch.no_grad():
                for n, p in params.items():
                    if p.grad is None:
                        continue
                    wg = (p * p.grad).double()
                    if n not in acc:
                        acc[n] = [torch.zeros_like(wg), torch.zeros_like(wg)]
                    acc[n][0] += wg
                    acc[n][1] += wg ** 2
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in params.items():
            p.requires_grad_(flags[n])
    summed = reduce_dict({(n, i): a[i] for n, a in acc.items() for i in (0, 1)})  # over ranks, where several
    out_: dict[str, tuple[np.ndarray, np.ndarray]] = {n: (summed[n, 0].numpy(), summed[n, 1].numpy())
                                                      for n, i in summed if i == 0}
    for alias_group in _aliases(model).values():  # tied weights: every name sees the same sums
        src = next((a for a in alias_group if a in out_), None)
        for a in alias_group:
            if src is not None:
                out_[a] = out_[src]
    return out_


def _aliases(model: torch.nn.Module) -> dict[int, list[str]]:
    by_id: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return by_id


def walk_grams(dg, trace, batches, act_masks, todo, tensors, add_bias, result, trace_for=None) -> None:
    """compensate="sequential": each site is fit to the original model's output from the *pruned*
    model's input, the original and the pruned program advancing together site by site, so
    each refit sees the ones before it (it also corrects upstream error, but measured worse on
    MiniLM and SmolLM2: docs/calibration.md). Each site is visited once: linear in depth."""
    dense = Walk(trace, batches, trace_for=trace_for)
    pruned = Walk(trace, batches, masks=act_masks, trace_for=trace_for)
    for s, keep in progress(todo, "compensating", len(todo)):
        i = dense.node_index(s.node)
        if i is None:
            continue
        folds = [(Gram(), Gram(), Gram()), (Gram(), Gram(), Gram())]
        items = 0
        for k in shard(len(batches)):  # this rank's batches; the folds are summed over ranks below
            dense.advance(i, batch=k)
            pruned.advance(i, batch=k)
            xd, xp = dense.value(k, s.x), pruned.value(k, s.x)
            rows = real_rows(s, xd, dense.valid[k])
            parts = split_folds(features(s, xd), xd.shape[0], items, rows, features(s, xp))
            for fold, (fd, fp) in zip(folds, parts):
                if fd.shape[0]:
                    fold[0].add(fd)
                    fold[1].add(fd, fp)
                    fold[2].add(fp)
            items += int(xd.shape[0])
        folds = reduce_folds(folds, items)
        used = [f for f in folds if f[0].m is not None]
        hd, c, hp = (Gram(sum(f[j].m for f in used)) for j in range(3))
        w_path, b_path, new_w, new_b = refit_site(dg, s, keep, tensors, hd.m, c.m, hp.m, "refit", add_bias, result,
                                                   [tuple(g.m for g in f) for f in used])
        pruned.overrides[w_path] = new_w
        if b_path is not None:
            pruned.overrides[b_path] = new_b
        elif new_b is not None:
            pruned.runner.extra_bias[s.node] = (-1 if s.kind == "linear" else 1, new_b)
