"""Scoring candidate plans: each variant's output error (or loss) over calibration batches,
relative to the original's output energy, sharded over torch.distributed ranks. Shared by the
allocation, the held-out allocation (crossfit.py) and depth scoring (depth.py). Front-end
neutral (no torch, no onnx here)."""
from __future__ import annotations

import numpy as np

from ..calib.distributed import reduce_sum, shard
from ..util.progress import progress

# "mse": squared output error relative to the output's energy; "kl": KL(original || variant) of the
# softmax over the last axis, per row (outputs that are logits: a causal LM's or a classifier's)
DIVERGENCE = "mse"


def output_errors(program, used: list, variants: list, what: str, loss=None, items=None,
                  energy: float | None = None) -> np.ndarray:
    """Each variant's squared output error on ``used`` relative to the output's energy (on
    ``used``, or ``energy`` where given); with ``loss`` (outputs, batch -> float: a causal LM's
    next-token loss), its mean loss instead. ``items`` (variant, batch index in ``used`` ->
    boolean mask over the batch's items, or None for all) restricts which items a variant's
    error counts; the energy counts every item."""

    n = len(used)
    mine = list(shard(n))
    used = [used[k] for k in mine]  # this rank's batches: the sums are reduced over ranks
    err = np.zeros(len(variants))
    if loss is not None:
        for v, k, outs in progress(program.run_variants(used, variants) if used else (), what, len(variants) * len(used)):
            err[v] += loss(outs, used[k]) / n
        return reduce_sum([err])[0]
    # the original through the variants' interpreter
    ref = [scored(program, outs) for _, _, outs in program.run_variants(used, [({}, {})])] if used else []
    valid = [program.valid_rows(b) for b in used]
    if DIVERGENCE == "kl":
        return _kl_errors(program, used, variants, what, ref, valid, mine, items)
    if energy is None:
        energy = reduce_sum([np.array(sum(squared(o, None, v) for outs, v in zip(ref, valid) for o in outs), float)])[0]
    runs = program.run_variants(used, variants) if used else ()
    for v, k, outs in progress(runs, what, len(variants) * len(used)):
        chosen = None if items is None else items(v, mine[k])
        err[v] += sum(squared(o, r, valid[k], chosen) for o, r in zip(scored(program, outs), ref[k])) / max(
            float(energy), 1e-30)
    return reduce_sum([err])[0]


def output_energy(program, used: list) -> float:
    """The original's squared output norm on ``used`` (real rows only), summed over ranks."""
    mine = [used[k] for k in shard(len(used))]
    runs = program.run_variants(mine, [({}, {})]) if mine else ()
    total = sum(squared(o, None, program.valid_rows(mine[k])) for _, k, outs in runs for o in scored(program, outs))
    return float(reduce_sum([np.array(total, float)])[0])


def scored(program, outs: list) -> list:
    """The outputs whose error weighs a variant: not the integer ones (a model that hands back its
    token ids, values in the thousands, set the scale every error was divided by)."""
    mask = program.scored_outputs()
    return outs if mask is None else [o for o, m in zip(outs, mask) if m]


def squared(out: np.ndarray, ref: np.ndarray | None, valid, items: np.ndarray | None = None) -> float:
    """Squared norm of ``out - ref`` (or ``out``) over real rows (padding left out), of the
    ``items`` chosen (a mask over the leading axis) where given. Outputs whose length the inputs' values set
    (VITS's frames, one token repeated by its predicted duration) may come out longer or shorter than the
    original's: both are padded with zeros, so what one has and the other lacks counts whole."""
    if ref is not None and out.shape != ref.shape and out.ndim == ref.ndim:
        size = tuple(max(a, b) for a, b in zip(out.shape, ref.shape))
        out, ref = (np.pad(a, [(0, n - k) for n, k in zip(size, a.shape)]) for a in (out, ref))
    d = _select(out if ref is None else out - ref, valid, items)
    return float(np.square(d, dtype=np.float64).sum())


def moments(out: np.ndarray, valid) -> np.ndarray:
    """(sum, sum of squares, count) of ``out``'s values over real rows: its variance about its mean,
    which an output's error is weighed against where its mean dwarfs its spread."""
    a = _select(out, valid, None).astype(np.float64)
    return np.array([a.sum(), np.square(a).sum(), a.size], np.float64)


def _select(a: np.ndarray, valid, items: np.ndarray | None) -> np.ndarray:
    """``a``'s chosen items (a mask over the leading axis), then its real rows (``valid``)."""
    if items is not None and a.ndim and a.shape[0] == items.shape[0]:
        a = a[items]
        valid = None if valid is None else np.asarray(valid)[items]
    if valid is not None:
        m = np.asarray(valid).astype(bool)
        if a.shape[: m.ndim] == m.shape:
            a = a[m]
    return a


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _rows(a: np.ndarray, valid, items) -> np.ndarray:
    """``a`` as (rows, classes): the real rows (and chosen items) only."""
    a = _select(a, valid, items)
    return a.reshape(-1, a.shape[-1]) if a.ndim >= 2 else a.reshape(1, -1)


def _kl_errors(program, used, variants, what, ref, valid, mine, items) -> np.ndarray:
    """Each variant's mean KL(original || variant) per row, over every output."""
    # the original's log-probabilities once per batch; a variant's chosen items are rows of them
    logp = [[_log_softmax(o) for o in outs] for outs in ref]
    count = reduce_sum([np.array(sum(_rows(lp, v, None).shape[0] for outs, v in zip(logp, valid) for lp in outs),
                                 float)])[0]
    err = np.zeros(len(variants))
    runs = program.run_variants(used, variants) if used else ()
    for v, k, outs in progress(runs, what, len(variants) * len(used)):
        chosen = None if items is None else items(v, mine[k])
        for o, lp in zip(scored(program, outs), logp[k]):
            lp = _rows(lp, valid[k], chosen)
            lq = _log_softmax(_rows(o, valid[k], chosen))
            err[v] += float((np.exp(lp) * (lp - lq)).sum()) / max(count, 1.0)
    return reduce_sum([err])[0]
