"""Example inputs for tracing a transformers model, built from its config."""
from __future__ import annotations

from typing import Any, Mapping

import torch

from ..errors import PlanError, TraceError


def prepare(model: torch.nn.Module) -> torch.nn.Module:
    """Eval mode and no KV cache: a cache object is an output the engine cannot prune through."""
    model.eval()
    for cfg in _configs(model):
        if hasattr(cfg, "use_cache"):
            cfg.use_cache = False
    return model


def _configs(model: torch.nn.Module) -> list:
    """Every config the model's modules read, nested ones too: Llava's language model reads its text_config's
    use_cache, which the top-level config's does not set."""
    seen: dict[int, Any] = {}
    todo = [getattr(m, "config", None) for m in model.modules()]
    while todo:
        cfg = todo.pop()
        if cfg is None or id(cfg) in seen or not hasattr(cfg, "to_dict"):
            continue
        seen[id(cfg)] = cfg
        todo.extend(v for v in vars(cfg).values() if hasattr(v, "to_dict") and hasattr(v, "model_type"))
    return list(seen.values())


def _image_size(cfg: Any) -> tuple[int, int]:
    size = getattr(cfg, "image_size", None) or 224
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


AUDIO_SAMPLES = 4000  # wav2vec2's feature encoder turns it into 12 frames (stride 320)


def example_inputs(model: torch.nn.Module, batch: int = 2, seq_len: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    """Keyword inputs for ``model(**inputs)``: token ids (and an all-ones attention mask where the
    forward takes one; decoder token ids for an encoder-decoder) for text models, ``pixel_values``
    for vision models, ``input_values`` (:data:`AUDIO_SAMPLES` of a waveform) for speech models,
    ``input_features`` (log-mel frames, with decoder ids) for Whisper.

    Example:
        >>> inputs = graphprune.hf.example_inputs(model)            # doctest: +SKIP
        >>> graph = graphprune.trace(model, (), inputs)             # doctest: +SKIP
    """
    import inspect

    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    main = getattr(model, "main_input_name", "input_ids")
    params = inspect.signature(model.forward).parameters
    if main == "pixel_values":
        h, w = _image_size(cfg)
        channels = getattr(cfg, "num_channels", 3)
        return {"pixel_values": torch.randn(batch, channels, h, w, generator=gen)}
    if main == "input_values":  # a raw waveform (wav2vec2, HuBERT, WavLM): a quarter second at 16 kHz
        return {"input_values": torch.randn(batch, AUDIO_SAMPLES, generator=gen)}
    vocab = getattr(cfg, "vocab_size", None) or 100
    low = min(vocab - 1, 4)  # avoid special ids (padding, bos/eos) so padding-aware position ids see a full sequence
    if main == "input_features" and getattr(cfg, "num_mel_bins", None) and getattr(cfg, "max_source_positions", None):
        # Whisper's log-mel frames: its encoder takes exactly twice max_source_positions (the convs halve them)
        out = {"input_features": torch.randn(batch, cfg.num_mel_bins, 2 * cfg.max_source_positions, generator=gen)}
        if getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" in params:
            out["decoder_input_ids"] = torch.randint(low, vocab, (batch, 4), generator=gen)
        return out
    if main != "input_ids":
        raise TraceError(f"{type(model).__name__} takes '{main}' as its main input, which example_inputs does not "
                         "build (it builds input_ids, pixel_values, input_values and Whisper's input_features); "
                         "build the example inputs "
                         "yourself and pass them: graphprune.hf.prune(model, inputs) or graphprune.trace(model, (), "
                         "inputs)")
    max_pos = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None) or seq_len
    seq_len = min(seq_len, max_pos - 2)  # RoBERTa-style position ids start after the padding index
    ids = torch.randint(low, vocab, (batch, seq_len), generator=gen)
    out = {"input_ids": ids}
    if "attention_mask" in params:
        out["attention_mask"] = torch.ones_like(ids)
    if getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        # T5 does not derive them from input_ids as BART does; a shorter length keeps the two apart
        out["decoder_input_ids"] = torch.randint(low, vocab, (batch, max(2, seq_len // 2)), generator=gen)
    return out


def as_batches(model: torch.nn.Module, batches, what: str = "calibration batch") -> list[dict]:
    """Batches as keyword dicts, checked: a bare tensor or a one-item tuple is the forward's first input,
    a longer tuple is refused (its second item may be labels), text is refused (tokenize first), and token
    ids outside the vocabulary are named (a tokenizer of another model) instead of failing as an
    IndexError deep inside the embedding."""
    import inspect

    params = inspect.signature(model.forward).parameters
    names = [n for n, p in params.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
    out = []
    for k, b in enumerate(batches):
        if isinstance(b, str) or (isinstance(b, (list, tuple)) and b and all(isinstance(x, str) for x in b)):
            raise PlanError(f"{what} {k} is text; tokenize it first: tokenizer(texts, return_tensors='pt', "
                            "padding=True) gives the dict of tensors a transformers model takes")
        if isinstance(b, torch.Tensor):
            b = (b,)
        if isinstance(b, (tuple, list)) and len(b) > 1:  # (ids, labels) would feed labels as the attention mask
            raise PlanError(f"{what} {k} is a tuple of {len(b)}; give a dict by input name ({{'input_ids': ids, "
                            "'attention_mask': mask}}) or the token ids alone")
        if isinstance(b, (tuple, list)):
            b = dict(zip(names, b))
        if not isinstance(b, Mapping):
            raise PlanError(f"{what} {k} is a {type(b).__name__}; give a dict of tensors by input name "
                            "({'input_ids': ids}) or a tensor of token ids")
        main = getattr(model, "main_input_name", None)  # "input_ids" by default, also where forward takes other names
        mains = [main] if isinstance(main, str) else list(main) if isinstance(main, (list, tuple)) else []  # OneFormer's
        lacks = [n for n in mains if n in params and n not in b]
        if lacks and "inputs_embeds" not in b:  # else torch.export's "specify exactly one of ..."
            raise PlanError(f"{what} {k} has no '{lacks[0]}', the model's main input; it gives "
                            f"{', '.join(map(repr, b)) or 'nothing'}")
        unknown = [n for n in b if n not in params]
        if unknown and not takes_any:
            raise PlanError(f"{what} {k} names {', '.join(map(repr, unknown))}, which {type(model).__name__}.forward "
                            f"does not take; it takes {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
        out.append(dict(b))
        check_token_ids(model, out[-1], f"{what} {k}")
    return out


def check_token_ids(model: torch.nn.Module, batch: Mapping, where: str) -> None:
    """Refuse token ids the model's embedding has no row for, naming the input and the vocabulary."""
    try:
        emb = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):  # a model without token embeddings
        emb = None
    vocab = getattr(emb, "num_embeddings", None) or getattr(getattr(model, "config", None), "vocab_size", None)
    for name in ("input_ids",):  # a decoder may have a vocabulary of its own (Marian's decoder_vocab_size)
        ids = batch.get(name)
        if vocab and isinstance(ids, torch.Tensor) and ids.numel() and not ids.is_floating_point():
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= vocab:
                raise PlanError(f"{where}: {name} holds ids from {low} to {high}, but the model's embedding has "
                                f"{vocab} rows: tokenized with another model's tokenizer?")
