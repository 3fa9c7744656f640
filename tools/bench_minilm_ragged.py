"""Does calibrating from ragged, padded batches cost fidelity? all-MiniLM-L6-v2 pruned with the same
calibration sentences cut four ways, scored as tools/bench_minilm.py scores fidelity.

Calibration (the 64 sentences after the 256 evaluated ones, as in tools/bench_minilm.py):

- fixed: every batch padded to 64 tokens, batches of 16 (what tools/bench_minilm.py feeds);
- ragged length: ``graphprune.hf.text_batches(tok, sentences, seq_len=64, batch_size=16)``, each batch
  padded to its own longest sentence;
- ragged size and length: batches of 5, 11, 16 and 32 sentences, each padded to its own longest
  (``tok(..., padding=True)``, as users tokenize);
- ragged, half the tokens: the ragged batches with ``calib_tokens`` set to half their real tokens.

Pruned: the default call, ``graphprune.hf.prune(model, ratio=r, targets=("heads", "ffn"), calib=...)``
(obs + refit, sensitivity allocation). Metrics against the unpruned model on the 256 evaluated
sentences: mean / worst cosine of the embeddings, NN agreement, top-5 overlap (bench_minilm.fidelity).

    .venv/bin/python tools/bench_minilm_ragged.py                       # r = 0.25 0.5, writes out/minilm_ragged.md
    .venv/bin/python tools/bench_minilm_ragged.py --ratios 0.25 --out out/r.md
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import torch  # noqa: E402
from bench_minilm import calibration_batches, embed, fidelity, load_model, load_sentences, log, model_path  # noqa: E402

SIZES = (5, 11, 16, 32)
HEADERS = ["calibration", "pruned", "batches (sizes x lengths)", "real tokens", "padded positions", "cos mean",
           "cos min", "NN agree", "top-5 overlap", "prune time"]


def ragged_sizes(tok, sentences: list[str]) -> list[dict]:
    out, i, k = [], 0, 0
    while i < len(sentences):
        n = SIZES[k % len(SIZES)]
        out.append(dict(tok(sentences[i:i + n], padding=True, truncation=True, max_length=64, return_tensors="pt")))
        i, k = i + n, k + 1
    return out


def real_tokens(batches: list[dict]) -> int:
    return sum(int(b["attention_mask"].sum()) for b in batches)


def shapes(batches: list[dict]) -> str:
    return ", ".join("x".join(map(str, b["input_ids"].shape)) for b in batches)


def variants(tok, sentences: list[str]) -> list[tuple[str, list[dict], int | None]]:
    import graphprune as gp

    ragged = gp.hf.text_batches(tok, sentences, seq_len=64, batch_size=16)
    return [("fixed (padded to 64)", calibration_batches(tok, sentences), None),
            ("ragged length", ragged, None),
            ("ragged size and length", ragged_sizes(tok, sentences), None),
            ("ragged, calib_tokens = half", ragged, real_tokens(ragged) // 2)]


def used(batches: list[dict], tokens: int | None) -> list[dict]:
    """The batches a calib_tokens budget takes (graphprune.calib.collect.calib_batches' rule)."""
    if tokens is None:
        return batches
    out, seen = [], 0
    for b in batches:
        if seen >= tokens:
            break
        out.append(b)
        seen += int(b["attention_mask"].sum())
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "out" / "minilm_ragged.md")
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    torch.manual_seed(0)

    from transformers import AutoTokenizer

    import graphprune as gp
    from graphprune.util.tables import table

    pool = load_sentences(ns.sentences + ns.calib)
    sentences, calib_sentences = pool[:ns.sentences], pool[ns.sentences:]
    tok = AutoTokenizer.from_pretrained(model_path())
    batch = dict(tok(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    ref = embed(load_model(), batch)
    rows = []
    for ratio in ns.ratios:
        for name, calib, tokens in variants(tok, calib_sentences):
            taken = used(calib, tokens)
            log(f"{name}, {ratio:.0%}")
            t = time.perf_counter()
            model, _ = gp.hf.prune(load_model(), ratio=ratio, targets=("heads", "ffn"), calib=calib,
                                   calib_tokens=tokens)
            seconds = time.perf_counter() - t
            f = fidelity(ref, embed(model, batch))
            real = real_tokens(taken)
            padded = sum(b["input_ids"].numel() for b in taken) - real
            rows.append([name, f"{ratio:.0%}", shapes(taken), str(real), str(padded), f"{f['cos_mean']:.4f}",
                         f"{f['cos_min']:.4f}", f"{f['nn']:.1%}", f"{f['top5']:.3f}", f"{seconds:.1f} s"])
            print(table(HEADERS, rows[-1:]), flush=True)
    import transformers

    lines = ["# Calibration from ragged, padded batches: all-MiniLM-L6-v2", "",
             __doc__.split("\n\n", 1)[1].split("    .venv")[0].strip(), "",
             f"Python {platform.python_version()}, torch {torch.__version__}, transformers "
             f"{transformers.__version__}, {ns.threads} torch thread(s) on a shared 2-core machine (times are rough).",
             "", "Reproduce:", "", "```", ".venv/bin/python tools/bench_minilm_ragged.py", "```", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    ns.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {ns.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
