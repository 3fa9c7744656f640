"""Quantize a GGUF file with llama.cpp's own quantizer (``llama_model_quantize``), through
llama-cpp-python's bindings (built by ``make llama-cpp``).

llama.cpp quantizes a matrix by rows in blocks (32 values for q4_0/q8_0, 256 for the k-quants); a
tensor whose row length is no whole number of blocks falls back to another type (at worst f16), and
llama.cpp's log says how many did. Pruned widths that are multiples of 256 (``round_to=256``) keep
every FFN matrix in the chosen type.
"""
from __future__ import annotations

import ctypes
import importlib.util
import os
from pathlib import Path

from ..errors import GraphpruneError, PlanError

# llama.cpp's enum llama_ftype (include/llama.h)
QUANTS = {"q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9, "q8_0": 7, "q2_k": 10, "q3_k_m": 12, "q4_k_s": 14,
          "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18}


def check_quant(quant: str | None) -> None:
    """A quant type llama.cpp's quantizer knows, with the quantizer installed: refused before any work
    (a missing llama-cpp-python was found only after the whole prune)."""
    if quant is None:
        return
    if quant not in QUANTS:
        raise PlanError(f"quant '{quant}': export_gguf quantizes to {', '.join(QUANTS)} (llama.cpp's names, lower case)")
    if importlib.util.find_spec("llama_cpp") is None:
        raise GraphpruneError(f"quant='{quant}' runs llama.cpp's quantizer, which needs llama-cpp-python: "
                              "build it with make llama-cpp (or pip install llama-cpp-python)")


def quantize_file(src: str | os.PathLike, dst: str | os.PathLike, quant: str, threads: int | None = None) -> None:
    """``src`` (an f32/f16/bf16 GGUF file) quantized to ``quant`` at ``dst``."""
    check_quant(quant)
    try:
        import llama_cpp
    except ImportError as e:
        raise GraphpruneError(f"quant='{quant}' runs llama.cpp's quantizer, which needs llama-cpp-python: "
                              "build it with make llama-cpp (or pip install llama-cpp-python)") from e
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTS[quant]
    params.nthread = threads or 0  # 0: every core
    rc = llama_cpp.llama_model_quantize(str(Path(src)).encode(), str(Path(dst)).encode(), ctypes.byref(params))
    if rc != 0:
        raise GraphpruneError(f"llama.cpp's quantizer failed ({rc}) quantizing {src} to {quant}: run with "
                              "llama_cpp's logging on (llama_cpp.llama_log_set) to see why")
