"""Which residual blocks to remove: scored on calibration data, and traded against width.

Each block's score is the model's output error, on calibration rows, when that block alone
is removed (its branch zeroed; one masked run per block, sharing the computation before
the block). With a ratio, that share of the blocks goes, least harmful first. Under a
MACs / parameter budget the planner tries removing the k blocks cheapest per unit of
budget (k = 0, 1, 2, 3, 4, 6, 8, ...), spends what is left of the budget on channels
(uniform or global, as asked), repairs each candidate the way the final plan will be
repaired, and keeps the candidate whose output error is least: depth is used only where it
beats width on the user's data. Front-end neutral.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..blocks import Block, dead_values
from ..errors import PlanError, warn
from .allocate import Repair, sample
from .budget import CostModel, parse_budget, solve_budget
from .plan import PrunePlan, block_masks, make_plan
from .scoring import output_errors

BLOCK_TARGETS = ("blocks", "block", "depth")

OVERSHOOT = 0.05  # a blocks-only plan landing this far (a share of the original) past a budget is said


def split_targets(targets):
    """(whether blocks are targeted, the other targets or None)."""
    if targets is None:
        return False, None
    targets = (targets,) if isinstance(targets, str) else tuple(targets)
    rest = tuple(t for t in targets if t not in BLOCK_TARGETS)
    return len(rest) != len(targets), rest


def select_blocks(dg, ignore) -> list[Block]:
    """The model's removable blocks, minus those holding an ignored parameter or module."""
    ignore = list(ignore)
    out = [b for b in dg.blocks
           if not any(p == i or p.startswith(i + ".") for p in b.params for i in ignore)]
    if not out:
        raise PlanError("targets include 'blocks' but the model has no removable residual branch (an add y = x + f(x) "
                        "whose f has weights of its own and feeds nothing else; weights shared across layers, as in "
                        "ALBERT, die with no single branch)" + (" outside the ignored layers" if ignore else ""))
    return out


def keep_removable(program, dg, blocks: list[Block], only: bool, notes: list[str]) -> list[Block]:
    """``blocks`` less those whose removal the program cannot carry out (a PyTorch forward that views an attention
    branch at a fixed size breaks once its modules are swapped): chosen, they would fail the whole prune after
    planning. Said in a warning and the report; a PlanError where none is left and ``only`` blocks were asked for."""
    if not blocks or not program.removal_problem(dg, blocks):  # one check of all: the usual case
        return blocks
    refused = {b.id: why for b in blocks if (why := program.removal_problem(dg, [b]))}
    kept = [b for b in blocks if b.id not in refused]
    if kept and program.removal_problem(dg, kept):  # each goes alone, not all together: grow a set
        together: list[Block] = []
        for b in kept:
            why = program.removal_problem(dg, together + [b])
            if why:
                refused[b.id] = why
            else:
                together.append(b)
        kept = together
    first = next(iter(refused.values()), "")
    if not refused:
        return kept
    if not kept and only:
        raise PlanError(f"no residual block can be removed from this model; the first, {_label(blocks[0])}: {first}")
    named = [_label(b) for b in blocks if b.id in refused]
    first = first.split("; leave blocks out")[0].split(". Leave blocks out")[0]
    text = (f"depth: {len(refused)} of {len(blocks)} residual block(s) kept whole, as removing them would break the "
            f"model ({', '.join(named[:4])}{', ...' if len(named) > 4 else ''}); the first: {first}")
    warn(text)
    notes.append(text)
    return kept


def _label(b: Block) -> str:
    """The block's add node and the module path its weights share ("add_2 in blocks.1")."""
    parts = [p.split(".")[:-1] for p in b.params]
    common = next((k for k in range(min(map(len, parts), default=0)) if len({tuple(p[:k + 1]) for p in parts}) > 1),
                  min(map(len, parts), default=0))
    return f"{b.id} in {'.'.join(parts[0][:common])}" if parts and common else b.id


@dataclass
class DepthChoice:
    """The removed blocks and what chose them."""

    removed: list[str]
    scores: dict[str, float]  # block id -> harm when removed alone (output error, or loss added)
    # under a budget: (blocks removed, repaired error or loss, width allocation) per candidate
    trials: list[tuple[int, float, str]] = field(default_factory=list)
    measure: str = "relative output error"

    def note(self) -> str:
        s = f"depth: {len(self.removed)} of {len(self.scores)} residual block(s) removed"
        if self.removed:
            s += " (" + ", ".join(f"{b} {self.scores[b]:.2g}" for b in self.removed[:6])
            s += ", ..." if len(self.removed) > 6 else ""
            s += f"; {self.measure} when removed alone)"
        if self.trials:
            s += (f"; blocks removed, widths -> repaired {self.measure}: "
                  + ", ".join(f"{k} {w}: {e:.4g}" for k, e, w in self.trials))
        return s


def score_blocks(program, blocks: list[Block], batches: list, loss=None) -> dict[str, float]:
    """Output error (relative to the output's energy) when each block alone is removed; with
    ``loss`` (a causal LM's next-token loss on the calibration text), the loss it adds."""

    used, _ = sample(program, batches)
    variants = [(masks_of(program.graph(), [b]), {}) for b in blocks]
    err = output_errors(program, used, variants, "scoring blocks", loss)
    if loss is not None:
        err = err - output_errors(program, used, [({}, {})], "scoring blocks", loss)[0]
    return {b.id: float(e) for b, e in zip(blocks, err)}


def masks_of(dg, blocks: list[Block]) -> dict:

    return block_masks(dg, PrunePlan(blocks=[b.id for b in blocks]))


def by_ratio(blocks: list[Block], scores: dict[str, float], ratio: float) -> list[str]:
    n = math.floor(len(blocks) * ratio + 1e-9)
    order = sorted(blocks, key=lambda b: (scores[b.id], b.id))
    return sorted(b.id for b in order[:n])


def _counts(k_max: int) -> list[int]:
    out, k = [0], 1
    while k <= k_max:
        out.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    if k_max not in out:
        out.append(k_max)
    return out


def choose_under_budget(program, dg, groups, scores, blocks: list[Block], bscores: dict[str, float], budget,
                        round_to: int, how: str, max_ratio: float, batches: list, mode, stats, loss=None):
    """(group ratios, BudgetResult, DepthChoice): the blocks-and-width plan with the least repaired
    output error (or calibration ``loss``) among candidates that each meet ``budget``. Under
    ``how="global"`` each k is tried with uniform widths too: a ranking normalised per group is
    a guess about how layers compare, the calibration data measure it."""

    original = CostModel(dg, groups).measure({})
    targets = parse_budget(budget, original)
    metric = next(iter(targets))
    # cheapest first: error per unit of the budget's first metric
    cost_of = {}
    for b in blocks:
        dead = dead_values(dg.ir, [b])
        cost_of[b.id] = max(1, original[metric] - CostModel(dg, [], dead).measure({})[metric])
    order = sorted(blocks, key=lambda b: (bscores[b.id] / cost_of[b.id], b.id))
    k_max = 0
    for k in range(1, len(order) + 1):  # beyond the first k that meets the budget alone, more is waste
        k_max = k
        got = CostModel(dg, [], dead_values(dg.ir, order[:k])).measure({})
        if all(got[m] <= t for m, t in targets.items()):
            break
    candidates, errors = [], []
    for k in _counts(k_max):
        chosen = order[:k]
        dead = dead_values(dg.ir, chosen)
        live = [g for g in groups if any(m.value not in dead for m in g.members)]
        for width in dict.fromkeys([how, "uniform"]):
            try:
                ratios, spent = solve_budget(dg, live, scores, budget, round_to, width, max_ratio, dead=dead,
                                             original=original)
            except PlanError as exc:
                errors.append((k, str(exc)))
                continue  # these blocks leave too little width to spend: more blocks are needed
            p = make_plan(live, scores, 0.0, round_to, ratios)
            p.blocks = sorted(b.id for b in chosen)
            candidates.append((k, ratios, spent, p, width))
    if not candidates:
        k, why = errors[-1] if errors else (0, "")
        raise PlanError(f"budget {budget} cannot be met by removing blocks and pruning the selected groups (with the "
                        f"{k} cheapest of {len(blocks)} block(s) removed: {why.split('. Select')[0]}); relax the budget or "
                        "select more kinds")
    # a loss is an average over tokens: the candidates are told apart on every calibration batch
    used = batches if loss is not None else sample(program, batches)[0]
    repair = Repair(program, dg, make_plan(groups, scores, 0.5, round_to), batches, mode, stats)  # every site
    err = output_errors(program, used, [repair.variant(c[3]) for c in candidates], "weighing depth against width",
                        loss)
    best = int(np.argmin(err))
    k, ratios, spent, p, width = candidates[best]
    ratios = {g.id: ratios.get(g.id, 0.0) for g in groups}
    spent.allocation = width
    over = (targets[metric] - spent.achieved[metric]) / max(original[metric], 1)
    if not groups and over > OVERSHOOT:  # whole blocks are coarse steps: say how far past the budget they land
        warn(f"budget {budget}: removing whole blocks alone keeps "
             f"{spent.achieved[metric] / original[metric]:.0%} of the {metric} where "
             f"{targets[metric] / original[metric]:.0%} was asked (no smaller block removal meets it); "
             "add width targets (channels, ffn, heads) to land closer")
    return ratios, spent, DepthChoice(p.blocks, bscores, [(c[0], float(e), c[4]) for c, e in zip(candidates, err)],
                                      "calibration loss" if loss is not None else "relative output error")


def trial_loss(program, loss_fn):
    """The loss that weighs depth against width where the model has one (a causal LM's next-token
    loss, ``graphprune.hf`` passes it): perplexity on calibration text, not logits' squared error,
    is what users judge an LLM by. ``loss_fn`` must say it takes a tuple of output tensors
    (``loss_fn.accepts_tensors = True``), as the masked runs give no model output object."""
    if loss_fn is None or not getattr(loss_fn, "accepts_tensors", False) or program.framework != "PyTorch":
        return None
    import torch  # a PyTorch program: torch is loaded already

    def loss(outs, batch) -> float:
        args, kwargs = batch
        return float(loss_fn(tuple(torch.from_numpy(o) for o in outs), kwargs if kwargs else args))

    return loss
