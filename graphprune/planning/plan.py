"""Groups + scores + constraints -> a PrunePlan (JSON-serialisable)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np

from ..blocks import dead_values
from ..errors import PlanError
from ..graph import DependencyGraph, Group
from ..reasons import CONTROL_FLOW, MODEL_IO, OP_ARGUMENT, OPAQUE, POSITIONAL, QUANTIZED, SPATIAL, UNKNOWN_OP, Reason


@dataclass
class PrunePlan:
    """Which indices of which groups to remove.

    ``pruned`` maps group id -> sorted indices to remove; ``sizes`` the groups'
    original sizes (a guard against applying a plan to a different graph); ``blocks`` the
    residual branches removed whole (their add nodes, see graphprune/blocks.py).
    """

    pruned: dict[int, list[int]] = field(default_factory=dict)
    sizes: dict[int, int] = field(default_factory=dict)
    blocks: list[str] = field(default_factory=list)

    def masks(self) -> dict[int, np.ndarray]:
        out = {}
        for gid, idx in self.pruned.items():
            m = np.zeros(self.sizes[gid], dtype=bool)
            m[idx] = True
            out[gid] = m
        return out

    def restricted(self, gids: Iterable[int]) -> "PrunePlan":
        keep = set(gids)
        return PrunePlan({g: i for g, i in self.pruned.items() if g in keep},
                         {g: s for g, s in self.sizes.items() if g in keep}, list(self.blocks))

    @property
    def widths_key(self) -> tuple:
        """What the pruned model's run time depends on: each group's pruned count and the blocks removed."""
        return tuple(sorted((g, len(i)) for g, i in self.pruned.items() if len(i))), tuple(self.blocks)

    @property
    def empty(self) -> bool:
        return not any(self.pruned.values()) and not self.blocks

    def to_json(self) -> str:
        doc = {"pruned": {str(k): v for k, v in sorted(self.pruned.items())},
               "sizes": {str(k): v for k, v in sorted(self.sizes.items())}}
        if self.blocks:  # absent when empty: plans without depth pruning keep their bytes
            doc["blocks"] = sorted(self.blocks)
        return json.dumps(doc, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PrunePlan":
        d = json.loads(text)
        return cls({int(k): list(v) for k, v in d["pruned"].items()}, {int(k): int(v) for k, v in d["sizes"].items()},
                   list(d.get("blocks", [])))


def keep_masks(dg: DependencyGraph, plan: PrunePlan) -> dict[tuple[str, int], np.ndarray]:
    """(IR value, dim) -> kept positions mask, for every slot the plan changes."""
    pruned = plan.masks()
    touched = set(pruned)  # a set: isdisjoint then walks the smaller side, not every group per slot
    out: dict[tuple[str, int], np.ndarray] = {}
    solver = dg.solver
    for v in dg.ir.values.values():
        for d in range(v.rank):
            term, atoms = solver.slot_atoms((v.name, d))
            if not atoms.isdisjoint(touched):
                mask = solver.keep_mask(term, pruned)
                if not mask.all():
                    out[(v.name, d)] = mask
    return out


def block_masks(dg: DependencyGraph, plan: PrunePlan) -> dict[tuple[str, int], np.ndarray]:
    """The masked original's view of removed blocks: each branch value zeroed whole."""
    out = {}
    for b in dg.removed_blocks(plan.blocks):
        v = dg.ir.values[b.branch]
        static = [d for d in range(v.rank) if isinstance(v.shape[d], int)]
        if static:  # any one dim zeroed whole zeroes the value
            out[(b.branch, static[-1])] = np.zeros(int(v.shape[static[-1]]), dtype=bool)
    return out


def new_size(dg: DependencyGraph, key: Any, pruned: dict[int, np.ndarray]) -> int:
    term = dg.solver.layout(key)
    return int(dg.solver.keep_mask(term, pruned).sum())


def carried_value(dg: DependencyGraph, carry, pruned: dict[int, np.ndarray]) -> int:
    """The new value of a constant that spells a slot's size (negative ones stay negative)."""
    size = new_size(dg, carry.key, pruned)
    return -size if carry.value < 0 else size


MAX_RATIO = 0.9  # no group loses more than this share of its channels: each keeps at least a tenth of itself


def check_ratio(ratio: float, what: str = "ratio") -> float:
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0.0 <= float(ratio) < 1.0:
        raise PlanError(f"{what} must be a number in [0, 1), got {ratio!r}")
    return float(ratio)


def step_of(g: Group, round_to: "int | Mapping[int, int]") -> int:
    """The channel step of group ``g``: ``round_to`` (one int, or per group id: the runtime's
    measured alignment, graphprune.planning.measure) for plain channels and, spread over the groups,
    for the width inside a grouped convolution's groups; head, block and conv-group counts are never
    rounded."""
    inside = g.role == "inner" and g.kind == "group_channel"  # a width in every group: their sum is the channels
    if g.role != "channel" and not inside:
        return 1
    step = int(round_to.get(g.id, 1)) if isinstance(round_to, Mapping) else int(round_to)
    return math.lcm(per_group(g, step) if inside else step, getattr(g, "step", 1))


def per_group(g: Group, step: int) -> int:
    """The width step inside each of a grouped convolution's groups that keeps its channels (groups x
    width) at multiples of ``step``: 16 channels over 2 groups is 8 a group, over 32 groups any width."""
    values = g._graph.ir.values if g._graph is not None else {}
    sizes = [values[m.value].shape[m.dim] for m in g.members if m.value in values and m.dim < values[m.value].rank]
    groups = max((s // g.size for s in sizes if isinstance(s, int)), default=1)
    return step // math.gcd(step, max(groups, 1))  # an op's own need (graphprune/steps.py: MoE experts' 16-byte strides)


def kept_count(size: int, ratio: float, round_to: int = 1) -> int:
    """Channels to keep: size*(1-ratio), rounded up to a multiple of round_to, at least one."""
    keep = size - math.floor(size * ratio + 1e-9)
    if round_to > 1:
        keep = min(size, int(math.ceil(keep / round_to) * round_to))
    return max(1, keep)


def make_plan(groups: list[Group], scores: Mapping[int, np.ndarray], ratio: float, round_to: int = 1,
              ratios: Mapping[int, float] | None = None) -> PrunePlan:
    """Remove the lowest-scoring indices of each group (per-group ratio, uniform by default).

    ``round_to`` keeps plain channel counts at multiples of it (vectorised kernels
    run odd widths slowly); head and conv-group counts are not rounded.
    """
    check_ratio(ratio)
    if any(r < 1 for r in (round_to.values() if isinstance(round_to, Mapping) else (round_to,))):
        raise PlanError(f"round_to must be >= 1, got {round_to}")
    plan = PrunePlan()
    for g in groups:
        r = check_ratio(ratios.get(g.id, ratio), f"ratio for group {g.id}") if ratios else ratio
        keep = kept_count(g.size, r, step_of(g, round_to))
        s = np.asarray(scores[g.id])
        order = np.argsort(s, kind="stable")  # stable: ties resolve by index, deterministically
        plan.pruned[g.id] = sorted(int(i) for i in order[: g.size - keep])
        plan.sizes[g.id] = g.size
    return plan


def check_uniform(groups: list[Group], plan: PrunePlan) -> None:
    """``uniform=True``: groups of one kind and size (each layer's heads, each layer's FFN) keep
    one count, else a PlanError naming the groups that differ (per-group ``ratios`` can do it)."""
    kept: dict[tuple, dict[int, list[int]]] = {}
    for g in groups:
        n = g.size - len(plan.pruned.get(g.id, ()))
        kept.setdefault((g.kind, g.size), {}).setdefault(n, []).append(g.id)
    for (kind, size), by_count in kept.items():
        if len(by_count) > 1:
            counts = ", ".join(f"{n} in group(s) {ids[:4]}" for n, ids in sorted(by_count.items()))
            raise PlanError(f"uniform=True: groups of kind '{kind}' and size {size} would keep different counts "
                            f"({counts}); per-group ratios= make them differ: give ratios by kind "
                            "(ratios={'ffn': 0.5}) or drop uniform=True")


def ranked_freezes(groups: Iterable[Group]) -> list[tuple[Reason, int]]:
    """Each frozen group's first reason with how many groups it froze, commonest first, model
    inputs and outputs aside (frozen by design)."""
    return [(r, n) for r, n, _ in frozen_channels(groups)]


def frozen_channels(groups: Iterable[Group]) -> list[tuple[Reason, int, int]]:
    """(first reason, groups, channels) of the groups an op froze, commonest first, model inputs
    and outputs and tensors no op reads aside: what a report shows as kept whole and why."""
    counts: dict[str, list] = {}
    for g in groups:
        unread = g.frozen and g.frozen[0].kind == OP_ARGUMENT and not g.frozen[0].node  # a tensor no op reads
        if g.frozen and g.frozen[0].kind != MODEL_IO and not unread:
            entry = counts.setdefault(str(g.frozen[0]), [g.frozen[0], 0, 0])
            entry[1] += 1
            entry[2] += g.size
    return sorted(((r, n, c) for r, n, c in counts.values()), key=lambda e: (-e[1], str(e[0])))


def inexact_pruned(dg: DependencyGraph, plan: PrunePlan) -> list[tuple[Reason, int]]:
    """(first reason, groups) of the groups the plan cuts that are not oracle-exact (they cross a
    normalisation or a mean over channels), commonest first: what a report says where no oracle ran."""
    counts: dict[str, list] = {}
    for gid, removed in plan.pruned.items():
        g = dg.group(gid)
        if len(removed) and g.inexact:
            counts.setdefault(str(g.inexact[0]), [g.inexact[0], 0])[1] += 1
    return sorted(((r, n) for r, n in counts.values()), key=lambda e: (-e[1], str(e[0])))


def frozen_summary(dg: DependencyGraph, top: int = 2) -> str:
    """The freeze reasons that keep the most channels whole, model inputs and outputs aside (frozen by design):
    ranked by groups, two 2-wide selects hid the 32 hidden units a zero state froze (a hand-written SRU)."""
    ranked = sorted(frozen_channels(dg.groups), key=lambda e: (-e[2], -e[1], str(e[0])))[:top]
    return "; ".join(f"{n} group(s), {c} channel(s): {r}" for r, n, c in ranked) if ranked else "see graph.summary()"


def check_prunable(dg: DependencyGraph) -> None:
    """Refuse a model in which no channel, head or unit can shrink at all (rather than write an
    unchanged copy): the error names the ops that froze it, and carries their Reasons
    (``exc.reasons``, commonest first)."""
    if not dg.prunable_groups():
        why = frozen_summary(dg)
        # the interface's groups, those reaching the most weights first (an index's feature dim ties layers)
        io = [g.frozen[0] for g in sorted((g for g in dg.groups if g.frozen and g.frozen[0].kind == MODEL_IO),
                                          key=lambda g: -len(g.members))]
        if why == "see graph.summary()":  # no group at all: say where the weights are, or that there are none
            flow = [n.where() for n in dg.ir.nodes if n.op in ("onnx.If", "onnx.Loop", "onnx.Scan")]
            why = (f"its weights live inside the subgraphs of {', '.join(flow[:2])}, and graphprune does not follow "
                   "channels into If/Loop/Scan bodies" if flow else
                   f"every channel space meets a model input or output, whose sizes the model's interface keeps: "
                   f"{io[0]}" + (f" (and {len(io) - 1} more)" if len(io) > 1 else "") if io else
                   "it has no float weight with a dim that a channel space carries")
        elif io:  # the interface's groups were left out of the summary: the widest may be what blocks (an LSTM's state)
            wide = max((g for g in dg.groups if g.frozen and g.frozen[0].kind == MODEL_IO), key=lambda g: g.size)
            why += (f"; and {len(io)} group(s) meet the model's inputs or outputs, whose sizes its interface keeps, the "
                    f"widest {wide.size} channel(s): {wide.frozen[0]}" + (" (a forward that returns a hidden state keeps "
                    "its width: return only what callers need)" if "output" in str(wide.frozen[0]) else ""))
        ranked = [r for r, _ in ranked_freezes(dg.groups)]
        fix = FREEZE_FIXES.get(ranked[0].kind if ranked else "", "replace or remove the op it names") if ranked or \
            not io else ("an input with a channel dim (an index given per feature) ties every layer it meets to it: "
                         "give it without that dim and expand it inside forward()" if dg.ir.frontend != "onnx" else
                         "an input with a channel dim (a recurrent state passed in, an index given per feature) ties "
                         "every layer it meets to it: export the model without it (states kept inside the graph), "
                         "or prune the model the file was exported from")
        raise PlanError(f"nothing in this model can be pruned: every channel space is frozen ({why}). Each reason "
                        f"names the op and node; {fix}.", reasons=ranked)


# What to do where the commonest freeze is of this kind (check_prunable; other kinds: the op named)
FREEZE_FIXES = {
    UNKNOWN_OP: "graphprune has no coupling rule for that op (a sparse matmul, renorm): "
                "a rule in its family's file in graphprune/rules/ (docs/architecture.md, 'Where a new thing goes') "
                "teaches it, or keep the op out of the traced forward",
    QUANTIZED: "prune the float model, then quantize it",
    CONTROL_FLOW: "export the model with its layers outside If/Loop/Scan, or prune the PyTorch model",
    OPAQUE: "the modules named read tensor data in their forward (.item(), .tolist(), a branch on values) and run as "
            "one call each: write those reads as tensor ops, or pass the values they read as Python numbers, to prune "
            "inside them (for a mixture of experts: a grouped product over the experts, as transformers 5's Mixtral "
            "does)",
    # neuralforecast's DLinear: a moving average and linear maps along time, no layer makes a channel of its own
    SPATIAL: "those are positions (time steps, pixels), not channels: the model's layers act along positions only, "
             "and it has no hidden width to cut",
    POSITIONAL: "those are positions (time steps, tokens), not channels: the model has no hidden width to cut",
}


def idle_note(groups, plan: PrunePlan, ratio: float, allocated: bool, dg: DependencyGraph | None = None,
              round_to: int | Mapping = 1) -> str | None:
    """Say so when a ratio removes nothing: from every selected group (an empty plan), or, with
    a uniform ratio, from some of them (too small to lose a whole channel or head, or a whole
    multiple of ``round_to``)."""
    if ratio <= 0:
        return None
    if not groups:
        why = frozen_summary(dg) if dg is not None else "see graph.summary()"
        return f"nothing was pruned: no prunable group was selected ({why})"
    idle = [g for g in groups if not plan.pruned.get(g.id)]
    if not idle or (allocated and len(idle) < len(groups)):
        return None  # an allocation that keeps some groups whole does so on purpose
    small = min(idle, key=lambda g: (g.size, g.id))
    step = step_of(small, round_to)
    what = (f"group {small.id} has {small.size} {small.kind or 'channel'}(s): {ratio:g} x {small.size} "
            + ("rounds to 0" if step == 1 else f"is less than one multiple of {step}, the width step kept"))
    if len(idle) == len(groups):
        fix = ("raise the ratio" if step == 1 else "raise the ratio" + (
            ", or allow any width (round_to=1, --round-to 1)" if getattr(small, "step", 1) == 1 else
            f" (its op needs multiples of {small.step}: graphprune/steps.py)"))
        return (f"nothing was pruned: ratio {ratio:g} removes no channel from any of the {len(groups)} selected "
                f"group(s) ({what}); {fix}, or prune other kinds (targets=)")
    return (f"{len(idle)} of {len(groups)} selected group(s) lose nothing at ratio {ratio:g} ({what}); raise "
            "the ratio, or let allocation move the budget (calib=..., allocation='sensitivity')")


def shape_fn(graph: DependencyGraph, p: PrunePlan):
    """Every IR value's shape after ``p``; a value a removed block leaves dead has size 0."""

    masks = keep_masks(graph, p)
    dead = dead_values(graph.ir, graph.removed_blocks(p.blocks))

    def shape_of(name: str) -> tuple:
        v = graph.ir.values[name]
        if name in dead:
            return (0,) * v.rank
        return tuple(int(masks[(name, d)].sum()) if (name, d) in masks else s for d, s in enumerate(v.shape))

    return shape_of
