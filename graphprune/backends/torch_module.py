"""Apply a PrunePlan to an nn.Module in place.

Parameters, buffers and lifted constants are sliced along every dim a pruned
group cuts; module attributes are updated (conv channels and groups, linear
features, norm shapes, embedding dims, and plain int attributes a forward uses to
spell sizes); tied tensors stay tied. The rewritten model is traced again and
every value's shape is checked against the plan, so a size the forward
hard-codes is reported with its node and source line instead of returning a
broken model.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RewriteError
from ..graph import DependencyGraph
from ..planner import PrunePlan
from ..spaces import Solver

_KNOWN = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
          nn.Embedding, nn.PReLU, getattr(nn, "RMSNorm", nn.LayerNorm))


def keep_masks(dg: DependencyGraph, plan: PrunePlan) -> dict[tuple[str, int], np.ndarray]:
    """(IR value, dim) -> kept positions mask, for every slot the plan changes."""
    pruned = plan.masks()
    out: dict[tuple[str, int], np.ndarray] = {}
    solver: Solver = dg.solver
    for v in dg.ir.values.values():
        for d in range(v.rank):
            term = solver.layout((v.name, d))
            if any(a in pruned for a in solver.atoms(term)):
                mask = solver.keep_mask(term, pruned)
                if not mask.all():
                    out[(v.name, d)] = mask
    return out


def new_size(dg: DependencyGraph, key: Any, pruned: dict[int, np.ndarray]) -> int:
    term = dg.solver.layout(key)
    return int(dg.solver.keep_mask(term, pruned).sum())


def apply_plan(model: nn.Module, dg: DependencyGraph, plan: PrunePlan) -> None:
    """Slice tensors and update attributes (no validation; see :func:`rewrite`)."""
    masks = keep_masks(dg, plan)
    replaced: dict[int, Any] = {}  # id(old tensor) -> new tensor, so aliases stay one tensor
    done: set[str] = set()  # a tied tensor may appear as several graph values: slice it once
    for v in dg.ir.params():
        dims = [(d, masks[(v.name, d)]) for d in range(v.rank) if (v.name, d) in masks]
        paths = dg.ir.aliases.get(v.source, [v.source])
        if not dims or done.intersection(paths):
            continue
        done.update(paths)
        for path in paths:
            owner, attr = _owner(model, path)
            old = getattr(owner, attr)
            if id(old) not in replaced:
                replaced[id(old)] = _slice(old, dims)
            _set(owner, attr, replaced[id(old)])
    _update_known_modules(model, dg, plan)
    _update_int_attributes(model, dg, plan)


def rewrite(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None = None,
            check: bool = True) -> None:
    """Apply ``plan`` to ``model`` in place and check the result against the plan."""
    apply_plan(model, dg, plan)
    if check and not plan.empty:
        check_shapes(model, dg, plan, args, kwargs)


def check_shapes(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None) -> None:
    from ..frontends.torch_export import export_program, lower

    masks = keep_masks(dg, plan)
    try:
        ep = export_program(model, args, kwargs)
    except Exception as exc:
        raise RewriteError(
            "the pruned model no longer runs on the example inputs; its forward probably spells a pruned "
            f"size as a literal. Use -1 in view/reshape or a module attribute. Cause: {exc}") from exc
    new = lower(ep)
    for node in dg.ir.nodes:
        for out in node.outputs:
            if out not in new.values:
                continue
            v = dg.ir.values[out]
            want = tuple(int(masks[(out, d)].sum()) if (out, d) in masks else s for d, s in enumerate(v.shape))
            got = new.values[out].shape
            if tuple(got) != want:
                raise RewriteError(
                    f"after pruning, {node.where()} produces shape {tuple(got)} but the plan needs {want}. "
                    "The forward spells a size the rewrite cannot reach (a literal, or an attribute of another "
                    "module): compute it from tensor shapes, use -1, or exclude these layers with ignore=[...].")


def _owner(model: nn.Module, path: str) -> tuple[Any, str]:
    mod_path, _, attr = path.rpartition(".")
    return (model.get_submodule(mod_path) if mod_path else model), attr


def _slice(t: torch.Tensor, dims: list[tuple[int, np.ndarray]]) -> torch.Tensor:
    with torch.no_grad():
        data = t.detach()
        for d, mask in dims:
            idx = torch.as_tensor(np.flatnonzero(mask), dtype=torch.long, device=data.device)
            data = data.index_select(d, idx)
        data = data.contiguous()
    if isinstance(t, nn.Parameter):
        return nn.Parameter(data, requires_grad=t.requires_grad)
    return data


def _set(owner: nn.Module, attr: str, value: Any) -> None:
    if attr in owner._parameters:
        owner._parameters[attr] = value
    elif attr in owner._buffers:
        owner._buffers[attr] = value
    else:
        setattr(owner, attr, value)


def _carried_value(dg: DependencyGraph, carry, pruned) -> int:
    size = new_size(dg, carry.key, pruned)
    return -size if carry.value < 0 else size


def _update_known_modules(model: nn.Module, dg: DependencyGraph, plan: PrunePlan) -> None:
    pruned = plan.masks()
    groups_of: dict[str, int] = {}  # module path -> new groups count (conv, group norm)
    node_module = {n.name: n.meta.get("module", "") for n in dg.ir.nodes}
    for c in dg.carries:
        if c.path in ((6,), (8,)) or (c.path == (1,) and dg.ir.nodes and _op(dg, c.node) == "aten.group_norm"):
            groups_of[node_module.get(c.node, "")] = _carried_value(dg, c, pruned)
    for path, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            m.groups = groups_of.get(path, m.groups)
            w = m.weight
            if m.transposed:
                m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
            else:
                m.in_channels, m.out_channels = w.shape[1] * m.groups, w.shape[0]
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, nn.modules.batchnorm._NormBase):
            ref = m.weight if m.weight is not None else m.running_mean
            if ref is not None:
                m.num_features = ref.shape[0]
        elif isinstance(m, nn.GroupNorm):
            m.num_groups = groups_of.get(path, m.num_groups)
            if m.weight is not None:
                m.num_channels = m.weight.shape[0]
        elif isinstance(m, nn.Embedding):
            m.num_embeddings, m.embedding_dim = m.weight.shape
        elif isinstance(m, nn.PReLU):
            m.num_parameters = m.weight.shape[0]
        elif hasattr(m, "normalized_shape") and getattr(m, "weight", None) is not None and isinstance(
                m, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
            m.normalized_shape = tuple(m.weight.shape)
    # Norms without affine weights: read the new normalised shape from the carried constants.
    for c in dg.carries:
        path = node_module.get(c.node, "")
        if _op(dg, c.node) in ("aten.layer_norm", "aten.rms_norm") and path:
            try:
                m = model.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(m, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))) and getattr(m, "weight", None) is None:
                shape = list(m.normalized_shape)
                shape[c.path[1]] = _carried_value(dg, c, pruned)
                m.normalized_shape = tuple(shape)


def _op(dg: DependencyGraph, node_name: str) -> str:
    if not hasattr(dg, "_op_by_node"):
        dg._op_by_node = {n.name: n.op for n in dg.ir.nodes}
    return dg._op_by_node.get(node_name, "")


def _update_int_attributes(model: nn.Module, dg: DependencyGraph, plan: PrunePlan) -> None:
    """A constant in a forward often comes from an int attribute of the module that
    runs it (self.head_dim). Update an attribute when every constant equal to it in
    that module asks for the same new value; leave it when they disagree (then the
    constant came from elsewhere, and the shape check decides)."""
    pruned = plan.masks()
    node_module = {n.name: n.meta.get("module", "") for n in dg.ir.nodes}
    demands: dict[tuple[str, int], set[int]] = {}
    for c in dg.carries:
        path = node_module.get(c.node, "")
        demands.setdefault((path, abs(c.value)), set()).add(abs(_carried_value(dg, c, pruned)))
    for (path, old), new_values in demands.items():
        if len(new_values) != 1 or old in new_values:
            continue
        try:
            m = model.get_submodule(path) if path else model
        except AttributeError:
            continue
        if isinstance(m, _KNOWN):
            continue
        (new,) = new_values
        for attr, val in list(vars(m).items()):
            if not attr.startswith("_") and type(val) is int and val == old:
                setattr(m, attr, new)
