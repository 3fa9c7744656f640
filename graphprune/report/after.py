"""What the pruned model does, measured once it is written: its latency beside the original's.

(Its outputs beside the original's on the calibration items were tried and not kept: EfficientNet-Lite0 at
60% of the MACs, refit on 32 photos, agreed with the original on 0.81 of them and on 0.19 of other photos,
so an in-sample figure reads as good news where the model has lost its answers. A held-out figure needs the
final plan refit on one half of the data and scored on the other.)
"""
from __future__ import annotations

from ..errors import warn
from .prune_report import Latency
from .time_split import time_split_note

SLOWER = 0.03  # a pruned model this much (and 10 us) slower than the original is reported: timing noise below


def latency_after(pruned, program, runtime: str, before: float, report, round_to="auto") -> None:
    """``report.latency``, with a PruneWarning and a note where the pruned model runs slower; the advice
    follows the ``round_to`` the prune was given (it told a user already at 'auto' to use 'auto')."""
    after = pruned.latency_ms(runtime)
    for _ in range(2):  # a busy spell inflates one measurement, rarely the best of three
        if after <= before * (1 + SLOWER) + 0.01:
            break
        after = min(after, pruned.latency_ms(runtime))
    slower = after > before * (1 + SLOWER) + 0.01
    report.latency = Latency(runtime, before, after, slower=slower, given_ms=program.given_latency_ms(runtime),
                             inputs=pruned.timed_shapes())
    if slower:
        widths = ("round_to='auto' (the runtime's measured widths) or a larger round_to" if round_to != "auto" else
                  "a larger round_to than the measured multiples (the widths note names them)")
        slow = (f"the pruned model runs slower than the original on {runtime}: {after:.3f} ms vs {before:.3f} ms at "
                f"the example inputs' shapes (best of repeated runs; on a busy machine, time it again). Try {widths}, "
                "a larger cut, or whole blocks or heads")
        warn(slow)
        report.notes.append(slow)
    split = time_split_note(program, pruned, report) if runtime == "onnxruntime" else None
    if split:
        report.notes.append(split)
