"""Calibration text the model writes itself (``graphprune.hf.generated_batches``; ``hf.prune(generated=N)``).

A prune calibrated on one kind of text keeps the channels and fits the repairs that text needs, and
loses on the kinds it never saw (docs/llm_pruning.md: calibrated on news, SmolLM2 at 20% loses 1.2x
on news and 2-2.6x on licences and Python docs). Text sampled from the model itself, starting from its
BOS token at temperature 1, follows the distribution it was trained on: every domain it knows, in
the proportions it knows them (as LLM-QAT's data-free distillation does). Mixed into the user's
batches it keeps the repair from fitting one domain; alone it calibrates a model with no data at all.
"""
from __future__ import annotations

import torch

from ..errors import PlanError
from ..util.progress import progress

CHUNK = 64  # sequences sampled side by side: one forward per token for all of them
# Share of the sampled sequences whose second half repeats their first: text that is copied from
# earlier in the context (licences, code) runs through the heads and units that copy, which sampled
# prose rarely calls on. Read at call time, so a benchmark can vary it (bench_llm_crossdomain.py).
REPEATED = 0.0


def start_token(model: torch.nn.Module) -> int:
    """The token the model's text begins with (config or generation config's BOS, else EOS), one its vocabulary
    holds: a config's default id (GPTBigCode's 50256) may lie past a smaller vocabulary."""
    vocab, outside = _vocab_size(model), []
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        for name in ("bos_token_id", "eos_token_id"):
            tok = getattr(cfg, name, None) if cfg is not None else None
            tok = tok[0] if isinstance(tok, (list, tuple)) and tok else tok
            if isinstance(tok, int) and (vocab is None or 0 <= tok < vocab):
                return tok
            if isinstance(tok, int):
                outside.append(f"{name} {tok}")
    if outside:
        raise PlanError(f"{type(model).__name__}'s config names {' and '.join(dict.fromkeys(outside))}, outside its "
                        f"vocabulary of {vocab} tokens, to start generated calibration text from: set "
                        "model.config.bos_token_id to a token of the vocabulary, pass generated=0, or calib= text alone")
    raise PlanError(f"{type(model).__name__}'s config names no bos_token_id or eos_token_id to start generated "
                    "calibration text from: set model.config.bos_token_id, or pass calib= text instead")


def _vocab_size(model: torch.nn.Module) -> int | None:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    rows = getattr(emb, "num_embeddings", None)
    return rows if isinstance(rows, int) else getattr(getattr(model, "config", None), "vocab_size", None)


@torch.no_grad()
def generated_batches(model: torch.nn.Module, n: int = 64, seq_len: int = 128, batch_size: int = 8,
                      seed: int = 0, temperature: float = 1.0, start: int | None = None) -> list[dict[str, torch.Tensor]]:
    """``n`` sequences of ``seq_len`` tokens sampled from the causal LM ``model`` (seeded: the same
    model and arguments give the same tokens), as ``calib=`` batches of ``batch_size``, each begun at
    ``start`` (default: the config's BOS token, else its EOS).

    Example:
        >>> calib = news_batches + graphprune.hf.generated_batches(model, n=64)   # doctest: +SKIP
    """
    for name, v in (("n", n), ("seq_len", seq_len), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise PlanError(f"generated_batches: {name} must be a whole number >= 1, not {v!r}")
    if not temperature > 0:
        raise PlanError(f"generated_batches: temperature must be > 0, not {temperature!r}")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    start = start_token(model) if start is None else start
    was_training = model.training
    model.eval()
    seqs, cached = [], True
    try:
        for first in range(0, n, CHUNK):
            rows = min(CHUNK, n - first)
            x = torch.full((rows, 1), start, dtype=torch.long, device=device)
            past, ids = None, x
            for _ in progress(range(seq_len), f"generating calibration text ({first + rows}/{n})", seq_len):
                logits = None
                if cached:
                    logits, past = _cached_step(model, x, past)
                    cached = logits is not None
                if logits is None:
                    logits = _whole_step(model, ids)
                probs = torch.softmax(logits.double().cpu() / temperature, -1)
                x = torch.multinomial(probs, 1, generator=gen).to(device)
                ids = torch.cat([ids, x], 1)
            seqs.append(ids[:, 1:].cpu())
    finally:
        model.train(was_training)
    ids = repeat_halves(torch.cat(seqs), REPEATED)
    return [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in ids.split(batch_size)]


def _cached_step(model, x: torch.Tensor, past):
    """The next token's logits from a key/value cache, and the cache; (None, None) where the model keeps its state
    otherwise (FalconMamba's and RecurrentGemma's outputs have no past_key_values; xLSTM's cache_params fail as one):
    the text is then sampled by running the whole sequence each step."""
    try:
        step = model(input_ids=x, past_key_values=past, use_cache=True)
        past = step.past_key_values
    except Exception:  # noqa: BLE001 - whatever a model does with a cache it does not keep: no cache, then
        return None, None
    return (step.logits[:, -1], past) if past is not None else (None, None)


def _whole_step(model, ids: torch.Tensor) -> torch.Tensor:
    try:
        return model(input_ids=ids, use_cache=False).logits[:, -1]
    except TypeError:  # a forward without use_cache
        return model(input_ids=ids).logits[:, -1]


def repeat_halves(ids: torch.Tensor, share: float) -> torch.Tensor:
    """``ids`` with the second half of every ``1/share``-th row (evenly spread) a copy of its first half."""
    half = ids.shape[1] // 2
    if share <= 0 or half == 0:
        return ids
    rows = [i for i in range(ids.shape[0]) if int((i + 1) * share) > int(i * share)]
    out = ids.clone()
    out[rows, half:2 * half] = ids[rows, :half]
    return out


def mix(calib: list[dict] | None, generated: list[dict]) -> list[dict]:
    """The user's batches, then the generated ones: the user's items keep their places, so the same
    data cut into other batches still gives the same model (the refit's folds alternate item by item
    over the whole list, so each fold holds both kinds)."""
    return list(calib or []) + list(generated)
