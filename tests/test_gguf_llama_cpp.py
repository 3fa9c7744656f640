"""graphprune.export_gguf's files run in llama.cpp itself (llama-cpp-python; make llama-cpp builds it).

Next-token logits over a few prompts are compared with PyTorch's. Tolerances (docs/gguf.md): the
largest logit difference relative to the largest |logit|; f32 files with a float32 KV cache within
1e-3; f16 files, against the model with its weights rounded to float16 (what the file holds), within
2e-2; q8_0 files, against the unrounded model, within 5e-2.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from gguf_helpers import (
    f16_rounded,
    prompts,
    pruned_llama,
    pruned_qwen2,
    tiny_biased,
    tiny_llama,
    tiny_qwen2,
    tiny_tokenizer,
)

import graphprune as gp

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not built: run make llama-cpp")
gguf = pytest.importorskip("gguf", reason="export_gguf writes with the gguf package (pip install gguf)")

TOL = {"f32": 1e-3, "f16": 2e-2, "q8_0": 5e-2}


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def pruned():
    return pruned_llama()


def llama_cpp_logits(path, ids: list[int], f32_cache: bool) -> np.ndarray:
    kw = dict(type_k=0, type_v=0) if f32_cache else {}  # 0: GGML_TYPE_F32
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=64, n_batch=64, logits_all=True, n_threads=2, seed=0,
                          verbose=False, **kw)
    llm.eval(ids)
    return np.array(llm.scores[:len(ids)], dtype=np.float32)


def assert_logits_close(got: np.ndarray, want: np.ndarray, tol: float, what) -> float:
    """Largest difference within ``tol`` of the largest |logit|; the next token the same wherever
    PyTorch's top two logits are further apart than twice that (random tiny models have near ties)."""
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max()) / scale
    assert err <= tol, (what, err)
    top2 = np.sort(want, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * tol * scale
    assert np.array_equal(got.argmax(-1)[clear], want.argmax(-1)[clear]), what
    return err


@pytest.mark.parametrize("which", ["pruned", "unpruned", "qwen2", "qwen2-deci", "biased"])
@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_llama_cpp_runs_the_file_like_pytorch(which, dtype, pruned, tok, tmp_path):
    model = {"pruned": lambda: pruned, "unpruned": tiny_llama, "qwen2": tiny_qwen2, "qwen2-deci": pruned_qwen2,
             "biased": tiny_biased}[which]()
    path = tmp_path / f"{which}.gguf"
    gp.export_gguf(model, path, dtype, tokenizer=tok)
    ref = f16_rounded(model) if dtype == "f16" else model
    for ids in prompts():
        with torch.no_grad():
            want = ref(input_ids=torch.tensor([ids])).logits[0].numpy()
        got = llama_cpp_logits(path, ids, f32_cache=dtype == "f32")
        assert_logits_close(got, want, TOL[dtype], (which, dtype))


@pytest.mark.slow
def test_smollm2_pruned_data_aware_runs_in_llama_cpp(tmp_path):
    """SmolLM2-135M pruned from calibration data with global allocation (uneven widths: the default
    call's allocation keeps every layer's width equal on this model), exported, loaded by llama.cpp:
    next-token logits within the f32 and f16 tolerances of PyTorch's."""
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("llm_data", Path(__file__).parents[1] / "tools" / "llm_data.py")
    L = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(L)
    try:
        L.gguf_path()
    except FileNotFoundError as e:
        pytest.skip(f"SmolLM2 is not installed ({e}); make bench-deps installs it")
    model, tokenizer = L.load_smollm2()
    pruned, report = gp.hf.prune(model, calib=L.calib_batches(tokenizer, n=8), allocation="global", ratio=0.5)
    ids = L.eval_windows(tokenizer, seq_len=32, max_tokens=96).tolist()
    for dtype, ref in (("f32", pruned), ("f16", f16_rounded(pruned))):
        out = gp.export_gguf(pruned, tmp_path / f"smol-{dtype}.gguf", dtype, tokenizer=tokenizer)
        assert out.arch == "deci" and len(set(out.n_ff)) > 1
        for row in ids:
            with torch.no_grad():
                want = ref(input_ids=torch.tensor([row])).logits[0].numpy()
            got = llama_cpp_logits(out.path, row, f32_cache=dtype == "f32")
            assert_logits_close(got, want, TOL[dtype], ("SmolLM2", dtype))


def test_quantized_file_runs_in_llama_cpp(pruned, tok, tmp_path):
    out = gp.export_gguf(pruned, tmp_path / "q.gguf", "f16", tokenizer=tok, quant="q8_0")
    reader = gguf.GGUFReader(tmp_path / "q.gguf")
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert out.dtype == "q8_0" and types["blk.2.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert types["blk.2.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q.gguf"]  # the f16 file in between is gone
    for ids in prompts():
        with torch.no_grad():
            want = pruned(input_ids=torch.tensor([ids])).logits[0].numpy()
        assert_logits_close(llama_cpp_logits(tmp_path / "q.gguf", ids, f32_cache=False), want, TOL["q8_0"], "q8_0")
