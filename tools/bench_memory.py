"""A prune's memory: the estimate made before calibration (graphprune/planning/memory.py) against
the measured peak RSS, and how fast a 7B model is analysed and estimated.

    .venv/bin/python tools/bench_memory.py                 # every case below, each in its own process
    .venv/bin/python tools/bench_memory.py llama7b         # one case

Cases:
- ``llama7b``: transformers LlamaForCausalLM at Llama-2-7B's sizes (32 layers, hidden 4096, 32 heads,
  FFN 11008, bf16) built on the meta device, traced, its groups solved, and the memory of an OBS +
  refit prune calibrated on 64 sequences of 512 tokens in batches of 4 estimated; timed (wall clock,
  from the built model to the estimate).
- ``smollm2``: SmolLM2-135M (fp32, tools/llm_data.py) pruned by ``graphprune.hf.prune`` with
  calibration (16 sequences of 128 tokens, batches of 4; OBS + refit, heads and FFN units at 30%).
- ``resnet18``, ``mobilenetv2``: the zoo's CNNs at full size, calibrated on 4 batches of 8 images
  of 224x224 (OBS + refit, channels at 30%).

The peak RSS is VmHWM, reset at the prune's start (/proc/self/clear_refs); "growth" is the peak
less the resident set at the start (the weights already loaded, torch itself), the memory the
prune itself took. Results go to docs/data/bench_memory.json.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "data" / "bench_memory.json"
CASES = ["llama7b", "smollm2", "resnet18", "mobilenetv2"]
LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, use_cache=False)


def _llama7b() -> dict:
    import numpy as np
    import torch
    import transformers as T

    import graphprune as gp
    from graphprune.calib.stats import refittable
    from graphprune.planning.memory import estimate_memory, stat_sites
    from graphprune.planning.targets import select_groups

    t_build = time.perf_counter()
    with torch.device("meta"):
        model = gp.hf.prepare(T.LlamaForCausalLM(T.LlamaConfig(**LLAMA_7B)).to(torch.bfloat16))
    inputs = gp.hf.example_inputs(model, batch=1, seq_len=16)
    t0 = time.perf_counter()
    t_build = t0 - t_build
    dg = gp.trace(model, (), inputs)
    groups = select_groups(dg, None, (), None)
    t_analyse = time.perf_counter() - t0
    sites = stat_sites(dg, groups)
    batches = [{"input_ids": np.zeros((4, 512), np.int64), "attention_mask": np.ones((4, 512), np.int64)}] * 16
    est = estimate_memory(dg.ir, sites, {s.node for s in sites if refittable(s)}, batches, obs=True, refit=True)
    t_total = time.perf_counter() - t0
    return {"case": "llama7b", "params": sum(p.numel() for p in model.parameters()), "groups": len(groups),
            "sites": len(sites), "build_on_meta_s": round(t_build, 2), "analyse_s": round(t_analyse, 2),
            "analyse_and_estimate_s": round(t_total, 2),
            "estimate": est.to_dict(), "table": str(est)}


def _smollm2():
    import graphprune as gp

    sys.path.insert(0, str(ROOT / "tools"))
    from llm_data import calib_batches, load_smollm2

    model, tok = load_smollm2()
    calib = calib_batches(tok, n=16, seq_len=128, batch_size=4)
    _, report = gp.hf.prune(model, ratio=0.3, calib=calib, importance="obs", allocation="uniform", round_to=1,
                            measure_latency=False)
    return report


def _cnn(name: str):
    import torch

    import graphprune as gp
    from graphprune.zoo import build

    model, args = build(name, "full")
    model.eval()
    g = torch.Generator().manual_seed(0)
    calib = [(torch.randn(8, 3, 224, 224, generator=g),) for _ in range(4)]
    _, report = gp.prune(model, args, ratio=0.3, calib=calib, importance="obs", allocation="uniform", round_to=1,
                         measure_latency=False)
    return report


def _one(case: str) -> dict:
    if case == "llama7b":
        return _llama7b()
    t0 = time.perf_counter()
    report = _smollm2() if case == "smollm2" else _cnn(case)
    mem = report.memory
    return {"case": case, "seconds": round(time.perf_counter() - t0, 1), "estimate": mem.estimate.to_dict(),
            "peak_rss": mem.peak_rss, "start_rss": mem.start_rss, "since": mem.since,
            "table": str(mem.estimate)}


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        print(json.dumps(_one(argv[1])))
        return 0
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    for case in argv or CASES:
        print(f"{case}...", file=sys.stderr, flush=True)
        out = subprocess.run([sys.executable, __file__, "--child", case], cwd=ROOT, capture_output=True, text=True)
        if out.returncode:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results[case] = r
        print(r["table"])
        if case == "llama7b":
            print(f"7B: built on meta in {r['build_on_meta_s']} s; trace + groups {r['analyse_s']} s, with the estimate "
                  f"{r['analyse_and_estimate_s']} s")
        else:
            growth = r["peak_rss"] - r["start_rss"]
            print(f"{case}: estimated {_gib(r['estimate']['total'])} GiB, measured peak RSS {_gib(r['peak_rss'])} "
                  f"GiB ({_gib(r['start_rss'])} at the start, growth {_gib(growth)}) in {r['seconds']} s")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
