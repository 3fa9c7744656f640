"""Where the time stayed, when a pruned ONNX model's speedup falls well short of its MACs cut.

A user who halves SLANet's MACs and gets 1.06x has no way to tell why from the report: its time is in a
Loop decoder that the prune kept whole. onnxruntime's profiler splits both models' time by op type over
the main graph (a Loop's or If's body counts in its node), and the note names the op types that hold the
most of the original's time, with how much faster each got.
"""
from __future__ import annotations

import collections
import json
import os
import tempfile

SHORT = 0.85  # a speedup under this share of the MACs cut gets the note (issue 21's bar)
RUNS = 5  # runs profiled, the first (with its allocations) among them: the note gives shares, not timings
SHOWN = 3
PROTO_LIMIT = 2**31 - 1


def op_type_ms(model, feeds: dict) -> dict[str, float]:
    """ms per run by op type over ``model``'s main graph as onnxruntime optimised it, one thread."""
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
        so.enable_profiling, so.profile_file_prefix = True, os.path.join(tmp, "profile")
        so.optimized_model_filepath = os.path.join(tmp, "optimised.onnx")
        so.log_severity_level = 3  # its note on serialising an NCHWc graph
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        for _ in range(RUNS):
            sess.run(None, feeds)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
        main = {n.name for n in onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node}
    out: dict[str, float] = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("cat") == "Node" and name.endswith("_kernel_time") and name[:-len("_kernel_time")] in main:
            out[e["args"]["op_name"]] += e["dur"] / 1e3 / RUNS
    return dict(out)


def time_split_note(program, pruned, report) -> str | None:
    """The note, or None where the speedup is within :data:`SHORT` of the MACs cut, the cut is small, or the
    models are not ONNX."""
    lat = report.latency
    if program.framework != "ONNX" or lat is None or not report.macs_after or not lat.after_ms:
        return None
    cut, speedup = report.macs_before / report.macs_after, lat.before_ms / lat.after_ms
    if cut < 1.25 or speedup >= SHORT * cut or program.model.ByteSize() >= PROTO_LIMIT:
        return None  # (a model past protobuf's 2 GiB cannot be handed to a profiling session as bytes)
    feeds = program.latency_feeds()
    before, after = op_type_ms(program.model, feeds), op_type_ms(pruned.model, feeds)
    total = sum(before.values())
    if not total:
        return None
    top = [op for op in sorted(before, key=lambda k: -before[k])[:SHOWN] if before[op] >= 0.01 * total]
    parts = [f"{op} {before[op] / total:.0%} ({before[op] / after[op]:.2f}x faster pruned)" if after.get(op) else
             f"{op} {before[op] / total:.0%} (gone)" for op in top]
    return (f"speedup {speedup:.2f}x for {cut:.2f}x fewer MACs: the original's time by op type: {'; '.join(parts)} "
            "(onnxruntime's profiler, one thread, the main graph: a Loop or If counts its body). Ops the prune kept "
            "whole, or that cost by their size rather than their MACs, hold the time that did not shrink")
