"""Every plan the default call weighs, timed where the issue measures: batch 1 and 8, one and two threads.

The default call (``gp.prune_onnx(src, dst, budget={"macs": m})``) makes one plan per width
multiple and time tilt (planning/widths.py, planning/time_tilt.py) and times each at the example's
shape on one thread. This diagnostic keeps every one of those plans, writes each pruned file, and
times them all beside the loaded (rewritten) original with tools/bench_runtime.py's ``timed``: do
the plans the timing cannot tell apart part elsewhere, and would another choice hold 0.85 x cut in
every cell? One row per model; speedups over the rewritten original (pruning's own part).

    .venv/bin/python tools/diag_plans.py --models ppocr_det_v4 nudenet_320n --json docs/data/plans.json
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench_runtime  # noqa: E402  (after the path)

import graphprune as gp  # noqa: E402
from graphprune.planning import widths  # noqa: E402

CELLS = ((1, 1), (1, 2), (8, 1), (8, 2))  # (batch, threads)


def weighed_plans(src: Path, shapes: dict | None, macs: float, dst: Path):
    """The default call on ``src``, keeping what its width tuning timed: (program, plans, times,
    the note saying which it kept)."""
    seen: dict = {}
    real = widths.time_in_turns

    def spy(program, plans, runtime):
        times = real(program, plans, runtime)
        seen.update(program=program, plans=list(plans), times=times)
        return times

    widths.time_in_turns = spy
    try:
        report = gp.prune_onnx(src, dst, budget={"macs": macs}, input_shapes=shapes, verify=False)
    finally:
        widths.time_in_turns = real
    note = next((n for n in report.notes if n.startswith("widths: tried")), "")
    return seen["program"], seen["plans"], seen["times"], note


def one_model(name: str, src: Path, shapes: dict | None, macs: float, out: Path) -> dict:
    program, plans, times, note = weighed_plans(src, shapes, macs, out / "default.onnx")
    paths = [program.save(out / "original.onnx")]
    for i, plan in enumerate(plans):
        paths.append(program.apply(plan).save(out / f"plan{i}.onnx"))
    labels = re.findall(r"(up to \d+(?: tilt [\d.]+)?): [\d.]+ ms", note)
    row = {"model": name, "macs": macs, "plans": labels, "planner_ms": times, "note": note, "cells": {}}
    print(f"{name} plans: " + " | ".join(f"{k}: {lab}, {ms:.3f} ms" for k, (lab, ms) in enumerate(zip(labels, times))))
    for batch, threads in CELLS:
        feeds = bench_runtime.feeds_for(paths[0], batch, shapes)
        if feeds is None:
            continue  # the file's batch is fixed
        ms = bench_runtime.timed(paths, feeds, threads)
        row["cells"][f"b{batch}_t{threads}"] = {"original_ms": ms[0], "speedups": [ms[0] / t for t in ms[1:]]}
        print(f"{name} b{batch} t{threads}: " + " ".join(f"{k}: {ms[0] / t:.2f}x" for k, t in enumerate(ms[1:])),
              flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", required=True, help="corpus ids (tools/fetch_corpus.py)")
    p.add_argument("--macs", type=float, default=0.5)
    p.add_argument("--json", type=Path)
    a = p.parse_args()
    corpus = bench_runtime.corpus_models()
    missing = [m for m in a.models if m not in corpus]
    if missing:
        sys.exit(f"not in the corpus CNNs: {missing}; fetch with tools/fetch_corpus.py, choose from {sorted(corpus)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models:
            out = Path(tmp) / name
            out.mkdir()
            rows.append(one_model(name, *corpus[name], a.macs, out))
            print(f"  {rows[-1]['note']}", flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
