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

import itertools
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RewriteError
from ..frontends.torch_export import lower_trace
from ..frontends.torch_record import trace_model
from ..graph import DependencyGraph
from ..planning.plan import PrunePlan, carried_value, keep_masks

_KNOWN = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm,
          nn.Embedding, nn.PReLU, getattr(nn, "RMSNorm", nn.LayerNorm), nn.RNNBase)


def apply_plan(model: nn.Module, dg: DependencyGraph, plan: PrunePlan,
               attr_updates: list[tuple[str, str, Any]] | None = None,
               updates: dict[str, torch.Tensor] | None = None) -> None:
    """Slice tensors and update attributes (no validation; see :func:`rewrite`).

    ``updates`` (parameter path -> new values of the original shape, from compensation)
    replace a tensor's values before it is sliced.
    """
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
        _set(owner, attr, sliced[key])
    _update_known_modules(model, dg, plan)
    for path, attr, value in attr_updates or []:
        setattr(model.get_submodule(path) if path else model, attr, value)


def rewrite(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None = None,
            check: bool | None = None, updates: dict[str, torch.Tensor] | None = None) -> None:
    """Apply ``plan`` to ``model`` in place, and prove the result before returning it.

    The forward's own size constants (view targets, split sizes, repeat counts)
    are reached through module attributes. Which attribute spells which constant
    is not recorded by the trace, so candidate updates are tried: each is applied,
    the model traced again and shape-checked against the plan, and undone unless it
    holds. A model no consistent set fits is left as it was, and RewriteError says why.

    ``check=None`` traces again only where the forward spells a size the plan changes
    outside torch's own layers (:func:`needs_proof`); elsewhere the rewritten forward is the
    traced graph with sliced weights, whose shapes the channel spaces already fix.
    """
    if not any(plan.pruned.values()):
        return  # removed blocks are graphprune/backends/torch_depth.py's
    sure, unsure = attribute_candidates(model, dg, plan, args, kwargs)
    if check is None:
        check = bool(sure or unsure) or needs_proof(model, dg, plan)
    if not check:
        apply_plan(model, dg, plan, sure, updates)
        return
    errors: list[str] = []
    fallback = None
    for choice in _choices(unsure):
        attrs = sure + choice
        saved = _snapshot(model)
        try:
            apply_plan(model, dg, plan, attrs, updates)
            err, same_structure = _check(model, dg, plan, args, kwargs)
        except BaseException:
            _restore(saved)
            raise
        if err is None and same_structure:
            return
        _restore(saved)
        if err is None and fallback is None:
            # Shapes fit but ops appeared or vanished: accept only if nothing keeps the
            # original structure (a size-dependent branch, e.g. repeat_kv with n_rep 1).
            fallback = attrs
        elif err is not None:
            errors.append(err)
    if fallback is not None:
        apply_plan(model, dg, plan, fallback, updates)
        return
    raise RewriteError(errors[0])


def needs_proof(model: nn.Module, dg: DependencyGraph, plan: PrunePlan) -> bool:
    """Whether the forward spells a size the plan changes in code graphprune does not know:
    a constant argument (view shape, split size, repeat count) of a node outside torch's
    convolution, linear, norm and embedding layers (whose sizes the rewrite sets itself)."""
    pruned = plan.masks()
    module_of = {n.name: n.meta.get("module", "") for n in dg.ir.nodes}
    for c in dg.carries:
        if carried_value(dg, c, pruned) == c.value:
            continue
        if not isinstance(submodule(model, module_of.get(c.node, "")), _KNOWN):
            return True
    return False


def _choices(unsure: list[list[list[tuple[str, str, Any]]]], limit: int = 64):
    """Combinations of the uncertain attributes' options (each: one candidate value, or
    leaving the attribute alone), likeliest first: every attribute updated."""
    options = [family + [[]] for family in unsure]
    for k, combo in enumerate(itertools.product(*options)):
        if k >= limit:
            return
        yield [u for choice in combo for u in choice]


def _snapshot(model: nn.Module) -> list[tuple[nn.Module, dict, dict, dict]]:
    """Every module's attributes, parameters and buffers (references: apply_plan replaces
    tensors and never writes into one), so a rewrite that does not hold can be undone."""
    return [(m, dict(vars(m)), dict(m._parameters), dict(m._buffers)) for m in model.modules()]


def _restore(saved: list[tuple[nn.Module, dict, dict, dict]]) -> None:
    for m, attrs, params, buffers in saved:
        vars(m).clear()
        vars(m).update(attrs)
        m._parameters.clear()
        m._parameters.update(params)
        m._buffers.clear()
        m._buffers.update(buffers)


def _check(model, dg, plan, args, kwargs) -> tuple[str | None, bool]:
    """Shape-check the rewritten model: (error text or None, same ops as the original)."""
    try:
        return None, check_shapes(model, dg, plan, args, kwargs)
    except RewriteError as exc:
        return str(exc), False


def check_shapes(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None) -> bool:
    """Trace the rewritten model again; every value must have the shape the plan says.

    Returns whether the new trace has exactly the original's call sites.
    """
    masks = keep_masks(dg, plan)
    try:
        new = retrace(model, dg, args, kwargs)
    except Exception as exc:
        raise RewriteError(
            "the pruned model no longer runs on the example inputs: its forward spells a pruned size the "
            "rewrite cannot reach (a literal, or a size computed from constructor arguments). Use -1 in "
            "view/reshape, read sizes from tensor shapes or from an attribute of the module doing the reshape, "
            f"or exclude these layers with ignore=[...]. Cause: {exc.__cause__ or exc}") from exc
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


def retrace(model: nn.Module, dg: DependencyGraph, args: tuple, kwargs: dict | None):
    """The IR of ``model`` traced the way ``dg`` was (recorded or exported): nodes are matched
    across the two traces by call site, which both must spell alike."""

    program = getattr(dg, "program", None)
    like = program.trace() if hasattr(program, "trace") else None
    return lower_trace(trace_model(model, args, kwargs, like=like))


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


def _set(owner: nn.Module, attr: str, value: Any) -> None:
    if attr in owner._parameters:
        owner._parameters[attr] = value
    elif attr in owner._buffers:
        owner._buffers[attr] = value
    else:
        setattr(owner, attr, value)


def _update_known_modules(model: nn.Module, dg: DependencyGraph, plan: PrunePlan) -> None:
    pruned = plan.masks()
    groups_of: dict[str, int] = {}  # module path -> new groups count (conv, group norm)
    node_module = {n.name: n.meta.get("module", "") for n in dg.ir.nodes}
    for c in dg.carries:
        if c.path in ((6,), (8,)) or (c.path == (1,) and dg.ir.nodes and _op(dg, c.node) == "aten.group_norm"):
            groups_of[node_module.get(c.node, "")] = carried_value(dg, c, pruned)
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
        elif isinstance(m, nn.RNNBase):
            m.input_size, m.hidden_size = m.weight_ih_l0.shape[1], m.weight_hh_l0.shape[1]
            m._init_flat_weights()  # forward reads the weights through this list, not the attributes
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
                shape[c.path[1]] = carried_value(dg, c, pruned)
                m.normalized_shape = tuple(shape)


def _op(dg: DependencyGraph, node_name: str) -> str:
    if not hasattr(dg, "_op_by_node"):
        dg._op_by_node = {n.name: n.op for n in dg.ir.nodes}
    return dg._op_by_node.get(node_name, "")


def attribute_candidates(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, args: tuple = (),
                         kwargs: dict | None = None):
    """Attribute updates that would carry the plan into the forward's constants.

    A changed constant in a node run by module M may come from an int (or
    int-list) attribute of M with the same value. Each such attribute is first
    probed (:func:`probe_attributes`): bumped on a meta copy and traced again.
    One that changes no shape and no constant is no size (a temperature) and is
    left alone; one that changes exactly some constants gets their new value;
    one whose bump breaks the trace spells sizes the probe cannot single out, and
    is decided by value: sure when every equal constant of M asks for one new
    value, otherwise an option per value (grouped by module class, attribute and
    demands, so identical layers decide together).
    """
    pruned = plan.masks()
    nodes = {n.name: n for n in dg.ir.nodes}
    by_node: dict[str, list] = {}
    for c in dg.carries:
        by_node.setdefault(c.node, []).append(c)
    demands: dict[tuple[str, int], set[int]] = {}
    wanted: dict[tuple, int] = {}  # (call site, path) -> new value, for probed provenance
    list_updates: dict[tuple[str, str], dict[int, int]] = {}
    sites = _sites_by_node(dg.ir.nodes)
    for node_name, carries in by_node.items():
        node = nodes[node_name]
        path = node.meta.get("module", "")
        m = submodule(model, path)
        if m is None or isinstance(m, _KNOWN):
            continue
        for c in carries:
            new = carried_value(dg, c, pruned)
            demands.setdefault((path, c.value), set()).add(new)
            wanted[(sites[node_name], c.path)] = new
            if len(c.path) == 2 and isinstance(node.args[c.path[0]], (list, tuple)):
                full = [x for x in node.args[c.path[0]]]
                for attr, val in vars(m).items():
                    if isinstance(val, (list, tuple)) and list(val) == full and new != c.value:
                        list_updates.setdefault((path, attr), {})[c.path[1]] = new
    sure: list[tuple[str, str, Any]] = []
    for (path, attr), changes in sorted(list_updates.items()):
        val = getattr(submodule(model, path), attr)
        sure.append((path, attr, type(val)([changes.get(i, x) for i, x in enumerate(val)])))
    candidates: dict[tuple[str, str], tuple[int, set[int]]] = {}
    for (path, old), new_values in sorted(demands.items()):
        if not new_values - {old}:
            continue
        m = submodule(model, path)
        for attr, val in sorted(vars(m).items()):
            if not attr.startswith("_") and type(val) is int and val == old:
                candidates[(path, attr)] = (old, new_values)
    probes = probe_attributes(model, dg, sorted(candidates), args, kwargs) if args else {}
    unsure: dict[tuple, dict[int, list[tuple[str, str, Any]]]] = {}
    for (path, attr), (old, new_values) in sorted(candidates.items()):
        found = probes.get((path, attr), "shape")
        if found == "none":
            continue  # bumping it changed nothing the graph's sizes depend on
        if isinstance(found, set):
            values = {wanted[k] for k in found if k in wanted}
            if len(values) == 1 and values != {old}:
                sure.append((path, attr, values.pop()))
            if len(values) <= 1:
                continue
            # the bump moved constants that want different values (a -1 dim resolving anew, as
            # in GQA's repeated heads): decide by value, as for an attribute the probe cannot read
        changed = new_values - {old}
        if len(new_values) == 1:
            sure.append((path, attr, next(iter(changed))))
            continue
        m = submodule(model, path)
        family = unsure.setdefault((type(m).__qualname__, attr, old, tuple(sorted(new_values))), {})
        for new in sorted(changed):
            family.setdefault(new, []).append((path, attr, new))
    return sure, [list(opts.values()) for _, opts in sorted(unsure.items())]


def probe_attributes(model: nn.Module, dg: DependencyGraph, candidates: list[tuple[str, str]], args: tuple,
                     kwargs: dict | None) -> dict[tuple[str, str], Any]:
    """What each candidate attribute spells, found by bumping it (+1) and tracing again.

    Attributes of one module class are bumped together (identical layers behave
    alike, and one trace serves them all). Returns per (module path, attribute):
    "shape" when the bumped model no longer traces, "none" when no shape and no
    carried constant changed, or the set of (call site, arg path) whose constant changed.
    """
    families: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for path, attr in candidates:
        families.setdefault((type(submodule(model, path)).__qualname__, attr), []).append((path, attr))
    sites, nodes = _sites_by_node(dg.ir.nodes), {n.name: n for n in dg.ir.nodes}
    base = {(sites[c.node], c.path): _arg_at(nodes[c.node], c.path) for c in dg.carries}
    base_shapes = {site: [dg.ir.values[o].shape for o in n.outputs] for site, n in _by_call_site(dg.ir.nodes).items()}
    out: dict[tuple[str, str], Any] = {}
    for members in families.values():
        new = None
        for delta in (1, -1):  # an offset may have room on one side only
            old = [getattr(submodule(model, path), attr) for path, attr in members]
            try:
                for path, attr in members:
                    m = submodule(model, path)
                    setattr(m, attr, getattr(m, attr) + delta)
                new = retrace(model, dg, args, kwargs)
                break
            except Exception:  # the bump broke the trace: try the other side
                continue
            finally:  # the trace reads the model and never writes it: only the attributes change
                for (path, attr), value in zip(members, old):
                    setattr(submodule(model, path), attr, value)
        if new is None:  # both bumps break the trace: it spells sizes
            for key in members:
                out[key] = "shape"
            continue
        by_site = _by_call_site(new.nodes)
        # ops that appear or vanish (an early return taken) count as moved shapes
        shapes_moved = set(by_site) != set(base_shapes) or any(
            [new.values[o].shape for o in by_site[site].outputs] != shapes for site, shapes in base_shapes.items())
        moved: dict[str, set] = {}
        for (site, path), value in base.items():
            node = by_site.get(site)
            if node is not None and _arg_at(node, path) != value:
                moved.setdefault(site[0], set()).add((site, path))
        for path, attr in members:
            mine = moved.get(path, set())
            out[(path, attr)] = mine if mine else ("shape" if shapes_moved else "none")
    return out


def _sites_by_node(nodes) -> dict[str, tuple]:
    return {n.name: site for site, n in _by_call_site(nodes).items()}


def _arg_at(node, path: tuple) -> Any:
    try:
        v = node.args[path[0]]
        return v[path[1]] if len(path) > 1 else v
    except (IndexError, TypeError, KeyError):
        return None


def submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        return None
