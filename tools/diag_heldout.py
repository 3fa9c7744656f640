"""Does the report's held-out figure (graphprune/planning/heldout.py) say what a pruned LLM does on
other text? SmolLM2-135M pruned by the default hf.prune call, with the check and without it (its
cost), and the pruned model's next-token agreement with the original and perplexity measured on the
held-out text of each kind (tools/llm_data.py). CNN rows come from tools/diag_cnn.py, whose rows
carry the report's figures as "check".

    .venv/bin/python tools/diag_heldout.py --ratio 0.2 --json docs/data/heldout_llm.json
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")

import llm_data  # noqa: E402

import graphprune as gp  # noqa: E402


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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--calib", type=int, default=32, help="calibration sequences of 128 tokens (pydoc text)")
    p.add_argument("--sources", nargs="+", default=["pydoc", "news", "licences"], help="held-out text kinds")
    p.add_argument("--json", type=Path, default=None)
    ns = p.parse_args()
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
        old = json.loads(ns.json.read_text()) if ns.json.exists() else []
        ns.json.write_text(json.dumps(old + rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
