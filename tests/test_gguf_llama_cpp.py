"""graphprune.export_gguf's files run in llama.cpp itself (llama-cpp-python; make llama-cpp builds it).

Next-token logits over a few prompts are compared with PyTorch's. Tolerances (docs/gguf.md): the
largest logit difference relative to the largest |logit|; f32 files with a float32 KV cache within
1e-3; f16 files, against the model with its weights rounded to float16 (what the file holds), within
2e-2; q8_0 files, against the unrounded model, within 5e-2. SmolLM2-135M, real weights, pruned from
calibration data: tests/test_gguf_smollm2.py.
"""
from __future__ import annotations

import pytest
import torch
from gguf_helpers import (
    TOL,
    assert_logits_close,
    f16_rounded,
    llama_cpp_logits,
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


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def pruned():
    return pruned_llama()


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
