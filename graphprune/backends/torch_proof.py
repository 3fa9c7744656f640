"""The proof of a rewrite, and the module attributes that spell the forward's sizes.

A rewritten model is traced again the way the original was, and every value's shape is
checked against the plan (:func:`check_shapes`). A forward's own size constants (view
targets, split sizes, repeat counts) come from module attributes, but the trace does not
record which attribute spelled which constant: :func:`attribute_candidates` finds the
updates that would carry the plan into them, probing uncertain ones by bumping them on the
model and tracing again (:func:`probe_attributes`). backends/torch_module.py applies the
plan and tries the candidates against this proof.
"""
from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..errors import RewriteError
from ..frontends.torch_export import lower_trace
from ..frontends.torch_trace import trace_model
from ..graph import DependencyGraph
from ..planning.plan import PrunePlan, carried_value, keep_masks
from ..reasons import INDEXED
from ..util.torch_compat import ConvNd, NormBase
from .torch_attrs import get_attribute, int_attributes, set_attribute

# torch's layers whose size attributes the rewrite sets itself (backends/torch_module.py)
KNOWN_LAYERS = (ConvNd, nn.Linear, NormBase, nn.LayerNorm, nn.GroupNorm,
                nn.Embedding, nn.PReLU, getattr(nn, "RMSNorm", nn.LayerNorm), nn.RNNBase)


def check_shapes(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None) -> bool:
    """Trace the rewritten model again; every value must have the shape the plan says.

    Returns whether the new trace has exactly the original's call sites.
    """
    masks = keep_masks(dg, plan)
    try:
        new = retrace(model, dg, args, kwargs)
    except Exception as exc:
        where, modules, at = _unreached(model, dg, plan)
        # the groups those nodes spell, and the same code's in every layer: a default call keeps them whole
        # and plans again (PyG's TransformerConv views at self.heads, self.out_channels in each layer)
        groups, site = groups_spelled_at(dg, plan, at, alike=True) if at else ([], "")
        err = RewriteError(
            "the pruned model no longer runs on the example inputs: its forward spells a pruned size the "
            f"rewrite cannot reach (a literal, or a size computed from constructor arguments or the config){where}. "
            "Use -1 in view/reshape, read sizes from tensor shapes or from an attribute of the module doing the "
            f"reshape, or exclude these layers with ignore=[...]. Cause: {exc.__cause__ or exc}",
            modules=modules, groups=groups, site=site)
        err.spelled = at  # where the traceback names a module, torch_module._located keeps its nodes only
        raise err from exc
    new_by_site, wrong, bad = by_call_site(new.nodes), [], set()
    by_data = _data_positions(dg)
    for site, node in by_call_site(dg.ir.nodes).items():
        other = new_by_site.get(site)
        if other is None or len(other.outputs) != len(node.outputs):
            continue  # a code path that only runs at some sizes (an early return): nothing to compare
        first = not bad.intersection(node.inputs)  # wrong from right inputs: a cause, not a consequence
        for out, new_out in zip(node.outputs, other.outputs):
            v = dg.ir.values[out]
            want = tuple(int(masks[(out, d)].sum()) if (out, d) in masks else s for d, s in enumerate(v.shape))
            got = new.values[new_out].shape
            # a dim of positions the data choose (where(mask), x[mask]): the pruned model's values choose others
            same = len(got) == len(want) and all(g == w or (out, d) in by_data for d, (g, w) in enumerate(zip(got, want)))
            if not same:
                wrong.append((node, tuple(got), want, first))
                bad.add(out)
    if wrong:  # every such node at once: UNETR's twelve attention blocks are one round of planning again
        raise _mismatch(dg, plan, wrong)
    outs = [new.values[o].shape for o in new.outputs]
    if outs != [dg.ir.values[o].shape for o in dg.ir.outputs]:
        raise RewriteError(f"after pruning, the model's outputs have shapes {outs}, not "
                           f"{[dg.ir.values[o].shape for o in dg.ir.outputs]}")
    return set(new_by_site) == set(by_call_site(dg.ir.nodes))


def _data_positions(dg: DependencyGraph) -> set[tuple[str, int]]:
    """(value, dim) slots frozen as positions indexed or chosen by data (graphprune/rules/embedding.py)."""
    atoms = {a for a, reasons in dg.solver.frozen_reasons().items() if any(r.kind == INDEXED for r in reasons)}
    out = set()
    for name, v in dg.ir.values.items():
        if v.kind == "act":
            out.update((name, d) for d in range(len(v.shape))
                       if dg.solver.has((name, d)) and atoms & dg.solver.slot_atoms((name, d))[1])
    return out


def groups_spelled_at(dg: DependencyGraph, plan: PrunePlan, at: list, alike: bool = False) -> tuple[list[int], str]:
    """The pruned groups whose sizes the IR nodes ``at`` carry as constants the plan changes, and the
    first such node's place; ([], "") where none does. With ``alike``, also every prunable group that
    nodes traced from the same source lines carry: the same code in the other layers fails alike when a
    next plan cuts there (UNETR's twelve blocks would take twelve rounds of planning again, one each)."""
    nodes = {n.name: n for n in at}
    pruned = plan.masks()
    groups: set[int] = set()
    first, lines = "", set()
    cut = lambda c: {a for a in dg.solver.slot_atoms(c.key)[1] if a in pruned and pruned[a].any()}  # noqa: E731
    for c in dg.carries:
        if c.node in nodes and carried_value(dg, c, pruned) != c.value:
            groups |= cut(c)
            first = first or nodes[c.node].where()
            lines.add(_alike(dg, nodes[c.node]))
    if alike and not groups:
        # a node at its old size, wrong because one attribute serves every call of a shared module (Mask2Former's
        # mask predictor repeats its mask num_heads times for each decoder layer): the calls that asked for a
        # new size name the groups
        lines = {_alike(dg, n) for n in at}
        same = {n.name: n for n in dg.ir.nodes if n.meta.source and _alike(dg, n) in lines}
        for c in dg.carries:
            if c.node in same and carried_value(dg, c, pruned) != c.value:
                groups |= cut(c)
                first = first or same[c.node].where()
    if alike and groups:
        same = {n.name for n in dg.ir.nodes if n.meta.source and _alike(dg, n) in lines}
        open_ = {g.id for g in dg.groups if g.prunable}  # an atom need not be a group (a frozen one has none)
        groups |= {a for c in dg.carries if c.node in same for a in dg.solver.slot_atoms(c.key)[1] if a in open_}
    return sorted(groups), first


def group_owners(dg: DependencyGraph, groups: list[int]) -> list[str]:
    """The layers whose parameters the groups cut, in order, once each: what ``ignore=`` would keep whole."""
    return [o for o in dict.fromkeys(m.name.rpartition(".")[0] for g in groups for m in dg.group(g).members) if o]


def _alike(dg: DependencyGraph, node) -> tuple[str, str, str]:
    """What makes two nodes the same code in another layer: the source line (a library's, for einops: every
    ``Rearrange`` shares it), the op, and the module path with its layer indices wildcarded."""
    return node.meta.source, dg.op_of(node.name), re.sub(r"(^|\.)\d+(?=\.|$)", r"\1#", node.meta.module or "")


def _mismatch(dg: DependencyGraph, plan: PrunePlan, wrong: list[tuple]) -> RewriteError:
    """The error for nodes whose pruned outputs have other shapes than the plan's ((node, got, want) each;
    the first is quoted): it names the pruned groups whose sizes those nodes spell (MONAI's attention splits
    heads with einops at a head count read from the module, so the heads come back at the old count), which
    a default call keeps whole and plans again (planning/unreached.py), and the layers to ``ignore=``."""
    node, got, want, _ = wrong[0]
    causes = [w[0] for w in wrong if w[3]] or [w[0] for w in wrong]
    groups, _ = groups_spelled_at(dg, plan, causes, alike=True)
    owners = group_owners(dg, groups)
    etc = f" and {len(owners) - 4} more" if len(owners) > 4 else ""
    whose = f"; it spells the pruned channels of {', '.join(owners[:4])}{etc}: ignore= with them keeps them whole " \
        f"({owners[:4]}{etc})" if owners else ": compute it from tensor shapes, use -1, or exclude these layers with ignore=[...]"
    more = f" ({len(wrong) - 1} more node(s) alike)" if len(wrong) > 1 else ""
    return RewriteError(f"after pruning, {node.where()} produces shape {got} but the plan needs {want}{more}. The forward "
                        f"spells a size the rewrite cannot reach (a literal, or an attribute of another module){whose}.",
                        groups=groups, site=node.where())  # no modules: hf's retry would keep every Linear whole


def _unreached(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, limit: int = 2) -> tuple[str, list[str], list]:
    """Where the forward spells sizes the plan changes outside torch's own layers (Phi-3 splits its
    fused projection at config.num_attention_heads * head_dim): the sizes, their nodes, the modules to
    ignore, and the nodes."""
    pruned, nodes = plan.masks(), {n.name: n for n in dg.ir.nodes}
    found = [(c, carried_value(dg, c, pruned)) for c in dg.carries]
    found = [(c, new) for c, new in found if new != c.value and c.node in nodes
             and not isinstance(submodule(model, dg.module_of(c.node)), KNOWN_LAYERS)]
    if not found:
        return "", [], []
    where = "; ".join(f"{c.value} -> {new} at {nodes[c.node].where()}" for c, new in found[:limit])
    modules = sorted({dg.module_of(c.node) for c, _ in found} - {""})
    return (f": {where}" + (f" ({len(found) - limit} more)" if len(found) > limit else "")
            + (f"; ignore={modules[:4]} keeps those layers whole" if modules else "")), modules, \
        [nodes[c.node] for c, _ in found]


def retrace(model: nn.Module, dg: DependencyGraph, args: tuple, kwargs: dict | None, real: bool = True):
    """The IR of ``model`` traced the way ``dg`` was (recorded or exported): nodes are matched
    across the two traces by call site, which both must spell alike. ``real=False``: a recording on
    meta stand-ins that fails is not tried again on the real weights (a probe expects failures)."""

    program = getattr(dg, "program", None)
    like = program.trace() if hasattr(program, "trace") else None
    return lower_trace(trace_model(model, args, kwargs, like=like, real=real))


def by_call_site(nodes) -> dict[tuple, Any]:
    """Identify nodes across two traces by where they come from, not by fx name (names
    shift when a size-dependent branch adds or drops ops)."""
    seen: dict[tuple, int] = {}
    out = {}
    for n in nodes:
        base = (n.meta.module, n.meta.source, n.op)
        k = seen.get(base, 0)
        seen[base] = k + 1
        out[base + (k,)] = n
    return out


def attribute_candidates(model: nn.Module, dg: DependencyGraph, plan: PrunePlan, args: tuple = (),
                         kwargs: dict | None = None):
    """Attribute updates that would carry the plan into the forward's constants.

    A changed constant in a node run by module M may come from an int (or
    int-list) attribute of M with the same value. Each such attribute is first
    probed (:func:`probe_attributes`): bumped on the model, traced again, and restored.
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
        path = node.meta.module
        m = submodule(model, path)
        if m is None or isinstance(m, KNOWN_LAYERS):
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
        for attr, val in int_attributes(submodule(model, path)):
            if val == old:
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
    base = {(sites[c.node], c.path): arg_at(nodes[c.node], c.path) for c in dg.carries}
    base_shapes = {site: [dg.ir.values[o].shape for o in n.outputs] for site, n in by_call_site(dg.ir.nodes).items()}
    out: dict[tuple[str, str], Any] = {}
    for members in families.values():
        new = None
        for delta in (1, -1):  # an offset may have room on one side only
            old = [get_attribute(submodule(model, path), attr) for path, attr in members]
            try:
                for (path, attr), value in zip(members, old):
                    set_attribute(submodule(model, path), attr, value + delta)
                new = retrace(model, dg, args, kwargs, real=False)
                break
            except Exception:  # the bump broke the trace: try the other side
                continue
            finally:  # the trace reads the model and never writes it: only the attributes change
                for (path, attr), value in zip(members, old):
                    set_attribute(submodule(model, path), attr, value)
        if new is None:  # both bumps break the trace: it spells sizes
            for key in members:
                out[key] = "shape"
            continue
        by_site = by_call_site(new.nodes)
        # ops that appear or vanish (an early return taken) count as moved shapes
        shapes_moved = set(by_site) != set(base_shapes) or any(
            [new.values[o].shape for o in by_site[site].outputs] != shapes for site, shapes in base_shapes.items())
        moved: dict[str, set] = {}
        for (site, path), value in base.items():
            node = by_site.get(site)
            if node is not None and arg_at(node, path) != value:
                moved.setdefault(site[0], set()).add((site, path))
        for path, attr in members:
            mine = moved.get(path, set())
            out[(path, attr)] = mine if mine else ("shape" if shapes_moved else "none")
    return out


def _sites_by_node(nodes) -> dict[str, tuple]:
    return {n.name: site for site, n in by_call_site(nodes).items()}


def arg_at(node, path: tuple) -> Any:
    """The argument of ``node`` at ``path``: (arg index,), (arg index, list index) or (keyword,); None where absent."""
    try:
        v = node.kwargs.get(path[0]) if isinstance(path[0], str) else node.args[path[0]]
        return v[path[1]] if len(path) > 1 else v
    except (IndexError, TypeError, KeyError):
        return None


def submodule(model: nn.Module, path: str) -> nn.Module | None:
    try:
        return model.get_submodule(path) if path else model
    except AttributeError:
        return None
