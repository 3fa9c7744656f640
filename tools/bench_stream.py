"""Streamed (block-by-block) pruning of a checkpoint folder: wall time and peak memory.

    .venv/bin/python tools/make_llama_checkpoint.py out/llama-3b --preset llama-3.2-3b
    .venv/bin/python tools/bench_stream.py out/llama-3b --ratio 0.2 --calib 8x128 --json docs/data/stream_3b.json

Calibration is random token ids (the synthetic checkpoints have no tokenizer): the figure measured
is time and memory, not quality (docs/llm_pruning.md has quality on a real model). The default
call prunes heads and FFN units with refit; peak RSS is the process's high-water mark (VmHWM), read
over the whole run (each block's prune resets the kernel's mark; the streamed report keeps the
maximum), including Python, torch and transformers themselves. ``cpu_seconds`` (the process's CPU
time, all threads) and the load average at the end tell a busy machine's figure from a quiet one's.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

import graphprune as gp
from graphprune.io.lazy_checkpoint import LazyCheckpoint
from graphprune.planning.memory import peak_rss


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--out", type=Path, default=None, help="where the pruned folder goes (default FOLDER-pruned)")
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--calib", default="32x128", help="sequences x tokens of random ids")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--allocation", default="auto")
    p.add_argument("--json", type=Path, default=None)
    ns = p.parse_args(argv)
    n, length = (int(v) for v in ns.calib.split("x"))
    vocab = json.loads((ns.folder / "config.json").read_text())["vocab_size"]
    g = torch.Generator().manual_seed(0)
    calib = [{"input_ids": torch.randint(0, vocab, (ns.batch, length), generator=g)} for _ in range(n // ns.batch)]
    out = ns.out or ns.folder.with_name(ns.folder.name + "-pruned")
    size = sum(LazyCheckpoint(ns.folder).get(k).numel() for k in LazyCheckpoint(ns.folder).names())
    torch.set_num_threads(2)
    t, cpu = time.perf_counter(), time.process_time()
    report = gp.hf.prune(ns.folder, out=out, calib=calib, ratio=ns.ratio, allocation=ns.allocation,
                         measure_latency=False)
    seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
    row = {"folder": str(ns.folder), "params": size, "params_after": report.params_after, "ratio": ns.ratio,
           "calib": ns.calib, "allocation": ns.allocation, "seconds": round(seconds, 1),
           "cpu_seconds": round(cpu, 1), "load_avg_1min": round(os.getloadavg()[0], 1),
           "peak_rss_gib": round(report.peak_rss / 2**30, 2), "blocks": len(report.layers)}
    t = time.perf_counter()
    model = gp.hf.load_pruned(out)
    row["reload_s"] = round(time.perf_counter() - t, 1)
    row["reloaded_params"] = sum(q.numel() for q in model.parameters())
    row["peak_rss_after_reload_gib"] = round(max(report.peak_rss, peak_rss()) / 2**30, 2)
    print(report)
    print(json.dumps(row, indent=1))
    if ns.json:
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(row, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
