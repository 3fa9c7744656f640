"""Apply a PrunePlan to an nn.Module in place.

Parameters, buffers and lifted constants are sliced along every dim a pruned
group cuts; module attributes are updated (conv channels and groups, linear
features, norm shapes, embedding dims, and plain int attributes a forward uses to
spell sizes); tied tensors stay tied. The rewritten model is traced again and
every value's shape is checked against the plan (backends/torch_proof.py), so a size the forward
hard-codes is reported with its node and source line instead of returning a
broken model.
"""
from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RewriteError
from ..graph import DependencyGraph
from ..planning.plan import PrunePlan, carried_value, keep_masks
from ..util.gc_pause import reclaim
from ..util.torch_compat import (
    ConvNd,
    NormBase,
    refresh_rnn_weights,
    set_tensor,
)
from .torch_attrs import set_attribute
from .torch_guards import (
    Boundaries,
    failing_module,
    guard_updates,
    readable_changed,
    reads_guard,
    same_scalars,
    unreached_groups,
)
from .torch_holders import hidden_modules, holds_model_tensors, rebind_hidden, unreached_holders
from .torch_mha import slim_attention
from .torch_proof import (
    KNOWN_LAYERS,
    attribute_candidates,
    check_shapes,
    group_owners,
    groups_spelled_at,
    retrace,
    submodule,
)
from .torch_snapshot import restore, snapshot
from .torch_values import moved_value


def apply_plan(model: nn.Module, dg: DependencyGraph, plan: PrunePlan,
               attr_updates: list[tuple[str, str, Any]] | None = None,
               updates: dict[str, torch.Tensor] | None = None) -> None:
    """Slice tensors and update attributes (no validation; see :func:`rewrite`).

    ``updates`` (parameter path -> new values of the original shape, from compensation)
    replace a tensor's values before it is sliced.
    """
    reclaim()  # each proof tried rewrites the model again: what the last one dropped holds cycles
    hidden = hidden_modules(model)  # layers outside the registry (N-BEATS' plain list): one walk for both uses
    if missed := unreached_holders(model, hidden, dg.program.trace().hidden if dg.program is not None else ()):
        raise RewriteError(f"the forward calls layers the model does not register, holding {missed[0]}"
                           f"{f' and {len(missed) - 1} more' if len(missed) > 1 else ''}, where the rewrite cannot "
                           "reach them: keep them in an nn.ModuleList / nn.ModuleDict (or a plain list, tuple or dict)")
    masks = keep_masks(dg, plan)
    updates = updates or {}
    jobs: dict[int, tuple[Any, list]] = {}  # id(old tensor) -> (source, dims): aliases stay one tensor
    sites: list[tuple[nn.Module, str, int]] = []
    done: set[str] = set()  # a tied tensor may appear as several graph values: slice it once
    for v in dg.ir.params():
        dims = [(d, masks[(v.name, d)]) for d in range(v.rank) if (v.name, d) in masks]
        paths = dg.ir.aliases.get(v.source, [v.source])
        if (not dims and v.source not in updates) or done.intersection(paths):
            continue
        done.update(paths)
        for path in paths:
            owner, attr = _owner(model, path)
            old = getattr(owner, attr)
            if id(old) not in jobs:
                src = old
                if v.source in updates:
                    new = updates[v.source].to(device=old.device, dtype=old.dtype)
                    src = nn.Parameter(new, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else new
                jobs[id(old)] = (src, dims)
            sites.append((owner, attr, id(old)))
    sliced = dict(zip(jobs, _slice_all(list(jobs.values()))))
    for owner, attr, key in sites:
        set_tensor(owner, attr, sliced[key])
    rebind_hidden(hidden, sliced)  # layers in a plain list, their weights registered elsewhere (N-BEATS)
    _update_known_modules(model, dg, plan)
    for path, attr, value in attr_updates or []:
        set_attribute(model.get_submodule(path) if path else model, attr, value)


def rewrite(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None = None,
            check: bool | None = None, updates: dict[str, torch.Tensor] | None = None, values: bool = False) -> None:
    """Apply ``plan`` to ``model`` in place, and prove the result before returning it.

    The forward's own size constants (view targets, split sizes, repeat counts)
    are reached through module attributes. Which attribute spells which constant
    is not recorded by the trace, so candidate updates are tried: each is applied,
    the model traced again and shape-checked against the plan, and undone unless it
    holds. A model no consistent set fits is left as it was, and RewriteError says why.
    Where the proof fails inside a module that checks its input against its own attributes
    (``assert x.shape[1] == self.channels``), those attributes are tried at the pruned sizes.

    ``check=None`` traces again only where the forward spells a size the plan changes
    outside torch's own layers (:func:`needs_proof`); elsewhere the rewritten forward is the
    traced graph with sliced weights, whose shapes the channel spaces already fix. ``values``:
    trace again anyway, and refuse a forward that computes another number from a pruned size
    (backends/torch_values.py): the model handed to the user.
    """
    if not any(plan.pruned.values()):
        return  # removed blocks are graphprune/backends/torch_depth.py's
    undo = slim_attention(model, dg, plan)  # torch's MultiheadAttention ties q/k/v to its input's width
    try:
        saved = snapshot(model) if values else None
        _rewrite(model, dg, plan, args, kwargs, check, updates)
        moved = moved_value(model, dg, plan, args, kwargs) if values else None
        if moved is not None:
            restore(saved)
            raise moved
    except BaseException:
        undo()  # a model the plan does not fit is left as it was, its attention modules' class too
        raise


def _rewrite(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None,
             check: bool | None, updates: dict[str, torch.Tensor] | None) -> None:
    sure, unsure = attribute_candidates(model, dg, plan, args, kwargs)
    if check is None:
        check = (bool(sure or unsure) or needs_proof(model, dg, plan) or reads_guard(model, dg, plan)
                 or holds_model_tensors(model))
    if not check:
        apply_plan(model, dg, plan, sure, updates)
        return
    saved = snapshot(model)
    guards = _prove(model, dg, plan, args, kwargs, sure, unsure, updates)
    moved = same_scalars(dg, retrace(model, dg, args, kwargs).nodes, {p for p, _, _ in guards}) if guards else None
    if moved:
        restore(saved)
        raise RewriteError(f"after updating {_named(guards)} to the pruned sizes, the forward computes another "
                           f"number ({moved}): the attribute is not only a size check. Exclude the module with "
                           "ignore=[...].", modules=sorted({p for p, _, _ in guards}))


def _prove(model, dg, plan, args, kwargs, sure: list, unsure: list, updates) -> list[tuple[str, str, Any]]:
    """Rewrite with the candidates until the proof holds; where it fails inside a module that checks its
    input against its own attributes (torch_guards.py), again with those at the pruned sizes. Returns the
    guard attributes the rewrite holds with (torch_guards' updates, their options as chosen)."""
    guards: list[tuple[str, str, Any]] = []
    options: list = []
    tried: set[type] = set()
    while True:
        errors, chosen = _try(model, dg, plan, args, kwargs, sure + guards, unsure + options, updates)
        if not errors:
            return [u for u in chosen if u in guards or any(u in o for f in options for o in f)]
        failed = failing_module(model, errors[0])[0]
        cls = type(model.get_submodule(failed)) if failed is not None else None
        more, choices = guard_updates(model, dg, plan, failed) if cls and cls not in tried else ([], [])
        if not more and not choices:
            raise _located(errors[0], model, dg, plan)
        tried.add(cls)
        guards += more
        options += choices


def _try(model, dg, plan, args, kwargs, base: list, unsure: list, updates) -> tuple[list[RewriteError], list]:
    """Apply the plan with ``base`` and each combination of the uncertain attributes until one
    passes the proof: ([], the updates applied) when one did (the model is left rewritten), else
    (every choice's error, [])."""
    errors: list[RewriteError] = []
    fallback = None
    for choice in _choices(unsure):
        attrs = base + choice
        saved = snapshot(model)
        try:
            apply_plan(model, dg, plan, attrs, updates)
            err, same_structure = _check(model, dg, plan, args, kwargs)
        except BaseException:
            restore(saved)
            raise
        if err is None and same_structure:
            return [], attrs
        restore(saved)
        if err is None and fallback is None:
            # Shapes fit but ops appeared or vanished: accept only if nothing keeps the
            # original structure (a size-dependent branch, e.g. repeat_kv with n_rep 1).
            fallback = attrs
        elif err is not None:
            errors.append(err)
    if fallback is not None:
        apply_plan(model, dg, plan, fallback, updates)
        return [], fallback
    return errors, []


def _named(updates: list[tuple[str, str, Any]], limit: int = 3) -> str:
    names = [f"{p}.{a} = {v}" if p else f"{a} = {v}" for p, a, v in updates]
    return ", ".join(names[:limit]) + (f" ({len(names) - limit} more)" if len(names) > limit else "")


def _located(err: RewriteError, model: nn.Module, dg: DependencyGraph, plan: PrunePlan) -> RewriteError:
    """``err`` with where the pruned forward raised, when the traceback says (an empty AssertionError says
    nothing by itself), and the pruned groups whose sizes that line spells (a default call freezes them)."""
    failed, where, loc = failing_module(model, err)
    if not where:
        return err
    groups, site = unreached_groups(dg, plan, loc)
    inside = f" in module '{failed}'" if failed else ""
    owners = group_owners(dg, groups)
    if not groups:  # the shape check's own groups, which name no modules (hf would keep their layers whole):
        # those the failing module's own code spells where it has any (a PyG aggregation elsewhere sizes its
        # buffer from its input, and follows any plan), else every one
        near = [n for n in getattr(err, "spelled", []) if dg.module_of(n.name) == (failed or "")]
        groups, site = groups_spelled_at(dg, plan, near, alike=True) if near else (list(err.groups), err.site)
    whose = (f"; the sizes there are the pruned channels of {', '.join(owners[:4])}"
             f"{' ...' if len(owners) > 4 else ''}: ignore={owners[:4]} keeps them whole" if owners else "")
    out = RewriteError(f"{err} (raised at {where}{inside}){whose}", reasons=err.reasons,
                       modules=list(dict.fromkeys(err.modules + ([failed] if failed else []) + owners)),
                       groups=groups, site=site)
    out.__cause__ = err.__cause__
    return out


def needs_proof(model: nn.Module, dg: DependencyGraph, plan: PrunePlan) -> bool:
    """Whether the forward spells a size the plan changes in code graphprune does not know:
    a constant argument (view shape, split size, repeat count) of a node outside torch's
    convolution, linear, norm and embedding layers (whose sizes the rewrite sets itself)."""
    pruned = plan.masks()
    unchanged: dict[str, set[int]] = {}  # node -> literals the plan leaves, which may be another tensor's width
    for c in dg.carries:
        if isinstance(submodule(model, dg.module_of(c.node)), KNOWN_LAYERS):
            continue
        if carried_value(dg, c, pruned) != c.value:
            return True
        unchanged.setdefault(c.node, set()).add(c.value)
    # ``b, n, d = x.shape; o.reshape(b, n, d)``: the trace's 64 is x's width, which the plan may change
    if not unchanged:
        return False
    masks = keep_masks(dg, plan)
    bounds = Boundaries(dg, masks)
    nodes = {n.name: n for n in dg.ir.nodes}
    return any(readable_changed(dg, masks, nodes[name], sizes, bounds) for name, sizes in unchanged.items())


def _choices(unsure: list[list[list[tuple[str, str, Any]]]], limit: int = 64):
    """Combinations of the uncertain attributes' options (each: one candidate value, or
    leaving the attribute alone), likeliest first: every attribute updated."""
    options = [family + [[]] for family in unsure]
    for k, combo in enumerate(itertools.product(*options)):
        if k >= limit:
            return
        yield [u for choice in combo for u in choice]


def _check(model, dg, plan, args, kwargs) -> tuple[RewriteError | None, bool]:
    """Shape-check the rewritten model: (the error or None, same ops as the original)."""
    try:
        return None, check_shapes(model, dg, plan, args, kwargs)
    except RewriteError as exc:
        return exc, False


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


def _slice_all(jobs: list[tuple[torch.Tensor, list]]) -> list[torch.Tensor]:
    """Slice every tensor, the large ones on two threads of one intra-op thread each: a
    gather along an inner dim runs on one core, and copying is most of a prune's time on
    a transformer (BERT-base: 0.19 s serially)."""
    big = [i for i, (t, _) in enumerate(jobs) if t.numel() >= 1 << 16]
    out: list[Any] = [None] * len(jobs)
    if len(big) > 1 and torch.get_num_threads() > 1:
        from concurrent.futures import ThreadPoolExecutor

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with ThreadPoolExecutor(min(threads, 4)) as pool:
                for i, t in zip(big, pool.map(lambda i: _slice(*jobs[i]), big)):
                    out[i] = t
        finally:
            torch.set_num_threads(threads)
    for i, job in enumerate(jobs):
        if out[i] is None:
            out[i] = _slice(*job)
    return out


def _update_known_modules(model: nn.Module, dg: DependencyGraph, plan: PrunePlan) -> None:
    pruned = plan.masks()
    groups_of: dict[str, int] = {}  # module path -> new groups count (conv, group norm)
    for c in dg.carries:
        if c.path in ((6,), (8,)) or (c.path == (1,) and dg.ir.nodes and dg.op_of(c.node) == "aten.group_norm"):
            groups_of[dg.module_of(c.node)] = carried_value(dg, c, pruned)
    for path, m in model.named_modules():
        if isinstance(m, ConvNd):
            m.groups = groups_of.get(path, m.groups)
            w = m.weight
            if m.transposed:
                m.in_channels, m.out_channels = w.shape[0], w.shape[1] * m.groups
            else:
                m.in_channels, m.out_channels = w.shape[1] * m.groups, w.shape[0]
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = m.weight.shape
        elif isinstance(m, NormBase):
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
        elif isinstance(m, nn.RNNBase):
            m.input_size, m.hidden_size = m.weight_ih_l0.shape[1], m.weight_hh_l0.shape[1]
            refresh_rnn_weights(m)  # forward reads the weights through a list, not the attributes
        elif hasattr(m, "normalized_shape") and getattr(m, "weight", None) is not None and isinstance(
                m, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))):
            # the weight's trailing dims: a subclass may keep a (heads, head_dim) weight and normalise over
            # head_dim alone (transformers' ChameleonLayerNorm), which the weight's whole shape would widen
            m.normalized_shape = tuple(m.weight.shape[max(0, m.weight.dim() - len(m.normalized_shape)):])
    # Norms without affine weights: read the new normalised shape from the carried constants.
    for c in dg.carries:
        path = dg.module_of(c.node)
        if dg.op_of(c.node) in ("aten.layer_norm", "aten.rms_norm") and path:
            try:
                m = model.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(m, (nn.LayerNorm, getattr(nn, "RMSNorm", nn.LayerNorm))) and getattr(m, "weight", None) is None:
                shape = list(m.normalized_shape)
                shape[c.path[1]] = carried_value(dg, c, pruned)
                m.normalized_shape = tuple(shape)
    _bare_norms(model, dg, plan)


def _bare_norms(model: nn.Module, dg: DependencyGraph, plan: PrunePlan) -> None:
    """A BatchNorm/InstanceNorm with neither affine weights nor running statistics (MONAI's default
    ``InstanceNorm3d``) has no tensor to read its width from: its ``num_features`` is the channel
    count the plan leaves on its input, else torch warns on every forward of the pruned model."""
    masks = None
    for n in dg.ir.nodes:
        if dg.op_of(n.name) not in ("aten.instance_norm", "aten.batch_norm") or not n.meta.module or not n.inputs:
            continue
        m = submodule(model, n.meta.module)
        if not isinstance(m, NormBase) or m.weight is not None or m.running_mean is not None:
            continue
        masks = keep_masks(dg, plan) if masks is None else masks
        keep, size = masks.get((n.inputs[0], 1)), dg.ir.values[n.inputs[0]].shape[1]
        m.num_features = int(keep.sum()) if keep is not None else size if isinstance(size, int) else m.num_features


def add_biases(model: nn.Module, dg, plan, comp) -> int:
    """Give layers without a bias the one compensation computed (sliced to the kept outputs);
    returns the number of parameters added."""
    added = 0
    masks = keep_masks(dg, plan)
    nodes = {n.name: n for n in dg.ir.nodes}
    for node, (out_value, b) in sorted(comp.new_biases.items()):
        path = nodes[node].meta.module
        mod = model.get_submodule(path) if path else model
        dim = dg.ir.values[out_value].rank - 1 if isinstance(mod, nn.Linear) else 1
        keep = masks.get((out_value, dim))
        if keep is not None:
            b = b[torch.as_tensor(np.flatnonzero(keep))]
        mod.bias = nn.Parameter(b.detach().clone().to(mod.weight.device, mod.weight.dtype),
                                requires_grad=mod.weight.requires_grad)
        comp.bias_modules.append(path)
        added += b.numel()
    return added
