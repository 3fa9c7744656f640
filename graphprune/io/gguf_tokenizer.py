"""The tokenizer part of a GGUF file (``tokenizer.ggml.*``), read from a transformers tokenizer.

Byte-level BPE tokenizers (GPT-2, Llama 3, SmolLM2, Qwen2) go out as llama.cpp's ``gpt2`` model with
their merges; sentencepiece-style BPE with byte fallback (Llama 2) as ``llama`` with scores, through
the ``gguf`` package's own ``LlamaHfVocab``. Special token ids, add-bos/eos flags and the chat template
come from the ``gguf`` package's ``SpecialVocab``, as llama.cpp's convert_hf_to_gguf.py writes them.

llama.cpp splits text before BPE with the regexes of a named pre-tokenizer
(``tokenizer.ggml.pre``, src/llama-vocab.cpp). It is recognised here from the tokenizer's own
pre-tokenizer definition; one not recognised is refused unless ``pre_tokenizer=`` names it, since
a wrong one tokenizes text differently without any error.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from ..errors import PlanError

# the regexes of tokenizer.json Split pre-tokenizers, as the models' tokenizers spell them
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
           r"\s*[\r\n]+|\s+(?!\S)|\s+")
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
          r"\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {_LLAMA3: "llama-bpe", _QWEN2: "qwen2"}
NORMAL, UNUSED, CONTROL, USER_DEFINED = 1, 5, 3, 4  # gguf.TokenType values


@contextlib.contextmanager
def tokenizer_folder(tokenizer: Any) -> Iterator[Path]:
    """A folder holding tokenizer.json (+ tokenizer_config.json): the one given, or a temporary one
    the tokenizer object is saved to."""
    if isinstance(tokenizer, (str, os.PathLike)):
        folder = Path(tokenizer)
        if not (folder / "tokenizer.json").is_file():
            raise PlanError(f"{folder} has no tokenizer.json: pass the model's transformers folder or its "
                            "(fast) tokenizer object as tokenizer=")
        yield folder
        return
    if not hasattr(tokenizer, "save_pretrained") or not hasattr(tokenizer, "backend_tokenizer"):
        raise PlanError(f"tokenizer= takes a transformers fast tokenizer or its folder, not {type(tokenizer).__name__}")
    with tempfile.TemporaryDirectory(prefix="graphprune-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        yield Path(tmp)


def _pre_name(pre: dict | None) -> str | None:
    if pre is None:
        return None
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    types = [p.get("type") for p in parts]
    if types == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"  # llama.cpp's name (llama-vocab.cpp); the tokenizer model stays "gpt2"
    if types == ["Digits", "ByteLevel"] and parts[0].get("individual_digits") and parts[1].get("use_regex", True):
        return "smollm"
    if types == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        return _SPLITS.get((parts[0].get("pattern") or {}).get("Regex"))
    return None


def _bpe_tokens(doc: dict, n_vocab: int) -> tuple[list[str], list[int]]:
    vocab: dict[str, int] = dict(doc["model"]["vocab"])
    added = {a["id"]: a for a in doc.get("added_tokens", [])}
    for i, a in added.items():
        vocab[a["content"]] = i
    if max(vocab.values(), default=-1) >= n_vocab:
        raise PlanError(f"the tokenizer has token id {max(vocab.values())} but the model's embedding has {n_vocab} rows")
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].get("special") else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    return tokens, types


def add_tokenizer(writer: Any, tokenizer: Any, n_vocab: int, pre_tokenizer: str | None = None) -> str:
    """Write ``tokenizer.ggml.*`` for ``tokenizer`` (object or folder); returns the pre-tokenizer name."""
    import gguf

    with tokenizer_folder(tokenizer) as folder:
        doc = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        model = doc.get("model", {})
        if model.get("type") != "BPE":
            raise PlanError(f"tokenizer model '{model.get('type')}': GGUF export writes BPE tokenizers "
                            "(byte-level, or sentencepiece-style with byte fallback)")
        if model.get("byte_fallback"):
            vocab = gguf.LlamaHfVocab(folder)
            entries = list(vocab.all_tokens())
            if len(entries) > n_vocab:
                raise PlanError(f"the tokenizer has {len(entries)} tokens but the model's embedding {n_vocab} rows")
            entries += [(f"[PAD{i}]".encode(), -1000.0, UNUSED) for i in range(len(entries), n_vocab)]
            writer.add_tokenizer_model("llama")
            pre = pre_tokenizer or "default"
            writer.add_tokenizer_pre(pre)
            writer.add_token_list([t for t, _, _ in entries])
            writer.add_token_scores([s for _, s, _ in entries])
            writer.add_token_types([int(k) for _, _, k in entries])
            merges = False
        else:
            pre = pre_tokenizer or _pre_name(doc.get("pre_tokenizer"))
            if pre is None:
                raise PlanError("the tokenizer's pre-tokenizer is not one GGUF export recognises (gpt-2, smollm, "
                                "llama-bpe, qwen2): pass pre_tokenizer= with llama.cpp's name for it "
                                "(tokenizer.ggml.pre; see llama.cpp's src/llama-vocab.cpp)")
            tokens, types = _bpe_tokens(doc, n_vocab)
            writer.add_tokenizer_model("gpt2")
            writer.add_tokenizer_pre(pre)
            writer.add_token_list(tokens)
            writer.add_token_types(types)
            merges = True
        special = gguf.SpecialVocab(folder, load_merges=merges, n_vocab=n_vocab)
        special.add_to_gguf(writer, quiet=True)
        _add_special_flags(writer, folder, special)
    return pre


def _add_special_flags(writer: Any, folder: Path, special: Any) -> None:
    """Whether encoding adds bos / eos, as the tokenizer itself does, where its config does not say:
    llama.cpp's default differs between pre-tokenizers."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    with_special, plain = tok.encode("a").ids, tok.encode("a", add_special_tokens=False).ids
    for kind, pick in (("bos", 0), ("eos", -1)):
        if kind in special.add_special_token:
            continue
        tid = special.special_token_ids.get(kind)
        adds = tid is not None and len(with_special) > len(plain) and with_special[pick] == tid
        getattr(writer, f"add_add_{kind}_token")(bool(adds))
