"""Which groups a plan may prune: targets by kind (heads, FFN units, ...) or by layout role, the
defaults for models with and without attention, and per-group ratio overrides."""
from __future__ import annotations

from typing import Iterable, Mapping

from ..errors import PlanError
from ..graph import DependencyGraph, Group
from ..kinds import KINDS, attention_sites
from .plan import check_ratio, ranked_freezes

# Plural and everyday spellings of the kinds in graphprune.kinds.
_TARGET_ALIASES = {"heads": ("head",), "kv_heads": ("head",), "query_heads": ("query_group",),
                   "query_groups": ("query_group",), "head_dims": ("head_dim",), "channels": ("hidden", "ffn", "latent"),
                   "conv_groups": ("conv_group",)}
ROLES = ("channel", "outer", "inner")


def resolve_targets(dg: DependencyGraph, roles: Iterable[str] | None = None,
                    targets: Iterable[str] | str | None = None) -> tuple[str, tuple[str, ...]]:
    """Which groups a plan may prune: ("kind", kinds) or ("role", roles).

    ``targets`` names kinds (head, ffn, hidden, head_dim, query_group, ...); ``roles``
    names layout roles. With neither, a model with attention heads prunes whole heads, FFN
    units, conv groups and hidden channels no norm crosses (a normalised hidden size stays;
    :func:`select_groups`), any other model any role, of which :func:`select_groups` takes
    the channels and a grouped convolution's groups or the channels inside them (:func:`_cnn_default`).
    """

    if targets is not None and roles is not None:
        raise PlanError("pass either targets= (what to prune: heads, ffn, hidden, ...) or roles=, not both")
    if targets is not None:
        targets = (targets,) if isinstance(targets, str) else tuple(targets)
        kinds: list[str] = []
        for t in targets:
            if t in KINDS:
                kinds.append(t)
            elif t in _TARGET_ALIASES:
                kinds.extend(_TARGET_ALIASES[t])
            else:
                raise PlanError(f"unknown target '{t}'; targets are {sorted(set(KINDS) | set(_TARGET_ALIASES))}, "
                                "and 'blocks' for whole residual blocks")
        return "kind", tuple(dict.fromkeys(kinds))
    if roles is not None:
        roles = tuple(roles)
        bad = set(roles) - set(ROLES)
        if bad:
            raise PlanError(f"unknown roles {sorted(bad)}; roles are 'channel', 'outer', 'inner'")
        return "role", roles
    if any(g.kind == "head" for g in dg.groups) or attention_sites(dg):
        # heads alone would leave most of a transformer's weights (its FFNs) untouched: a ViT at
        # 0.5 lost 18% of its MACs, a decoder with 2 key/value heads at 0.3 lost nothing. Heads
        # frozen (Bloom's ALiBi slopes are computed per head) leave the FFNs, not the hidden size.
        # Whole GroupNorm groups (conv_group) cut exactly: a diffusion UNet's convolutions are most of its MACs
        return "kind", ("head", "ffn", "conv_group")
    return "role", ROLES


def _cnn_default(groups: list[Group]) -> list[Group]:
    """A model without attention: its channels, and a grouped convolution's channels by whole groups where
    those cut exactly (ResNeXt's cardinality), else inside every group (IGCV3's groups sit behind a channel
    shuffle and cannot go whole; ResNeSt's radix groups meet in a softmax, which cutting one would change)."""
    whole = {(m.name, m.dim) for g in groups if g.role == "outer" and g.exact for m in g.members}
    return [g for g in groups if g.role == "channel" or (g.role == "outer" and g.exact) or (
        g.role == "inner" and g.exact and not any((m.name, m.dim) in whole for m in g.members))]


def select_groups(dg: DependencyGraph, roles: Iterable[str] | None = None, ignore: Iterable[str] = (),
                  targets: Iterable[str] | str | None = None) -> list[Group]:
    """Prunable groups of the given roles or target kinds that touch no ignored parameter/module."""
    by, wanted = resolve_targets(dg, roles, targets)
    ignore = list(ignore)
    names = dg.param_names()
    for item in ignore:
        if not any(n == item or n.startswith(item + ".") for n in names):
            raise PlanError(f"ignored name '{item}' matches no parameter or module of the model (the names are "
                            "the members `graphprune inspect MODEL` lists, or model.named_modules())")
    # the default for attention models keeps the hidden size where a norm crosses it (inexact); where none does
    # (gMLP's gated units, a hybrid CNN's BatchNorm'd stream) it cuts exactly, as a CNN's default does
    exact_hidden = targets is None and roles is None and by == "kind"
    candidates = dg.prunable_groups()
    if targets is None and roles is None and by == "role":
        candidates = _cnn_default(candidates)
    out = []
    for g in candidates:
        if (g.kind if by == "kind" else g.role) not in wanted and not (
                exact_hidden and g.kind == "hidden" and not g.inexact):
            continue
        if exact_hidden and g.kind == "conv_group" and g.inexact:
            continue  # whole groups a norm reads across (Mamba2's heads under its gated RMSNorm), as the hidden size
        if any(m.name == i or m.name.startswith(i + ".") for m in g.members for i in ignore):
            continue
        out.append(g)
    if not out and targets is not None:
        have = sorted({g.kind for g in dg.prunable_groups()})
        frozen = [g for g in dg.groups if not g.prunable and g.kind in wanted]  # why the wanted kinds cannot shrink
        raise PlanError(f"the model has no prunable group of kind {list(wanted)}; its prunable kinds are {have}",
                        reasons=[r for r, _ in ranked_freezes(frozen)])
    return out


def resolve_ratios(groups: list[Group], ratios: Mapping[int | str, float] | None) -> dict[int, float] | None:
    """Per-group ratios from overrides keyed by group id, by module or parameter name (a group
    matches when one of its members is that parameter or lives under that module; the longest
    matching name wins), or by kind ("ffn", "heads", ...). A group id beats a name, a name a kind."""
    if not ratios:
        return None
    ids = {g.id for g in groups}
    names = {m.name for g in groups for m in g.members}
    kinds = {g.kind for g in groups}
    for key, r in ratios.items():
        check_ratio(r, f"ratio for {key!r}")
        if isinstance(key, str):
            wanted = _TARGET_ALIASES.get(key, (key,))
            if not kinds.intersection(wanted) and not any(n == key or n.startswith(key + ".") for n in names):
                raise PlanError(f"ratios key {key!r} is neither a selected group's kind ({sorted(kinds)}) nor a module "
                                "or parameter of a selected group")
        elif key not in ids:
            raise PlanError(f"ratios key {key!r} is not a selected group id")
    out: dict[int, float] = {}
    for g in groups:
        if g.id in ratios:
            out[g.id] = float(ratios[g.id])
            continue
        best: tuple[int, float] | None = None
        for key, r in ratios.items():
            if not isinstance(key, str):
                continue
            if any(m.name == key or m.name.startswith(key + ".") for m in g.members):
                rank = len(key) + 1
            elif g.kind in _TARGET_ALIASES.get(key, (key,)):
                rank = 0
            else:
                continue
            if best is None or rank > best[0]:
                best = (rank, float(r))
        if best is not None:
            out[g.id] = best[1]
    return out
