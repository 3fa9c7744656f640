"""After a rewrite: tell transformers the new sizes.

Sizes a forward uses to shape tensors are already updated by the rewrite (it
probes them). What is left are sizes transformers reads but the traced forward
never used (``num_attention_heads`` when a view spells -1, ``intermediate_size``)
and the config, which ``from_pretrained`` rebuilds the model from. Each attribute
is updated only where its current value is the old size it names, and the config
only where every layer agrees. Whether the config now rebuilds exactly the pruned
model is checked, not assumed: the model class is instantiated from it on the
``meta`` device and every parameter shape compared.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..backends.torch_module import submodule
from ..errors import RewriteError
from ..graph import DependencyGraph
from ..kinds import attention_site_axes, head_axis
from ..planning.plan import PrunePlan

# Attribute names transformers modules and configs use, by what they count.
HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "attention_heads")
KV_HEADS = ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "multi_query_group_num")
QUERIES_PER_KV = ("num_key_value_groups", "n_rep", "num_queries_per_kv")
HEAD_DIM = ("head_dim", "attention_head_size", "head_size", "d_kv", "key_value_proj_dim", "kv_channels")
ALL_HEAD = ("all_head_size", "inner_dim", "inner_size", "projection_size")
FFN = ("intermediate_size", "ffn_dim", "n_inner", "d_ff", "hidden_dim", "encoder_ffn_dim", "ffn_hidden_size")
HIDDEN = ("hidden_size", "d_model", "n_embd", "dim", "embed_dim", "model_dim")


@dataclass
class ConfigSync:
    """What :func:`sync_config` changed, and whether ``from_pretrained`` can rebuild the model."""

    attributes: list[tuple[str, str, int, int]] = field(default_factory=list)  # (module, attr, old, new)
    config: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field -> (old, new)
    loadable: bool = False
    reason: str = ""
    taken_back: str = ""  # why the attributes were set back (the model failed with them), else ""

    def __str__(self) -> str:
        changes = ", ".join(f"{k} {a}->{b}" for k, (a, b) in self.config.items()) or "no config change"
        if self.loadable:
            return (f"config: {changes}; {len(self.attributes)} module attribute(s) updated; "
                    "save_pretrained/from_pretrained round-trip: yes")
        return (f"config left as it was ({self.reason}); {len(self.attributes)} module attribute(s) updated; "
                "reload with graphprune.hf.save_pruned / load_pruned")


def _kept(dg: DependencyGraph, value: str, dim: int, pruned: dict[int, np.ndarray]) -> tuple[int, int]:
    v = dg.ir.values[value]
    term = dg.solver.layout((value, dim % v.rank))
    return int(v.shape[dim]), int(dg.solver.keep_mask(term, pruned).sum())


def _atom_kept(dg: DependencyGraph, atoms: list[int], pruned: dict[int, np.ndarray]) -> tuple[int, int]:
    old = int(np.prod([dg.solver.atom_size(a) for a in atoms])) if atoms else 1
    new = int(np.prod([dg.solver.atom_size(a) - int(pruned[a].sum()) if a in pruned else dg.solver.atom_size(a)
                       for a in atoms])) if atoms else 1
    return old, new


def _set_attrs(mod: torch.nn.Module, path: str, names: tuple[str, ...], old: int, new: int, out: ConfigSync) -> None:
    if old == new:
        return
    for name in names:
        val = mod.__dict__.get(name)
        if type(val) is int and val == old:
            setattr(mod, name, new)
            out.attributes.append((path, name, old, new))


def sync_config(model: torch.nn.Module, dg: DependencyGraph, plan: PrunePlan) -> ConfigSync:
    """Update the module attributes and config of a pruned transformers model (in place).

    ``dg`` and ``plan`` are the graph and plan the model was pruned with; the model
    must already be rewritten.
    """
    out = ConfigSync()
    pruned = plan.masks()
    heads: dict[str, tuple] = {}
    kinds, frozen = dg.kinds, set(dg.solver.frozen_reasons())
    for (node_name, q, _, v), axes in attention_site_axes(dg):
        path = dg.module_of(node_name)
        q_atoms = dg.solver.atoms(dg.solver.layout((q, (axis := head_axis(dg, q, frozen, axes.get(q))) % dg.ir.values[q].rank)))
        kv_atoms = [a for a in q_atoms if kinds.get(a) == "head"]
        rep_atoms = [a for a in q_atoms if kinds.get(a) == "query_group"]
        # query heads: a (batch, heads, seq, dim) operand's head axis itself, whatever atoms its layout
        # splits it into (Falcon's fused [key/value groups, queries per group + 2] leaves the queries
        # per group unlabelled); with heads folded into batch, its head atoms
        q_heads = (_kept(dg, q, axis, pruned) if dg.ir.values[q].rank >= 4
                   else _atom_kept(dg, kv_atoms + rep_atoms, pruned))
        heads[path] = (q_heads, _atom_kept(dg, kv_atoms, pruned),
                       _atom_kept(dg, rep_atoms, pruned), _kept(dg, q, -1, pruned), _kept(dg, v, -1, pruned))
    for path, ((hq0, hq1), (hk0, hk1), (r0, r1), (d0, d1), _) in heads.items():
        mod = submodule(model, path)
        if mod is None:
            continue
        _set_attrs(mod, path, HEADS, hq0, hq1, out)
        if hk0 != hq0 or hk1 != hq1:
            _set_attrs(mod, path, KV_HEADS, hk0, hk1, out)
        _set_attrs(mod, path, QUERIES_PER_KV, r0, r1, out)
        _set_attrs(mod, path, HEAD_DIM, d0, d1, out)
        _set_attrs(mod, path, ALL_HEAD, hq0 * d0, hq1 * d1, out)
    ffn = _per_group_sizes(model, dg, pruned, "ffn", FFN, out)
    hidden = _per_group_sizes(model, dg, pruned, "hidden", HIDDEN, out)
    cfg = getattr(model, "config", None)
    if cfg is None:
        out.reason = "the model has no config"
        return out
    problems: list[str] = []

    def uniform(what: str, values: set) -> Any:
        if len(values) > 1:
            pairs = ", ".join(f"{a} -> {b}" for a, b in sorted(values))  # (original, kept) per layer
            problems.append(f"{what} differ between layers ({pairs})")
            return None
        return next(iter(values)) if values else None

    changed_heads = any(h[0][0] != h[0][1] or h[1][0] != h[1][1] for h in heads.values())
    changed_dim = any(h[3][0] != h[3][1] or h[4][0] != h[4][1] for h in heads.values())
    # sizes the prune left alone are no problem, however they vary by stage (MobileViT's head dims 16, 20, 24)
    q_new = uniform("query head counts", {h[0] for h in heads.values()}) if changed_heads else None
    kv_new = uniform("key/value head counts", {h[1] for h in heads.values()}) if changed_heads else None
    d_new = uniform("head dims", {h[3] for h in heads.values()}) if changed_heads or changed_dim else None
    if q_new and changed_heads:
        _set_config(cfg, HEADS, q_new[0], q_new[1], out)
        _set_config(cfg, KV_HEADS, kv_new[0], kv_new[1], out)
    # config fields this sync creates: deleted again where the rebuild check fails
    added = _sync_head_dim(cfg, d_new, changed_heads, changed_dim, problems, out) if d_new else set()
    if changed_dim:
        problems.append("head_dim was pruned but from_pretrained would rescale attention by the new head_dim")
    for what, sizes, names in (("FFN sizes", ffn, FFN), ("hidden sizes", hidden, HIDDEN)):
        declared = {getattr(cfg, n, None) for n in names} - {None}
        sizes = [(o, n) for o, n in sizes if o in declared] or sizes  # e.g. not a pooler's width
        if any(o != n for o, n in sizes):
            pair = uniform(what, set(sizes))
            if pair:
                _set_config(cfg, names, pair[0], pair[1], out)
    if plan.blocks:  # from_pretrained would rebuild them and fill their weights randomly
        problems.append(f"{len(plan.blocks)} residual block(s) were removed, which no config field expresses")
    # Instantiating the class costs as much as the rest of a prune: only where it can decide.
    out.loadable, out.reason = (False, "; ".join(problems)) if problems else _check_rebuild(model, cfg, problems)
    if not out.loadable:
        # A config transformers rejects (hidden % heads != 0) would break every later
        # save_pretrained: keep the original one; graphprune.hf.save_pruned records the truth.
        for name, (old, _) in out.config.items():
            if name in added:
                delattr(cfg, name)
            else:
                setattr(cfg, name, old)
    return out


def sync_checked(model: torch.nn.Module, dg: DependencyGraph, plan: PrunePlan, inputs: dict) -> ConfigSync:
    """:func:`sync_config`, then the model run on ``inputs``. The rewrite proved the attributes it set by tracing
    again; the sync's own (for code paths a trace does not take) are not, so where the model no longer runs they
    are all set back (Falcon's query heads were once counted as its key/value groups; DAB-DETR's ``hidden_size``
    names a width the prune did not cut). ``load_pruned`` replays the same check, so a reload decides alike."""
    out = sync_config(model, dg, plan)
    if not out.attributes or (exc := _fails(model, inputs)) is None:
        return out
    for path, name, old, _ in out.attributes:
        setattr(model.get_submodule(path) if path else model, name, old)
    out.taken_back = (f"{len(out.attributes)} module attribute(s) taken back; with them the pruned model failed on "
                      f"its example inputs ({type(exc).__name__}: {str(exc)[:160]})")
    out.attributes = []
    if (exc := _fails(model, inputs)) is not None:
        raise RewriteError(f"the pruned model does not run on its example inputs: {type(exc).__name__}: "
                           f"{str(exc)[:300]}; pass verify=True to see which groups differ, or ignore= the "
                           "attention layers") from exc
    return out


def _fails(model: torch.nn.Module, inputs: dict) -> Exception | None:
    try:
        with torch.no_grad():
            model(**inputs)
    except Exception as exc:  # noqa: BLE001 - whatever the forward raises, it no longer runs
        return exc
    return None


def _sync_head_dim(cfg, d_new, changed_heads: bool, changed_dim: bool, problems: list[str], out) -> set[str]:
    """Write the kept head_dim where the config holds one; returns the fields it had to create."""
    if (changed_heads or changed_dim) and getattr(cfg, "head_dim", None) is not None:
        if isinstance(getattr(type(cfg), "head_dim", None), property):  # Falcon: hidden_size // heads, read-only
            if cfg.head_dim != d_new[1]:
                problems.append("the config derives head_dim from the hidden size and head count")
        else:  # explicit, so a config that derives head_dim from hidden/heads keeps the pruned one
            _set_config(cfg, ("head_dim",), cfg.head_dim, d_new[1], out)
    elif changed_heads and not hasattr(cfg, "head_dim"):
        # SmolLM3, Exaone4, Apertus: no head_dim field, but their attention reads getattr(config, "head_dim",
        # hidden // heads); written, the rebuild check tells whether the class honours it
        cfg.head_dim = d_new[1]
        out.config["head_dim"] = (None, d_new[1])
        return {"head_dim"}
    return set()


def _per_group_sizes(model, dg, pruned, kind, names, out: ConfigSync) -> list[tuple[int, int]]:
    """(old, new) per group of ``kind``; module attributes named ``names`` that hold the old
    size, on the modules owning the group's parameters and their parents, are updated."""
    sizes = []
    modules = dict(model.named_modules())  # one walk; get_submodule per prefix cost 20 ms on ResNet-50
    for g in dg.groups:
        if g.kind != kind or not g.prunable:
            continue
        new = g.size - int(pruned[g.id].sum()) if g.id in pruned else g.size
        sizes.append((g.size, new))
        if new == g.size:
            continue
        owners = {m.name.rpartition(".")[0] for m in g.members}
        prefixes = set()
        for o in owners:
            parts = o.split(".")
            prefixes.update(".".join(parts[:i]) for i in range(len(parts) + 1))
        if kind == "ffn":  # the FFN module itself (and its children), not the whole model
            common = _common_prefix(owners)
            prefixes = {p for p in prefixes if p.startswith(common)} if common else {""}
        for p in sorted(prefixes):
            mod = modules.get(p)
            if mod is not None and mod is not model:
                _set_attrs(mod, p, names, g.size, new, out)
    return sizes


def _common_prefix(paths: set[str]) -> str:
    split = [p.split(".") for p in paths]
    common = []
    for parts in zip(*split):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return ".".join(common)


def _set_config(cfg, names: tuple[str, ...], old: Any, new: Any, out: ConfigSync) -> None:
    for name in names:
        try:
            val = getattr(cfg, name)
        except AttributeError:
            continue
        if old != new and (val == old or (val is None and name == "n_inner")):  # GPT-2: None = 4*n_embd
            setattr(cfg, name, new)
            out.config[name] = (val, new)
            return


def _check_rebuild(model: torch.nn.Module, cfg, problems: list[str]) -> tuple[bool, str]:
    """Instantiate the model class from the new config on meta: same parameter shapes?"""
    try:
        if hasattr(cfg, "validate"):
            cfg.validate()  # transformers' own checks, which save_pretrained runs too
        with torch.device("meta"):
            rebuilt = type(model)(copy.deepcopy(cfg))
    except Exception as exc:  # the config no longer describes a valid model of this class
        cause = exc.__cause__ or exc
        problems.append(f"transformers rejects it: {str(cause).strip().splitlines()[0][:160]}")
        return False, "; ".join(problems)
    want = {n: tuple(p.shape) for n, p in model.state_dict().items()}
    got = {n: tuple(p.shape) for n, p in rebuilt.state_dict().items()}
    bad = [f"{n}: config gives {got.get(n)}, pruned model has {s}" for n, s in want.items() if got.get(n) != s]
    if bad:
        problems.append(f"{len(bad)} tensor shape(s) the config cannot express, e.g. {bad[0]}")
    return (not problems), "; ".join(problems)
