"""Write a (pruned) transformers decoder as a GGUF file for llama.cpp.

Models whose layers all keep attention and FFN with the same widths go out as their own llama.cpp
architecture (``llama``, ``qwen2``). Uneven widths or removed sub-layers go out as ``deci``, whose
graph (llama.cpp src/models/deci.cpp) reads ``head_count``, ``head_count_kv`` and
``feed_forward_length`` per layer, 0 marking a missing attention or FFN (graphprune/io/gguf_layers.py
says how sub-layers are packed). Tensor names and metadata keys are those llama.cpp's
convert_hf_to_gguf.py writes; q/k rows are reordered from transformers' rotate-half layout to the
adjacent pairs llama.cpp's normal RoPE rotates (``llama``, ``deci``). Norms and other 1-D tensors stay
float32, matrices take ``dtype``. The file is written atomically, and the same model gives the same bytes.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import GraphpruneError, PlanError
from ..util.atomic import atomic_path
from .gguf_layers import DecoderSpec, decoder_spec
from .gguf_quant import check_quant, quantize_file
from .gguf_tokenizer import add_tokenizer

DTYPES = ("f32", "f16", "bf16")


@dataclass
class GgufReport:
    """What :func:`export_gguf` wrote."""

    path: Path
    arch: str  # llama.cpp architecture: "llama", "qwen2" or "deci"
    dtype: str
    n_head: list[int]  # per block
    n_head_kv: list[int]
    n_ff: list[int]
    sources: list[list[str]]  # per block: the transformers modules it holds
    padded: list[str] = field(default_factory=list)  # zero sub-layers added so llama.cpp runs the model exactly
    pre_tokenizer: str = ""
    bytes: int = 0

    def __str__(self) -> str:
        uneven = len({*zip(self.n_head, self.n_head_kv, self.n_ff)}) > 1
        widths = (f"heads {self.n_head}, kv heads {self.n_head_kv}, FFN {self.n_ff}" if uneven else
                  f"{self.n_head[0]} heads, {self.n_head_kv[0]} kv heads, FFN {self.n_ff[0]} in every block")
        pad = f"; {len(self.padded)} zero sub-layer(s) added" if self.padded else ""
        return (f"{self.path}: GGUF '{self.arch}', {len(self.n_ff)} blocks ({widths}), {self.dtype}, "
                f"{self.bytes / 2**20:.1f} MiB{pad}")


def _gguf():
    try:
        import gguf
    except ImportError as e:
        raise GraphpruneError("export_gguf needs the 'gguf' package: pip install 'graphprune[gguf]' "
                              "(or pip install gguf)") from e
    return gguf


def _tensor_data(gguf, t: torch.Tensor, dtype: str) -> tuple[np.ndarray, Any]:
    """One tensor in the file's dtype (a copy the writer holds until it writes)."""
    if t.ndim == 1 or dtype == "f32":  # norms, biases, rope factors: float32, as convert_hf_to_gguf.py keeps them
        return t.to("cpu", torch.float32).contiguous().numpy().copy(), None
    if dtype == "f16":  # round to nearest even, as numpy's astype
        return t.to("cpu", torch.float16).contiguous().numpy().copy(), None
    f32 = t.to("cpu", torch.float32).contiguous().numpy()
    return gguf.quants.quantize(f32, gguf.GGMLQuantizationType.BF16), gguf.GGMLQuantizationType.BF16


def _hparams(w, spec: DecoderSpec, dtype: str) -> None:
    gguf = _gguf()
    blocks = spec.blocks
    per_layer = spec.arch == "deci"
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "bf16": gguf.LlamaFileType.MOSTLY_BF16}[dtype])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(spec.vocab)
    w.add_context_length(spec.context)
    w.add_embedding_length(spec.hidden)
    w.add_block_count(len(blocks))
    w.add_feed_forward_length([b.n_ff for b in blocks] if per_layer else blocks[0].n_ff)
    w.add_head_count([b.n_head for b in blocks] if per_layer else blocks[0].n_head)
    w.add_head_count_kv([b.n_head_kv for b in blocks] if per_layer else blocks[0].n_head_kv)
    w.add_key_length(spec.head_dim)
    w.add_value_length(spec.head_dim)
    w.add_rope_dimension_count(spec.head_dim)
    w.add_rope_freq_base(spec.rope_base)
    w.add_layer_norm_rms_eps(spec.eps)


def _model_folder(model: torch.nn.Module) -> Path | None:
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return Path(name) if name and (Path(name) / "tokenizer.json").is_file() else None


def export_gguf(model: torch.nn.Module, path: str | os.PathLike, dtype: str = "f16", *, tokenizer: Any = None,
                pre_tokenizer: str | None = None, name: str | None = None, quant: str | None = None) -> GgufReport:
    """Write ``model`` (a transformers ``LlamaForCausalLM`` or ``Qwen2ForCausalLM``, pruned by
    :func:`graphprune.hf.prune` or not) to ``path`` as GGUF for llama.cpp.

    ``dtype``: "f16", "bf16" or "f32" for the matrices. ``tokenizer``: the model's transformers
    tokenizer or its folder (default: the folder the model was loaded from, when it holds
    tokenizer.json). ``pre_tokenizer``: llama.cpp's name for the text splitting before BPE
    (``tokenizer.ggml.pre``), needed only where it is not recognised. ``quant``: "q8_0", "q4_k_m", ...
    quantizes the ``dtype`` file with llama.cpp's quantizer (needs llama-cpp-python, ``make llama-cpp``). Raises
    :class:`~graphprune.PlanError` naming what the file could not express, and writes nothing then.

    Example:
        >>> report = graphprune.export_gguf(pruned, "out.gguf", tokenizer=tok)  # doctest: +SKIP
        >>> print(report)                                                       # doctest: +SKIP
    """
    if dtype not in DTYPES:
        raise PlanError(f"dtype '{dtype}': export_gguf writes {', '.join(DTYPES)}")
    tokenizer = tokenizer if tokenizer is not None else _model_folder(model)
    if tokenizer is None:
        raise PlanError("export_gguf needs the model's tokenizer: pass tokenizer= (a transformers tokenizer or "
                        "its folder); llama.cpp cannot run a GGUF file without one")
    check_quant(quant)
    gguf = _gguf()
    spec = decoder_spec(model)
    path = Path(path)
    with atomic_path(path, suffix=".gguf.tmp") as tmp:
        if quant is None:
            pre = _write(gguf, tmp, spec, model, dtype, tokenizer, pre_tokenizer, name)
        else:  # the dtype file first, beside the output, then llama.cpp's quantizer; only the quantized one is kept
            fd, plain = tempfile.mkstemp(suffix=f".{dtype}.gguf.tmp", prefix=f".{path.name}.", dir=path.parent)
            os.close(fd)
            try:
                pre = _write(gguf, Path(plain), spec, model, dtype, tokenizer, pre_tokenizer, name)
                quantize_file(plain, tmp, quant)
            finally:
                os.remove(plain)
    b = spec.blocks
    return GgufReport(path, spec.arch, quant or dtype, [x.n_head for x in b], [x.n_head_kv for x in b],
                      [x.n_ff for x in b], [x.sources for x in b], spec.padded, pre, path.stat().st_size)


def _write(gguf, tmp: Path, spec: DecoderSpec, model, dtype: str, tokenizer, pre_tokenizer, name) -> str:
    w = gguf.GGUFWriter(tmp, spec.arch)
    w.add_name(name or f"{type(model).__name__} (graphprune)")
    _hparams(w, spec, dtype)
    pre = add_tokenizer(w, tokenizer, spec.vocab, pre_tokenizer)
    tensors = list(spec.globals_)
    if spec.rope_freqs is not None:
        tensors.append(("rope_freqs.weight", spec.rope_freqs))
    for i, b in enumerate(spec.blocks):
        tensors += [(f"blk.{i}.{n}", a) for n, a in b.tensors]
    for tname, a in tensors:
        data, raw = _tensor_data(gguf, a, dtype)
        w.add_tensor(tname, data, raw_dtype=raw)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return pre
