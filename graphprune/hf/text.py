"""Calibration batches from text, cut by the model's own tokenizer (``graphprune.hf.text_batches``;
the CLI's ``--calib FILE.txt`` goes through it too, so there is one way text becomes batches)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import GraphpruneError


def text_batches(tokenizer: Any, text: str | Path | Sequence[str], seq_len: int = 128, batch_size: int = 8,
                 calib_tokens: int | None = None, samples: int | None = None,
                 attention_mask: bool = True) -> list[dict[str, torch.Tensor]]:
    """Keyword batches (``input_ids``, and ``attention_mask`` unless ``attention_mask=False``)
    for ``calib=``, from text cut by ``tokenizer``.

    ``text``: a path (a ``Path``, or a string naming an existing file) or a string is one token
    stream cut into sequences of ``seq_len`` tokens (the tail shorter than ``seq_len`` is left
    out); a list of strings is one sequence each, truncated at ``seq_len`` and each batch padded
    to its own longest sequence (right padding under ``attention_mask`` 0, which calibration
    leaves out of every statistic). At most ``samples`` sequences, and no more than needed to
    reach ``calib_tokens`` real tokens; the last batch may hold fewer than ``batch_size``.

    Example:
        >>> calib = graphprune.hf.text_batches(tok, "wiki.txt", seq_len=256, calib_tokens=32_768)  # doctest: +SKIP
        >>> model, report = graphprune.hf.prune(model, ratio=0.3, calib=calib)                       # doctest: +SKIP
    """
    for name, v in (("seq_len", seq_len), ("batch_size", batch_size), ("calib_tokens", calib_tokens),
                    ("samples", samples)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise GraphpruneError(f"text_batches: {name} must be a whole number >= 1, not {v!r}")
    if isinstance(text, (str, Path)):
        seqs = _stream(tokenizer, _read(text), seq_len)
    else:
        seqs = [list(tokenizer(t, truncation=True, max_length=seq_len)["input_ids"]) for t in text]
        seqs = [s for s in seqs if s]
        if not seqs:
            raise GraphpruneError("text_batches: the texts give no tokens")
    if samples is not None:
        seqs = seqs[:samples]
    if calib_tokens is not None:
        seqs = _within(seqs, calib_tokens)
    return [_batch(tokenizer, seqs[i:i + batch_size], attention_mask) for i in range(0, len(seqs), batch_size)]


def _read(text: str | Path) -> str:
    """A file's text where ``text`` names one, else ``text`` itself."""
    if isinstance(text, Path) or _names_a_file(text):
        try:
            return Path(text).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise GraphpruneError(f"cannot read calibration text '{text}': {exc}") from exc
    return text


def _names_a_file(text: str) -> bool:
    try:
        return "\n" not in text and Path(text).is_file()
    except (OSError, ValueError):  # too long for a file name, or a NUL in it: text
        return False


def _stream(tokenizer: Any, text: str, seq_len: int) -> list[list[int]]:
    ids = list(tokenizer(text, verbose=False)["input_ids"])  # longer than the model's maximum on purpose
    n = len(ids) // seq_len
    if n < 1:
        raise GraphpruneError(f"the text holds {len(ids)} tokens, fewer than one sequence of {seq_len} "
                              "(lower seq_len / --seq-len, or give more text)")
    return [ids[i * seq_len:(i + 1) * seq_len] for i in range(n)]


def _within(seqs: list[list[int]], tokens: int) -> list[list[int]]:
    """The first sequences, until ``tokens`` tokens are reached (the one that reaches it included)."""
    out, seen = [], 0
    for s in seqs:
        if seen >= tokens:
            break
        out.append(s)
        seen += len(s)
    return out


def _batch(tokenizer: Any, seqs: list[list[int]], attention_mask: bool) -> dict[str, torch.Tensor]:
    """Right-padded to the longest sequence of this batch; padding ids are the tokenizer's pad
    token (0 where it has none: under attention_mask 0 their value never counts)."""
    width = max(len(s) for s in seqs)
    if not attention_mask and any(len(s) != width for s in seqs):
        raise GraphpruneError("sequences of different lengths need padding, which only an attention mask "
                              "keeps out of the statistics: give a model that takes attention_mask, or text "
                              "cut into sequences of one length")
    pad = getattr(tokenizer, "pad_token_id", None)
    pad = 0 if pad is None else int(pad)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask} if attention_mask else {"input_ids": ids}
