"""How sensitive a pruned SmolLM2 is to f16 activations (what llama.cpp's f16 matmuls round to).

The default call prunes SmolLM2-135M (tools/llm_data.py) on ``--calib`` sequences of ``--source``; the dense and
the pruned model, weights rounded to f16, are then run on held-out pydoc windows twice: as is, and
with every linear layer's input rounded to f16. Printed: the largest logit difference over the
largest |logit|, and the mean per-token KL. A refit that fits tiny calibration too closely shows here
before it shows in a GGUF file (tests/test_gguf_smollm2.py).

    .venv/bin/python tools/diag_f16.py --ratio 0.5 --calib 8 --seq-len 64 --allocation global
    .venv/bin/python tools/diag_f16.py --ratio 0.2 --calib 64 --seq-len 128
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import llm_data as L  # noqa: E402
import torch  # noqa: E402


@torch.no_grad()
def f16_error(model, ids: torch.Tensor) -> tuple[float, float]:
    """(max |logit difference| / max |logit|, mean per-token KL) from rounding linear inputs to f16."""
    for p in model.parameters():
        p.data = p.data.half().float()
    want = model(input_ids=ids).logits
    hooks = [m.register_forward_pre_hook(lambda m, i: (i[0].half().float(), *i[1:]))
             for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        got = model(input_ids=ids).logits
    finally:
        for h in hooks:
            h.remove()
    kl = torch.nn.functional.kl_div(got.log_softmax(-1), want.log_softmax(-1), log_target=True, reduction="sum")
    return float((got - want).abs().max() / want.abs().max()), float(kl) / (ids.shape[0] * ids.shape[1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--calib", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--allocation", default="auto")
    p.add_argument("--source", default="news", help="calibration text (tools/llm_data.py sources)")
    p.add_argument("--generated", nargs="+", default=["auto", "0"], help="hf.prune generated= values to compare")
    p.add_argument("--threads", type=int, default=2)
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
    import graphprune as gp

    dense, tok = L.load_smollm2()
    ids = L.eval_windows(L.eval_ids(tok, "pydoc"), seq_len=64, max_tokens=512)
    calib = L.calib_batches(tok, n=ns.calib, seq_len=ns.seq_len, batch_size=min(8, ns.calib), source=ns.source)
    rows = [("dense", *f16_error(dense, ids))]
    for g in ns.generated:
        model, _ = L.load_smollm2()
        model, _ = gp.hf.prune(model, ratio=ns.ratio, calib=calib, allocation=ns.allocation,
                               generated=g if g == "auto" else int(g))
        rows.append((f"pruned {ns.ratio:.0%}, generated={g}", *f16_error(model, ids)))
    print(f"calibration: {ns.calib} x {ns.seq_len} {ns.source} tokens, allocation={ns.allocation}")
    print("| model | max logit error / max logit | mean KL per token |\n|---|---|---|")
    for name, err, kl in rows:
        print(f"| {name} | {err:.4f} | {kl:.2e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
