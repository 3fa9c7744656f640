"""What the pruned model does, measured once it is written: its latency beside the original's, and its
outputs beside the original's on calibration items.

The second exists because the only quality figure a calibrated prune reported was each refit layer's
error on its own calibration rows, which reads as good news: a user's EfficientNet-Lite0 at 60% of the
MACs showed "calibration error 0.109 -> 0.029" and agreed with the original on 13% of other photos.
The outputs are compared on calibration items (the data the prune was fit to, so other data will do
worse): top-1 agreement where a 2-D output may hold class scores, and the relative error. Where even
these collapse, a PruneWarning says so and what to try.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import PruneWarning
from .prune_report import Latency

SLOWER = 0.03  # a pruned model this much (and 10 us) slower than the original is reported: timing noise below
CHECKED_BATCHES = 4  # calibration batches the outputs are compared on (a few forward passes each)
COLLAPSED = 0.5  # top-1 agreement below this, on the very data the prune was fit to, is a model that lost its answers
FAR = 0.25  # ... with outputs this far from the original's (squared error over the outputs' energy)


def latency_after(pruned, program, runtime: str, before: float, report) -> None:
    """``report.latency``, with a PruneWarning and a note where the pruned model runs slower."""
    after = pruned.latency_ms(runtime)
    for _ in range(2):  # a busy spell inflates one measurement, rarely the best of three
        if after <= before * (1 + SLOWER) + 0.01:
            break
        after = min(after, pruned.latency_ms(runtime))
    slower = after > before * (1 + SLOWER) + 0.01
    report.latency = Latency(runtime, before, after, slower=slower, given_ms=program.given_latency_ms(runtime),
                             inputs=pruned.timed_shapes())
    if slower:
        slow = (f"the pruned model runs slower than the original on {runtime}: {after:.3f} ms vs {before:.3f} ms at "
                "the example inputs' shapes. Use round_to='auto' (the runtime's measured widths) or a larger "
                "round_to, or prune whole blocks or heads")
        warnings.warn(slow, PruneWarning, stacklevel=4)
        report.notes.append(slow)


def outputs_before(program, batches: list | None, plan) -> list | None:
    """The original's 2-D outputs on the first calibration batches, taken before the rewrite (a PyTorch
    model is pruned in place); None where there is nothing to compare."""
    if not batches or plan is None or plan.empty:
        return None
    ir = program.graph().ir
    if not any(ir.values[o].rank == 2 for o in ir.outputs if o in ir.values):
        return None  # class scores or embeddings only: an LLM's (batch, tokens, vocabulary) logits would cost GBs here
    return [[o if o.ndim == 2 else None for o in program.run(b)] for b in batches[:CHECKED_BATCHES]]


def outputs_after(pruned, batches: list | None, before: list | None, report) -> None:
    """A note comparing the pruned model's outputs with the original's (:func:`outputs_before`), and a
    PruneWarning where class scores lost their top-1 on most items and are far from the original's."""
    if before is None:
        return
    agree, items, num, den = 0, 0, 0.0, 0.0
    for batch, wants in zip(batches, before):
        for want, got in zip(wants, pruned.run(batch)):
            if want is None or want.shape != got.shape or not np.issubdtype(want.dtype, np.floating):
                continue
            num, den = num + float(((got - want) ** 2).sum()), den + float((want ** 2).sum())
            if want.shape[1] > 1:  # (items, classes): class scores, or an embedding
                agree += int((want.argmax(1) == got.argmax(1)).sum())
                items += want.shape[0]
    if not den:
        return
    top1 = f"top-1 agreement {agree / items:.2f} over {items} items (if they are class scores), " if items else ""
    report.notes.append(f"outputs on calibration data (the data the prune was fit to; other data will do worse): "
                        f"{top1}relative error {num / den:.3g}")
    # both: an embedding's argmax means nothing, but it would not be far from the original's as well
    if items and agree / items < COLLAPSED and num / den > FAR:
        warnings.warn(f"the pruned model agrees with the original on {agree / items:.0%} of {items} calibration "
                      "items, the very data it was fit to: it has lost most of its answers. Cut less, let "
                      "allocation='sensitivity' choose where, or recover it (graphprune.recover)",
                      PruneWarning, stacklevel=4)
