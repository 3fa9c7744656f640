"""The pruned model on calibration items its refit never saw: the final plan refit on one half of
the calibration items (the parity folds calibration keeps per site) and scored on the other half,
the other way round too, beside the final refit (fitted on every item) scored on the same items.

The refit's own error is in-sample: EfficientNet-Lite0 at 60% of the MACs, refit on 32 photos,
agreed with the original on 0.69 of them and on 0.15 of other photos; its relative output error was
0.41 on them, 0.80 cross-fit and 0.83 on other photos (docs/calibration.md). The cross-fit figure is what
the report can say about other inputs without data it was not given. It is still optimistic where
calibration items are near-copies of each other (crops of the same photos fall in both halves).
Front-end neutral (no torch, no onnx here).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ..calib.distributed import gather, reduce_sum, shard
from ..calib.sites import find_sites
from ..errors import warn
from ..ops import Ops
from ..util.progress import progress
from .allocate import item_count
from .crossfit import CrossFit
from .memory import HELDOUT_BYTES
from .scoring import moments, squared


@dataclass
class HeldOut:
    """Output agreement with the original on the calibration items, every item scored under the
    refit fitted on the other half (``*_heldout``) and under the final refit (``*_in_sample``)."""

    items: int
    error_heldout: float | None  # squared output error relative to the output's energy; None: skipped
    error_in_sample: float | None
    agreement_heldout: float | None = None  # top-1 of the class-score outputs (class_outputs); None: none
    agreement_in_sample: float | None = None
    seconds: float = 0.0
    skipped: str = ""  # why no figure was measured
    scored: int = 0  # of ``items``, those scored (batches up to ``ROWS`` rows)
    # per scored output: (name, held-out error, in-sample error), each relative to the output's variance about its
    # mean: the pooled figure weighs outputs by their energy, where an offset can hide one the prune ruined
    outputs: list[tuple[str, float, float]] = field(default_factory=list)

    def text(self) -> str:
        if self.skipped:
            return f"quality on calibration items not refit to: not measured, {self.skipped}"
        some = f", {self.scored} of them scored" if 0 < self.scored < self.items else ""
        line = (f"quality on calibration items not refit to (the plan refit on each half of the {self.items} items, "
                f"scored on the other{some}): relative output error {self.error_heldout:.3g} "
                f"(in sample {self.error_in_sample:.3g})")
        if self.agreement_heldout is not None:
            line += (f"; top-1 agreement with the original {self.agreement_heldout:.2f} "
                     f"(in sample {self.agreement_in_sample:.2f})")
        if len(self.outputs) > 1:
            line += "; per output, relative to its variance: " + ", ".join(
                f"{name} {held:.3g} (in sample {fit:.3g})" for name, held, fit in self.outputs)
        return line

    def to_dict(self) -> dict:
        return {"items": self.items, "error_heldout": self.error_heldout, "error_in_sample": self.error_in_sample,
                "agreement_heldout": self.agreement_heldout, "agreement_in_sample": self.agreement_in_sample,
                "scored": self.scored, "seconds": self.seconds, "skipped": self.skipped,
                "outputs": [{"name": n, "error_heldout": h, "error_in_sample": f} for n, h, f in self.outputs]}

    def warning(self, framework: str = "PyTorch") -> str:
        """What a PruneWarning says where the pruned model lost most of its answers, else ''. Distillation
        trains a PyTorch model: for an ONNX file it is the PyTorch model it was exported from."""
        ruined = [(n, h) for n, h, _ in self.outputs if h >= RUINED]
        if ruined and (self.agreement_heldout is None or self.agreement_heldout >= POOR):
            name, held = max(ruined, key=lambda t: t[1])
            return (f"the pruned model's output '{name}' is further from the original's than the original's own mean "
                    f"is, on the calibration items its refit did not see ({held:.2f} of its variance): prune less, or "
                    "calibrate on more distinct items")
        if self.agreement_heldout is None or self.agreement_heldout >= POOR:
            return ""
        recover = ("recover it by distillation (graphprune.recover(pruned, original, data))" if framework == "PyTorch"
                   else "prune the PyTorch model it was exported from and recover that by distillation")
        return (f"the pruned model gives the original's top answer on {self.agreement_heldout:.0%} of the calibration "
                f"items its refit did not see ({self.agreement_in_sample:.0%} of those it was refit to): {recover}, "
                "calibrate on more distinct items, or prune less")


POOR = 0.5  # held-out top-1 agreement under which the prune warns
RUINED = 1.0  # an output's held-out error, relative to its variance, at which the prune warns: no better than its mean
DIFFER = 0.01  # halves_differ's p-value under which the halves are taken to differ by kind (no figure)
MIN_PAIRS = 6  # fewer pairs of items cannot tell (2^6 sign patterns)
ROWS = 2048  # calibration rows (tokens, or items) the check scores, about (at least a pair of batches): all of
# SmolLM2's 288 x 128 tokens took 318 s
MAX_BYTES = HELDOUT_BYTES  # the two extra refits hold this much at most beside the final one; larger prunes skip it


def check_quality(program, dg, plan, batches: list, comp, fit: str, wanted: bool = True) -> None:
    """``comp.heldout`` from the Grams compensation refit from (``comp.stats``, dropped here), with
    a PruneWarning where the pruned model lost most of its answers. Skipped (a note says so) where
    two more refits would hold more than ``MAX_BYTES``."""
    stats, comp.stats = comp.stats, None
    if stats is None:
        return
    if not wanted:
        comp.heldout = HeldOut(0, None, None, skipped="turned off (heldout_check=False)")
        return
    if comp.new_biases:
        comp.heldout = HeldOut(0, None, None, skipped="compensation gave layers new biases (add_bias=True), which the "
                                                    "check's refits of each half leave out")
        return
    size = sum(int(np.prod(np.shape(u))) * 4 for u in comp.updates.values())
    if 2 * size > MAX_BYTES:
        cap = MAX_BYTES / 2**30
        comp.heldout = HeldOut(0, None, None, skipped=f"two more refits would hold {2 * size / 2**30:.1f} GiB beside "
                                                     f"the final one (the check holds {cap:.0f} GiB at most)")
        return
    t0 = time.perf_counter()
    # each site's ridge strength as the final refit used it (a fold alone has no second fold to choose on)
    lams = {s.node: s.lam for s in comp.sites if s.lam is not None}
    comp.heldout = heldout_check(program, dg, plan, batches, find_sites(dg), stats, lams, comp.updates, fit)
    if comp.heldout is not None:
        comp.heldout.seconds = time.perf_counter() - t0
        if comp.heldout.warning(program.framework):
            warn(comp.heldout.warning(program.framework))


class _Repair:
    """What :class:`CrossFit` reads: the final refit's statistics and ridge strengths."""

    def __init__(self, dg, sites, tensors, stats, lams, fit) -> None:
        self.dg, self.sites, self.tensors, self.stats, self.lams, self.fit = dg, sites, tensors, stats, lams, fit


def heldout_check(program, dg, plan, batches: list, sites, stats: dict, lams: dict, final: dict,
                  fit: str = "refit") -> HeldOut | None:
    """Cross-fit quality of ``plan`` on ``batches`` (the calibration batches, whose per-site
    ``stats`` hold two folds). ``final``: the final refit's weight overrides. None where the
    statistics hold no folds to fit apart (nothing was refit from Grams)."""
    if not any(st is not None and st.folds and len(st.folds) == 2 for st in stats.values()):
        return None
    starts = np.cumsum([0] + [item_count(program, b) for b in batches])
    why = _unsplit(stats, int(starts[-1]))
    if why:
        return HeldOut(int(starts[-1]), None, None, skipped=why)
    chosen_batches = scored_batches(program, batches)
    mine = [chosen_batches[k] for k in shard(len(chosen_batches))]
    used = [batches[k] for k in mine]
    heads = class_outputs(dg.ir)
    # the original through the variants' interpreter (its walk runs the unchanged model last)
    ref = {k: outs for _, k, outs in program.run_variants(used, [({}, {})])} if used else {}
    mask = program.scored_outputs()
    pick = (lambda outs: outs) if mask is None else (lambda outs: [o for o, m in zip(outs, mask) if m])
    scored = int(sum(starts[k + 1] - starts[k] for k in chosen_batches))
    rows = _summaries(ref, pick, starts, mine, chosen_batches)
    p, twins = halves_differ(rows), repeated(rows)
    if p < DIFFER:
        return HeldOut(int(starts[-1]), None, None, scored=scored, skipped=(
            f"the even and the odd calibration items differ more than halves drawn at random do (p = {p:.3f}: items "
            "that alternate kinds, item by item), so a refit on one half says little about the other; give them in "
            "random order (a DataLoader with shuffle=True, an .npz's samples shuffled)"))
    if twins * 8 >= len(rows) > 0:
        return HeldOut(int(starts[-1]), None, None, scored=scored, skipped=(
            f"{twins} of the {len(rows)} scored items have the same outputs as an item of the other half: repeated "
            "inputs (then each half's refit has seen the other half; give each item once), or a model whose outputs "
            "hardly depend on its input (a randomly initialised one), which no held-out score can rank"))
    (masks, fold0), (_, fold1) = CrossFit(_Repair(dg, sites, program.tensors(), stats, lams, fit)).variants(plan)
    variants = [(masks, final), (masks, fold0), (masks, fold1)]
    valid = [program.valid_rows(b) for b in used]
    energy = sum(squared(o, None, valid[k]) for k, outs in ref.items() for o in pick(outs))
    names = [n for n, m in zip(dg.ir.outputs, mask or [True] * len(dg.ir.outputs)) if m]
    # per output: (sum, sum of squares, count) of the original's values; per variant and output: squared error
    stats_out, per_out = np.zeros((len(names), 3)), np.zeros((3, len(names)))
    for k, outs in ref.items():
        for j, o in enumerate(pick(outs)[:len(names)]):
            stats_out[j] += moments(o, valid[k])
    # per variant (the final refit, fold 0's, fold 1's): squared error, agreeing positions, positions
    err, agree, count = np.zeros(3), np.zeros(3), np.zeros(3)
    runs = program.run_variants(used, variants) if used else ()
    for v, k, outs in progress(runs, "quality on held-out calibration items", 3 * len(used)):
        first, n = starts[mine[k]], starts[mine[k] + 1] - starts[mine[k]]
        # a fold's refit is scored on the other fold's items; the final one on every item
        chosen = np.ones(n, bool) if v == 0 else np.arange(first, first + n) % 2 == 2 - v
        each = [squared(o, q, valid[k], chosen) for o, q in zip(pick(outs), pick(ref[k]))]
        err[v] += sum(each)
        per_out[v, :len(names)] += each[:len(names)]
        if heads is not None and len(heads) == len(outs):
            a, c = _agreement([o for o, h in zip(outs, heads) if h], [q for q, h in zip(ref[k], heads) if h],
                              chosen, valid[k])
            agree[v], count[v] = agree[v] + a, count[v] + c
    err, agree, count, energy, stats_out, per_out = reduce_sum([err, agree, count, np.array([energy], float),
                                                                stats_out, per_out])
    total = float(energy[0]) or 1e-30
    rate = (lambda a, c: float(a / c) if c else None)
    spread = [q - s * s / c if c else 0.0 for s, q, c in stats_out]
    # an output that barely varies (a constant, a mask passed through) has no spread to weigh its error against
    varies = [c > 0 and v > 1e-9 * q for (_, q, c), v in zip(stats_out, spread)]
    # the two folds' refits together score every item once
    return HeldOut(int(starts[-1]), float((err[1] + err[2]) / total), float(err[0] / total),
                   rate(agree[1] + agree[2], count[1] + count[2]), rate(agree[0], count[0]), scored=scored,
                   outputs=[(name, float((per_out[1, j] + per_out[2, j]) / spread[j]), float(per_out[0, j] / spread[j]))
                            for j, name in enumerate(names) if varies[j]])


def _unsplit(stats: dict, items: int) -> str:
    """Why the statistics' two folds are not halves of the calibration items, or ''."""
    if items < 4:
        return f"{items} calibration item(s) make no halves to fit one and score the other"
    flat = [st.site.node for st in stats.values() if st is not None and st.folds and st.items != items]
    if flat:  # GPT-2's Conv1D: x.view(-1, width) @ W, the tokens of all items as rows
        return (f"a refit layer ({flat[0]}) reads the items' positions flattened into rows, so its halves are every "
                "other position, not every other item")
    return ""


def _summaries(ref: dict, pick, starts: np.ndarray, mine: list[int], chosen: list[int]) -> dict[int, np.ndarray]:
    """Each scored item's outputs from the original, one vector per item (an output's positions
    averaged: a language model's logits, a detector's anchors), by item index, on every rank."""
    rows: dict[int, np.ndarray] = {}
    for k, outs in ref.items():
        first, n = starts[mine[k]], starts[mine[k] + 1] - starts[mine[k]]
        parts = [(o.reshape(n, -1) if o.ndim <= 2 else o.reshape(n, -1, o.shape[-1]).mean(1)).astype(np.float64)
                 for o in pick(outs) if o.ndim and o.shape[0] == n]
        if parts:
            for i, row in enumerate(np.concatenate(parts, 1)):
                rows[int(first + i)] = row
    widths = set().union(*gather(sorted({len(r) for r in rows.values()})))
    if len(widths) != 1:  # no output per item, or outputs of another length per batch (a [items, tokens] score)
        return {}
    index = [int(i) for k in chosen for i in range(starts[k], starts[k + 1])]
    table = np.zeros((len(index), widths.pop()))
    for j, i in enumerate(index):
        if i in rows:
            table[j] = rows[i]
    table = reduce_sum([table])[0]  # each rank filled its own items' rows
    return dict(zip(index, table))


def repeated(rows: dict[int, np.ndarray]) -> int:
    """Items whose outputs from the original are exactly those of an item of the other half: the same input
    given twice (a data set repeated, each image next to its copy)."""
    # each output to 6 significant digits, those under 1e-6 of the row's largest as 0: a copy at another batch
    # position may differ in its last bits. (Scaled by the row's largest, every one-output item was +-1 and a
    # regression model's check never ran; by one scale for all, an outlier item made the others alike: review.)
    def key(row: np.ndarray) -> bytes:  # vectorised: an LLM's row is its vocabulary
        mag = np.abs(row.astype(np.float64))
        kept = np.where(mag < 1e-6 * (float(mag.max()) if row.size else 0.0), 0.0, row)
        exp = np.floor(np.log10(np.where(kept != 0, np.abs(kept), 1.0)))
        return (np.round(kept / 10.0 ** (exp - 5)) + 0.0).tobytes() + exp.tobytes()  # + 0.0: -0.0 is 0.0

    seen: dict[bytes, set[int]] = {}
    for i, row in rows.items():
        seen.setdefault(key(row), set()).add(i % 2)
    return sum(1 for row in rows.values() if len(seen[key(row)]) == 2)


def halves_differ(rows: dict[int, np.ndarray], draws: int = 999) -> float:
    """How likely halves drawn at random differ as much as the even and the odd items do: a
    permutation test on the distance between the two halves' mean outputs, each draw swapping the
    two items of every pair (2j, 2j+1) or not, seeded. 1.0 where there are too few pairs to tell."""
    pairs = [(rows[2 * j], rows[2 * j + 1]) for j in sorted({i // 2 for i in rows}) if 2 * j in rows and 2 * j + 1 in rows]
    if len(pairs) < MIN_PAIRS:
        return 1.0
    d = np.stack([a - b for a, b in pairs])
    gram = d @ d.T  # ||sum_j s_j d_j||^2 = s^T (D D^T) s for signs s: the even items' mean minus the odd ones'
    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=(draws, len(pairs)))
    parity = float(gram.sum())
    drawn = np.einsum("di,ij,dj->d", signs, gram, signs)
    return float((1 + np.sum(drawn >= parity * (1 - 1e-9))) / (1 + draws))


def scored_batches(program, batches: list, limit: int | None = None) -> list[int]:
    """Indices of the batches the check scores: all of them up to ``limit`` (``ROWS``) rows (tokens, or items),
    else pairs of neighbouring batches evenly spaced over all of them, at least one pair (a user's text and
    the text an LLM sampled after it both; neighbours, so batches of one item still give both halves items)."""
    limit = ROWS if limit is None else limit
    rows = [program.rows(b) for b in batches]
    if sum(rows) <= limit or len(batches) < 3:
        return list(range(len(batches)))
    pairs = max(1, int(limit / (2 * np.mean(rows))))
    firsts = np.unique(np.round(np.linspace(0, len(batches) - 2, pairs)).astype(int))
    return sorted({int(k) for f in firsts for k in (f, f + 1)})


def _agreement(outs: list, refs: list, chosen: np.ndarray, valid) -> tuple[float, float]:
    """(positions whose largest class score is the original's, positions counted) over the chosen
    items (and real tokens, ``valid``) of each class-score output."""
    agree = count = 0.0
    for o, q in zip(outs, refs):
        if not 2 <= o.ndim <= 3 or o.shape[0] != len(chosen) or o.shape[-1] < 2:  # (items[, tokens], classes)
            continue
        # (items, ...): one answer per item and position; where the inputs' values set the length (VITS's
        # frames) and the pruned model's differs, none of the original's positions is matched
        same = o.argmax(-1) == q.argmax(-1) if o.shape == q.shape else np.zeros(q.shape[:-1], bool)
        keep = np.broadcast_to(chosen.reshape((-1,) + (1,) * (same.ndim - 1)), same.shape)
        if valid is not None and tuple(np.shape(valid)) == same.shape:
            keep = keep & np.asarray(valid).astype(bool)
        agree, count = agree + float(same[keep].sum()), count + float(keep.sum())
    return agree, count


# ops an output's class scores pass through unchanged in order (what "the largest score" reads)
_PASS = (Ops.Movement | Ops.Copy | Ops.Cast | Ops.Dropout | Ops.MayAlias | Ops.Softmax
         | {"aten.log_softmax", "aten._log_softmax", "onnx.LogSoftmax"})


def class_outputs(ir) -> list[bool] | None:
    """Per model output, whether it holds class scores (its last axis): the output of a linear
    layer (a classifier's head, a language model's), through reshapes, casts and a softmax.
    Embeddings come out of a pooling or a normalisation instead, and get no agreement figure."""
    producers = ir.producers()
    out = []
    for name in ir.outputs:
        node = producers.get(name)
        while node is not None and node.op in _PASS and node.inputs:
            node = producers.get(node.inputs[0])
        head = node is not None and (node.op in Ops.Linear or node.op in Ops.MatMul or _biased_matmul(ir, node, producers))
        # the scores stay the last axis, of more than one class: a value per step (Linear(h, 1).squeeze(-1),
        # a forecaster's) laid out along time is no choice among classes
        width = ir.values[node.outputs[0]].shape[-1] if head and ir.values[node.outputs[0]].rank else None
        last = ir.values[name].shape[-1] if name in ir.values and ir.values[name].rank else None
        out.append(bool(head) and isinstance(width, int) and width > 1 and last == width)
    return out if any(out) else None


def _biased_matmul(ir, node, producers) -> bool:
    """An Add of a stored bias to a MatMul's output (an exporter's linear layer), not a residual ``x + x @ W``."""
    if node.op not in Ops.Add or len(node.inputs) != 2:
        return False
    kinds = [ir.values[i].kind if i in ir.values else "" for i in node.inputs]
    mm = [producers.get(i) is not None and producers[i].op in Ops.MatMul for i in node.inputs]
    return any(m and k in ("param", "buffer", "const") for m, k in zip(mm, kinds[::-1]))
