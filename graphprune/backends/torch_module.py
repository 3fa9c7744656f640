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

import copy
import itertools
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


def apply_plan(model: nn.Module, dg: DependencyGraph, plan: PrunePlan,
               attr_updates: list[tuple[str, str, Any]] | None = None) -> None:
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
    for path, attr, value in attr_updates or []:
        setattr(model.get_submodule(path) if path else model, attr, value)


def rewrite(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None = None,
            check: bool = True) -> None:
    """Apply ``plan`` to ``model`` in place, after proving the rewrite on a copy.

    The forward's own size constants (view targets, split sizes, repeat counts)
    are reached through module attributes. Which attribute spells which constant
    is not recorded by torch.export, so candidate updates are tried on a
    meta-device copy that is traced again and shape-checked against the plan;
    the user's model is modified only once a consistent set is found.
    """
    if plan.empty:
        return
    sure, unsure = attribute_candidates(model, dg, plan)
    if not check:
        apply_plan(model, dg, plan, sure)
        return
    errors: list[str] = []
    fallback = None
    for choice in _choices(unsure):
        updates = sure + choice
        err, same_structure = _dry_run(model, dg, plan, updates, args, kwargs)
        if err is None and same_structure:
            apply_plan(model, dg, plan, updates)
            return
        if err is None and fallback is None:
            # Shapes fit but ops appeared or vanished: accept only if nothing keeps the
            # original structure (a size-dependent branch, e.g. repeat_kv with n_rep 1).
            fallback = updates
        elif err is not None:
            errors.append(err)
    if fallback is not None:
        apply_plan(model, dg, plan, fallback)
        return
    raise RewriteError(errors[0])


def _choices(unsure: list[list[list[tuple[str, str, Any]]]], limit: int = 64):
    """Combinations of the uncertain attributes' options (each: one candidate value, or
    leaving the attribute alone), likeliest first: every attribute updated."""
    options = [family + [[]] for family in unsure]
    for k, combo in enumerate(itertools.product(*options)):
        if k >= limit:
            return
        yield [u for choice in combo for u in choice]


def _dry_run(model, dg, plan, updates, args, kwargs) -> tuple[str | None, bool]:
    """Apply the rewrite to a meta copy and shape-check it: (error text or None, same ops)."""
    for device in ("meta", None):
        try:
            probe = _copy_on(model, device)
            p_args, p_kwargs = _to_device((args, kwargs or {}), device)
        except Exception:  # some modules cannot be copied; the next device is tried
            continue
        apply_plan(probe, dg, plan, updates)
        try:
            return None, check_shapes(probe, dg, plan, p_args, p_kwargs)
        except RewriteError as exc:
            if device == "meta" and "meta" in str(exc).lower():
                continue  # the forward mixes devices on meta; prove it on a real copy instead
            return str(exc), False
    return "could not copy the model to check the rewrite", False


def _copy_on(model: nn.Module, device: str | None) -> nn.Module:
    if device is None:
        return copy.deepcopy(model)
    memo: dict[int, Any] = {}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in memo:
            meta = torch.empty_like(t, device=device)
            memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _to_device(obj: Any, device: str | None) -> Any:
    if device is None:
        return obj
    return torch.utils._pytree.tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, obj)


def check_shapes(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None) -> bool:
    """Trace the rewritten model again; every value must have the shape the plan says.

    Returns whether the new trace has exactly the original's call sites.
    """
    from ..frontends.torch_export import export_program, lower

    masks = keep_masks(dg, plan)
    try:
        ep = export_program(model, args, kwargs)
    except Exception as exc:
        raise RewriteError(
            "the pruned model no longer runs on the example inputs: its forward spells a pruned size the "
            "rewrite cannot reach (a literal, or a size computed from constructor arguments). Use -1 in "
            "view/reshape, read sizes from tensor shapes or from an attribute of the module doing the reshape, "
            f"or exclude these layers with ignore=[...]. Cause: {exc.__cause__ or exc}") from exc
    new = lower(ep)
    new_by_site = _by_call_site(new.nodes)
    for site, node in _by_call_site(dg.ir.nodes).items():
        other = new_by_site.get(site)
        if other is None or len(other.outputs) != len(node.outputs):
            continue  # a code path that only runs at some sizes (an early return): nothing to compare
        for out, new_out in zip(node.outputs, other.outputs):
            v = dg.ir.values[out]
            want = tuple(int(masks[(out, d)].sum()) if (out, d) in masks else s for d, s in enumerate(v.shape))
            got = new.values[new_out].shape
            if tuple(got) != want:
                raise RewriteError(
                    f"after pruning, {node.where()} produces shape {tuple(got)} but the plan needs {want}. "
                    "The forward spells a size the rewrite cannot reach (a literal, or an attribute of another "
                    "module): compute it from tensor shapes, use -1, or exclude these layers with ignore=[...].")
    outs = [new.values[o].shape for o in new.outputs]
    if outs != [dg.ir.values[o].shape for o in dg.ir.outputs]:
        raise RewriteError(f"after pruning, the model's outputs have shapes {outs}, not "
                           f"{[dg.ir.values[o].shape for o in dg.ir.outputs]}")
    return set(new_by_site) == set(_by_call_site(dg.ir.nodes))


def _by_call_site(nodes) -> dict[tuple, Any]:
    """Identify nodes across two traces by where they come from, not by fx name (names
    shift when a size-dependent branch adds or drops ops)."""
    seen: dict[tuple, int] = {}
    out = {}
    for n in nodes:
        base = (n.meta.get("module", ""), n.meta.get("source"), n.op)
        k = seen.get(base, 0)
        seen[base] = k + 1
        out[base + (k,)] = n
    return out


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


def attribute_candidates(model: nn.Module, dg: DependencyGraph, plan: PrunePlan):
    """Attribute updates that would carry the plan into the forward's constants.

    A changed constant in a node run by module M likely comes from an int (or
    int-list) attribute of M with the same value. Returns (sure, unsure): an
    attribute is sure when every constant of M equal to it asks for one new value;
    unsure ones are grouped by (module class, attribute, demanded values) so
    identical layers decide together.
    """
    pruned = plan.masks()
    nodes = {n.name: n for n in dg.ir.nodes}
    by_node: dict[str, list] = {}
    for c in dg.carries:
        by_node.setdefault(c.node, []).append(c)
    demands: dict[tuple[str, int], set[int]] = {}
    list_updates: dict[tuple[str, str], dict[int, int]] = {}
    for node_name, carries in by_node.items():
        node = nodes[node_name]
        path = node.meta.get("module", "")
        m = _module(model, path)
        if m is None or isinstance(m, _KNOWN):
            continue
        for c in carries:
            new = _carried_value(dg, c, pruned)
            demands.setdefault((path, abs(c.value)), set()).add(abs(new))
            if len(c.path) == 2 and isinstance(node.args[c.path[0]], (list, tuple)):
                full = [x for x in node.args[c.path[0]]]
                for attr, val in vars(m).items():
                    if isinstance(val, (list, tuple)) and list(val) == full and new != c.value:
                        list_updates.setdefault((path, attr), {})[c.path[1]] = new
    sure: list[tuple[str, str, Any]] = []
    # (module class, attribute, demands) -> candidate new value -> updates: layers of one class
    # facing the same demands decide together (32 identical decoder layers: one decision)
    unsure: dict[tuple, dict[int, list[tuple[str, str, Any]]]] = {}
    for (path, attr), changes in sorted(list_updates.items()):
        val = getattr(_module(model, path), attr)
        new_val = [changes.get(i, x) for i, x in enumerate(val)]
        sure.append((path, attr, type(val)(new_val)))
    for (path, old), new_values in sorted(demands.items()):
        changed = new_values - {old}
        if not changed:
            continue
        m = _module(model, path)
        for attr, val in sorted(vars(m).items()):
            if attr.startswith("_") or type(val) is not int or val != old:
                continue
            if len(new_values) == 1:
                sure.append((path, attr, next(iter(changed))))
                continue
            # Constants equal to this attribute ask for several values: it spells at most
            # one of them. Each is an option; so is leaving it alone.
            family = unsure.setdefault((type(m).__qualname__, attr, old, tuple(sorted(new_values))), {})
            for new in sorted(changed):
                family.setdefault(new, []).append((path, attr, new))
    return sure, [list(opts.values()) for _, opts in sorted(unsure.items())]


def _module(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        return None
