"""A MACs / parameter budget in the streamed prune (hf/stream.py): the whole model's target as each block's share.

The stream never holds the whole model, so the budget is solved before the first block from shapes
alone: the model on the meta device is traced at the first calibration batch, and its counts split
into the repeated blocks and the rest (embeddings, LM head, final norm), which the stream writes
unpruned. The blocks carry the whole cut: each is pruned by the one pipeline to a budget of its
own, an equal share of what the target leaves for the blocks not yet pruned (with allocation
"uniform": one ratio over the block's groups, then single units given back while the share holds,
as planning/budget.py does on a whole model; "sensitivity": the measured allocation within the
block). What a block leaves unspent, or a bias the refit gave it, moves the share of the blocks
after it, so the written checkpoint meets the budget. Spending the budget unevenly across blocks
(allocation "global") would need every block's scores before the first is pruned: refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from safetensors import safe_open

from ..api import torch_models as api
from ..errors import PlanError
from ..io.lazy_checkpoint import LazyCheckpoint
from ..metrics import node_macs
from ..options import PruneOptions
from ..planning.budget import LATENCY, SPEEDUP, BudgetResult, CostModel, missed, parse_budget, uniform_kept
from ..planning.depth import split_targets
from ..planning.targets import select_groups
from ..report.prune_report import PruneReport

IN_MEMORY = "or prune the model in memory (graphprune.hf.prune(model, budget=...))"


@dataclass
class StreamBudget:
    """The whole model's targets (absolute), its counts, and what the blocks pruned so far keep."""

    targets: dict[str, int]
    original: dict[str, int]
    outside: dict[str, int]  # what the stream writes unpruned: the embeddings, the LM head, the final norm
    block: dict[str, int]  # one block's counts before pruning
    blocks: int
    kept: dict[str, int] = field(default_factory=dict)  # the pruned blocks' counts so far
    done: int = 0
    bias: int = 0  # parameters a block's refit added beyond its budget (new biases): held back from the next
    scalars: list[float] = field(default_factory=list)  # each block's uniform ratio

    def share(self) -> dict[str, float]:
        """The next block's budget, as fractions of the block (its own count of MACs at its inputs)."""
        left = self.blocks - self.done
        out = {}
        for k, t in self.targets.items():
            room = (t - self.outside[k] - self.kept.get(k, 0)) // left - (self.bias if k == "params" else 0)
            if room <= 0:
                raise PlanError(f"budget {k}={t:,}: the blocks pruned so far keep {self.kept.get(k, 0):,} and the "
                                f"refit's new biases {self.bias:,} a block, leaving nothing for the {left} block(s) "
                                "left: pass compensate=False or relax the budget")
            out[k] = min(1.0, room / self.block[k])
        return out

    def record(self, r: PruneReport, params: int) -> None:
        """Block ``done`` pruned: ``params`` written (its new biases included), ``r.budget`` what it spent."""
        achieved = r.budget.achieved if r.budget is not None else {}
        self.kept["params"] = self.kept.get("params", 0) + params
        self.kept["macs"] = self.kept.get("macs", 0) + achieved.get("macs", self.block["macs"])
        self.bias = max(self.bias, params - achieved.get("params", params))
        self.scalars.append(r.budget.scalar if r.budget is not None else 0.0)
        self.done += 1

    def check(self, params_after: int) -> None:
        """The written checkpoint against the budget: refused (nothing written) where it does not hold."""
        got = {"params": params_after, "macs": self.outside["macs"] + self.kept.get("macs", 0)}
        for k, t in self.targets.items():
            if got[k] > t:
                raise PlanError(f"the streamed prune keeps {k} {got[k]:,}, over the budget's {t:,} (the refit gave "
                                f"the blocks {self.bias:,} bias parameters each): pass compensate=False, relax the "
                                f"budget, {IN_MEMORY}")

    def missed(self, params_after: int, round_to) -> str:
        """The PruneWarning's text where the written checkpoint lands more than 2% under the budget, else ''.
        A block landing under its share leaves the rest to the blocks after it, so only the whole can say it."""
        got = {"params": params_after, "macs": self.outside["macs"] + self.kept.get("macs", 0)}
        return missed(BudgetResult(self.targets, self.original, got), round_to if isinstance(round_to, int) else 1)

    def note(self, allocation: str) -> str:
        parts = [f"{k} {t:,} of {self.original[k]:,} ({t / self.original[k]:.1%}); the blocks {k} "
                 f"{t - self.outside[k]:,} of {self.original[k] - self.outside[k]:,} "
                 f"({(t - self.outside[k]) / max(self.original[k] - self.outside[k], 1):.1%})"
                 for k, t in self.targets.items()]
        ratios = sorted({round(s, 4) for s in self.scalars})
        said = f"{ratios[0]:g}" if len(ratios) == 1 else f"{ratios[0]:g} to {ratios[-1]:g}"
        return (f"budget: {'; '.join(parts)}. The embeddings, LM head and final norm are written unpruned, so the "
                f"{self.blocks} blocks carry the whole cut, each pruned to its share of what is left: a uniform "
                f"ratio of {said} per block, then " + ("units given back while the share held" if allocation ==
                                                      "uniform" else "re-spent by measured sensitivity in the block"))


def stream_options(opts: PruneOptions) -> PruneOptions:
    """The options each block is pruned with under a budget: refusals first (see the module docstring)."""
    if opts.allocation == "global":
        raise PlanError("allocation='global' spends a budget across the whole model by every block's scores, which "
                        "the streamed prune does not hold before the first block: pass allocation='uniform' (or "
                        f"'sensitivity', within each block), {IN_MEMORY}")
    if LATENCY in opts.budget or SPEEDUP in opts.budget:
        raise PlanError("a latency or speedup budget is measured on the whole model, which the streamed prune never "
                        f"runs: give macs= or params=, {IN_MEMORY}")
    if opts.ratios:
        raise PlanError("ratios= fixes each group's ratio, a budget chooses them: pass one of the two")
    # "auto" streams the uniform solve: in memory it may measure held-out sensitivity under a mild budget
    # (budget_sensitivity.budget_rows), which needs the whole model's runs; a streamed block has only its own
    return opts.replace(allocation="uniform") if opts.allocation == "auto" else opts


def solve(model, calib0: dict, opts: PruneOptions, path: str, ckpt: LazyCheckpoint) -> StreamBudget:
    """The budget's targets and the blocks' share, from ``model`` on meta (traced at ``calib0``);
    a PlanError, before anything is written, where the blocks cannot meet it."""
    dg = api.trace(model, (), dict(calib0))
    _, kinds = split_targets(opts.targets)
    inside = path + "."
    groups = [g for g in select_groups(dg, opts.roles, opts.ignore, kinds)
              if all(m.name.startswith(inside) for m in g.members)]  # the stream prunes within blocks only
    blocks = len(model.get_submodule(path))
    block = {"params": sum(p.numel() for p in model.get_submodule(f"{path}.0").parameters())}
    outside = {"params": _stored_numel(ckpt, [n for n in ckpt.names() if not n.startswith(inside)])}
    shapes = lambda v: dg.ir.values[v].shape  # noqa: E731
    in_blocks = sum(node_macs(n, shapes) for n in dg.ir.nodes if n.meta.module.startswith(inside))
    cost = CostModel(dg, groups)
    whole = cost.measure({})
    block["macs"], outside["macs"] = in_blocks // blocks, whole["macs"] - in_blocks
    original = {"params": outside["params"] + blocks * block["params"], "macs": whole["macs"]}
    sb = StreamBudget(parse_budget(opts.budget, original), original, outside, block, blocks)
    if not groups:
        raise PlanError(f"budget {opts.budget}: no group of the targets {opts.targets} lies within the blocks of "
                        f"'{path}', which are all the streamed prune cuts: select ('heads', 'ffn'), {IN_MEMORY}")
    most = cost.measure(uniform_kept(groups, opts.max_ratio, 1))
    least = {"params": original["params"] - (whole["params"] - most["params"]), "macs": most["macs"]}
    for k, t in sb.targets.items():
        if least[k] > t:
            raise PlanError(f"budget {k}={t:,} cannot be met block by block: the stream writes the embeddings, LM "
                            f"head and final norm unpruned ({outside[k]:,} {k}), and removing up to {opts.max_ratio:.0%} "
                            f"of each selected group in all {blocks} blocks leaves {least[k]:,} of {original[k]:,}. "
                            f"Relax the budget, raise max_ratio, select more kinds within the blocks, {IN_MEMORY}")
    return sb


def _stored_numel(ckpt: LazyCheckpoint, names: list[str]) -> int:
    """Elements of the named checkpoint tensors, from the shards' headers: no tensor is read."""
    by_file: dict[str, list[str]] = {}
    for n in names:
        by_file.setdefault(ckpt.weight_map[n], []).append(n)
    total = 0
    for file, ns in by_file.items():
        with safe_open(str(ckpt.folder / file), framework="pt") as f:
            total += sum(math.prod(f.get_slice(n).get_shape()) for n in ns)
    return total
