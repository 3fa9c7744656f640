"""Calibration statistics from any Program: each batch runs once with every site's input
captured, and each captured tensor is folded into running sums (and Grams where a refit or
OBS needs them) as soon as it exists, so memory is one batch's live values, never the
calibration set's activations. The run stops after the last site."""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import PlanError, PruneWarning
from ..util.progress import progress
from .distributed import shard
from .sites import Site
from .stats import SiteStats, reduce_stats


def calib_batches(program, calib, tokens: int | None = None) -> list:
    """``calib`` in the program's input form; with ``tokens``, only the first batches, taken
    until that many real tokens (``Program.rows``: attention mask 1, else items) were seen. The
    batch that reaches the budget is taken whole, and the rest of ``calib`` is never read, so a
    DataLoader or a generator over a large corpus can be given as it is."""
    if tokens is None:
        return check_trace(program, check_finite(program.batches(calib)))

    def within():
        seen, it = 0, iter(calib)
        while seen < tokens:  # checked before the next batch is read: a stream is read no further
            b = next(it, within)
            if b is within:
                return
            try:
                seen += program.rows(program.batches([b])[0])
            except PlanError:  # refused by program.batches below, which names the batch's index
                pass
            yield b

    return check_trace(program, check_finite(program.batches(within())))


def check_trace(program, batches: list) -> list:
    """``batches``, with a PruneWarning where the traced graph, nothing masked, does not compute what the model
    does on the first of them: statistics, ranks and repairs are all taken on the trace. transformers computes
    PaliGemma differently while traced (0.038 apart on its logits); the oracle met it only after a FAIL."""
    gap = program.trace_gap(batches[0]) if batches else 0.0
    if not gap > 1e-3:
        return batches
    what = (f"{gap:.3g} apart from the model on the first calibration batch" if gap != float("inf") else
            "a different set of outputs from the model's on the first calibration batch")
    warnings.warn(PruneWarning(
        f"the traced graph, nothing pruned, is {what}: the forward takes another path while traced (a library's "
        "branch for tracing, or a path the inputs' values choose), and calibration runs the trace, so the ranks and "
        "repairs fit a model that is not yours; prune without calib= (weight magnitude), or check the result on "
        "your own data"), stacklevel=3)
    return batches


def check_finite(batches: list) -> list:
    """``batches`` when every float input is finite: a NaN or Inf reaches the Grams, and the refit's
    solver then fails with a linear-algebra error that names nothing the user gave."""
    for k, batch in enumerate(batches):
        for name, x in _named_inputs(batch):
            if hasattr(x, "is_floating_point"):  # a tensor: checked where it is, integers (token ids) skipped
                bad = int((~x.isfinite()).sum()) if x.is_floating_point() else 0
                size = x.numel()
            else:
                values = np.asarray(x)
                bad = int((~np.isfinite(values)).sum()) if values.dtype.kind == "f" else 0
                size = values.size
            if bad:
                raise PlanError(f"calibration batch {k}, input {name}: {bad} of {size} values are NaN or Inf; "
                                "clean the data (or drop that batch) before pruning")
    return batches


def _named_inputs(batch) -> list[tuple[str, object]]:
    """(name, tensor) of a batch in either program's form: a dict by input name (onnxruntime), or
    (args, kwargs) (PyTorch)."""
    if isinstance(batch, dict):
        return [(f"'{n}'", v) for n, v in batch.items()]
    args, kwargs = batch
    return [leaf for i, a in enumerate(args) for leaf in _leaves(f"#{i}", a)] + \
        [leaf for n, v in kwargs.items() for leaf in _leaves(f"'{n}'", v)]


def _leaves(name: str, v) -> list[tuple[str, object]]:
    """An array's (name, value); a mapping's (a dict, a TensorDict: torchrl's inputs), each entry's, by key."""
    if hasattr(v, "__array__"):
        return [(name, v)]
    if hasattr(v, "items") and callable(v.items):
        return [leaf for k, x in v.items() for leaf in _leaves(f"{name}['{k}']", x)]
    return []


def collect(program, batches: list, sites: list[Site], gram: set[str]) -> dict[str, SiteStats]:
    """Statistics of every site's input on the original model (Grams for sites in ``gram``)."""
    stats = {s.node: SiteStats(s) for s in sites}
    by_value: dict[str, list[Site]] = {}
    for s in sites:
        by_value.setdefault(s.x, []).append(s)
    if not by_value:
        return stats
    mine = shard(len(batches))  # this rank's batches; all of them outside a process group
    for k in progress(mine, f"calibrating ({program.framework})", len(mine)):
        valid = program.valid_rows(batches[k])

        def take(name, x, k=k, valid=valid) -> None:
            for s in by_value[name]:
                stats[s.node].add(x, s.node in gram, valid, k)

        try:
            program.run(batches[k], capture=by_value, on_capture=take, outputs=False)
        except PlanError as exc:
            raise PlanError(f"calibration batch {k}: {exc}") from exc
    reduce_stats(stats)  # summed over the ranks, so every rank plans from every batch
    return stats
