"""graphprune.export_gguf: pruned Llama-family models as GGUF files for llama.cpp.

Expected widths and weights are read off the pruned modules and compared with what
gguf.GGUFReader reads back from the file; llama.cpp itself runs the files in
tests/test_gguf_llama_cpp.py when llama-cpp-python is built (make llama-cpp).
"""
from __future__ import annotations

import copy
import importlib.util
import json

import numpy as np
import pytest
import torch
from gguf_helpers import (
    VOCAB,
    logits_reference,
    prompts,
    pruned_llama,
    pruned_qwen2,
    tiny_biased,
    tiny_llama,
    tiny_qwen2,
    tiny_tokenizer,
    unpair,
)

import graphprune as gp

T = pytest.importorskip("transformers", reason="export_gguf exports transformers models")
gguf = pytest.importorskip("gguf", reason="export_gguf writes with the gguf package (pip install gguf)")

@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def pruned():
    return pruned_llama()


def fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items()}


def tensors(reader) -> dict[str, np.ndarray]:
    """name -> float32 array in torch's (out, in) layout."""
    out = {}
    for t in reader.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        out[t.name] = a.reshape(tuple(reversed([int(x) for x in t.shape])))
    return out


def sublayers(model) -> list[tuple]:
    """The pruned model's remaining sub-layers in order, read off its modules:
    ("attn", heads, kv heads, module) / ("ffn", units, module)."""
    out = []
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        if hasattr(attn, "q_proj"):
            hd = attn.head_dim
            out.append(("attn", attn.q_proj.weight.shape[0] // hd, attn.k_proj.weight.shape[0] // hd, layer))
        if hasattr(mlp, "up_proj"):
            out.append(("ffn", mlp.up_proj.weight.shape[0], layer))
    return out


def file_sublayers(reader) -> list[tuple]:
    """The file's sub-layers in block order, zero padding (an output projection of zeros) left out."""
    f, ts = fields(reader), tensors(reader)
    out = []
    for i in range(f["deci.block_count"]):
        if f["deci.attention.head_count"][i] and ts[f"blk.{i}.attn_output.weight"].any():
            out.append(("attn", f["deci.attention.head_count"][i], f["deci.attention.head_count_kv"][i], i))
        if f["deci.feed_forward_length"][i] and ts[f"blk.{i}.ffn_down.weight"].any():
            out.append(("ffn", f["deci.feed_forward_length"][i], i))
    return out


def test_uneven_goes_out_as_deci_with_the_modules_widths(pruned, tok, tmp_path):
    want = sublayers(pruned)
    assert [w[:-1] for w in want] == [("ffn", 64), ("attn", 2, 1), ("attn", 4, 2), ("ffn", 96)]  # as planned
    report = gp.export_gguf(pruned, tmp_path / "p.gguf", "f32", tokenizer=tok)
    reader = gguf.GGUFReader(tmp_path / "p.gguf")
    f, ts = fields(reader), tensors(reader)
    assert f["general.architecture"] == "deci" == report.arch
    got = file_sublayers(reader)
    assert [g[:-1] for g in got] == [w[:-1] for w in want]
    hd = pruned.config.hidden_size // pruned.config.num_attention_heads
    assert f["deci.attention.key_length"] == f["deci.rope.dimension_count"] == hd
    for g, w in zip(got, want):
        i, layer = g[-1], w[-1]
        if g[0] == "attn":
            a = layer.self_attn
            q, k = ts[f"blk.{i}.attn_q.weight"], ts[f"blk.{i}.attn_k.weight"]
            assert q.shape == tuple(a.q_proj.weight.shape) and k.shape == tuple(a.k_proj.weight.shape)
            assert np.array_equal(unpair(q, g[1]), a.q_proj.weight.detach().numpy())
            assert np.array_equal(unpair(k, g[2]), a.k_proj.weight.detach().numpy())
            assert not np.array_equal(q, a.q_proj.weight.detach().numpy())  # the reorder did something
            assert np.array_equal(ts[f"blk.{i}.attn_v.weight"], a.v_proj.weight.detach().numpy())
            assert np.array_equal(ts[f"blk.{i}.attn_output.weight"], a.o_proj.weight.detach().numpy())
            assert np.array_equal(ts[f"blk.{i}.attn_norm.weight"], layer.input_layernorm.weight.detach().numpy())
        else:
            m = layer.mlp
            for name, lin in (("ffn_gate", m.gate_proj), ("ffn_up", m.up_proj), ("ffn_down", m.down_proj)):
                assert np.array_equal(ts[f"blk.{i}.{name}.weight"], lin.weight.detach().numpy())
    # the zero padding: a one-head attention before layer 0's FFN, a one-unit FFN after layer 1's attention
    assert f["deci.attention.head_count"] == [1, 2, 4] and f["deci.attention.head_count_kv"] == [1, 1, 2]
    assert f["deci.feed_forward_length"] == [64, 1, 96] and len(report.padded) == 2
    assert not ts["blk.0.attn_output.weight"].any() and not ts["blk.1.ffn_down.weight"].any()
    assert "output.weight" not in ts  # tied: llama.cpp uses token_embd
    assert np.array_equal(ts["token_embd.weight"], pruned.model.embed_tokens.weight.detach().numpy())


def test_uniform_goes_out_as_llama_with_scalars(tok, tmp_path):
    model = tiny_llama(tie_word_embeddings=False)
    report = gp.export_gguf(model, tmp_path / "u.gguf", "f16", tokenizer=tok)
    reader = gguf.GGUFReader(tmp_path / "u.gguf")
    f, ts = fields(reader), tensors(reader)
    assert f["general.architecture"] == "llama" == report.arch and f["llama.block_count"] == 4
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"], f["llama.feed_forward_length"]) \
        == (4, 2, 128)
    assert f["llama.rope.freq_base"] == model.config.rope_parameters["rope_theta"]
    assert f["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    types = {t.name: t.tensor_type for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.F16
    assert types["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    w = model.lm_head.weight.detach().numpy()
    assert np.allclose(ts["output.weight"], w, atol=1e-3) and ts["output.weight"].dtype == np.float32
    q = model.model.layers[2].self_attn.q_proj.weight.detach().numpy()
    assert np.array_equal(unpair(ts["blk.2.attn_q.weight"], 4), q.astype(np.float16).astype(np.float32))


def test_tokenizer_and_bytes_are_deterministic(tok, tmp_path):
    model = tiny_llama()
    a = gp.export_gguf(model, tmp_path / "a.gguf", "bf16", tokenizer=tok)
    gp.export_gguf(model, tmp_path / "b.gguf", "bf16", tokenizer=tok)
    assert (tmp_path / "a.gguf").read_bytes() == (tmp_path / "b.gguf").read_bytes()
    f = fields(gguf.GGUFReader(tmp_path / "a.gguf"))
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == a.pre_tokenizer == "gpt-2"
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == VOCAB  # padded to the embedding's rows
    assert tokens[:len(tok)] == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert f["tokenizer.ggml.token_type"][tok.eos_token_id] == int(gguf.TokenType.CONTROL)
    assert f["tokenizer.ggml.token_type"][len(tok)] == int(gguf.TokenType.UNUSED)
    assert f["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert f["tokenizer.ggml.add_bos_token"] == (tok("a").input_ids[0] == tok.bos_token_id)  # as the tokenizer does
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    assert len(f["tokenizer.ggml.merges"]) == len(merges) > 0


def test_llama3_rope_scaling_goes_out_as_rope_freqs(tok, tmp_path):
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    model = tiny_llama(rope_parameters=rope, max_position_embeddings=512)
    gp.export_gguf(model, tmp_path / "r.gguf", "f32", tokenizer=tok)
    ts = tensors(gguf.GGUFReader(tmp_path / "r.gguf"))
    inv = model.model.rotary_emb.inv_freq.double().numpy()
    plain = 10000.0 ** -(np.arange(0, 16, 2) / 16)
    assert not np.allclose(inv, plain)  # the scaling changed some frequencies
    assert np.allclose(plain / ts["rope_freqs.weight"], inv, rtol=1e-6)  # llama.cpp divides by the factor


def refuse(model, tok, tmp_path, match, **kw):
    out = tmp_path / "x.gguf"
    with pytest.raises(gp.GraphpruneError, match=match):
        gp.export_gguf(model, out, tokenizer=tok, **kw)
    assert not out.exists() and not list(tmp_path.glob(".x.gguf*"))  # nothing partial left


def test_refusals_name_what_gguf_cannot_express(tok, tmp_path):
    model = tiny_llama()
    refuse(model, tok, tmp_path, "dtype 'q4'", dtype="q4")
    refuse(model, None, tmp_path, "needs the model's tokenizer")
    refuse(model, tok, tmp_path, "quant 'q3'", quant="q3")
    scaled = copy.deepcopy(model)
    scaled.model.layers[1].self_attn.scaling = 0.3
    refuse(scaled, tok, tmp_path, r"model.layers.1.self_attn: attention scale 0.3")
    normed = copy.deepcopy(model)
    normed.model.layers[0].self_attn.q_norm = torch.nn.Identity()
    refuse(normed, tok, tmp_path, r"model.layers.0.self_attn.q_norm")
    dynamic = tiny_llama(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    refuse(dynamic, tok, tmp_path, "RoPE type 'dynamic'")
    gpt2 = T.GPT2LMHeadModel(T.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB))
    refuse(gpt2, tok, tmp_path, "GPT2LMHeadModel")
    from tokenizers import pre_tokenizers

    split = copy.deepcopy(tok)
    split.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    refuse(model, split, tmp_path, "pass pre_tokenizer=")


@pytest.mark.filterwarnings("ignore::graphprune.errors.PruneWarning")  # a ratio that rounds to 0 in one layer
def test_qwen2_uniform_keeps_halves_and_uneven_goes_to_deci(tok, tmp_path):
    model = tiny_qwen2()
    gp.export_gguf(model, tmp_path / "q.gguf", "f32", tokenizer=tok)
    f, ts = fields(gguf.GGUFReader(tmp_path / "q.gguf")), tensors(gguf.GGUFReader(tmp_path / "q.gguf"))
    a = model.model.layers[1].self_attn
    assert f["general.architecture"] == "qwen2"  # llama.cpp's qwen2 graph rotates halves, as transformers does
    assert np.array_equal(ts["blk.1.attn_q.bias"], a.q_proj.bias.detach().numpy())
    assert np.array_equal(ts["blk.1.attn_k.weight"], a.k_proj.weight.detach().numpy())
    pruned, _ = gp.hf.prune(copy.deepcopy(model), targets=("heads",), ratio=0.5,
                            ratios={"model.layers.1.self_attn.q_proj": 0.0})
    gp.export_gguf(pruned, tmp_path / "d.gguf", "f32", tokenizer=tok)
    reader = gguf.GGUFReader(tmp_path / "d.gguf")
    f, ts = fields(reader), tensors(reader)
    assert f["general.architecture"] == "deci" and f["deci.attention.head_count"] == [2, 4]
    a = pruned.model.layers[0].self_attn
    assert np.array_equal(unpair(ts["blk.0.attn_q.bias"][:, None], 2)[:, 0], a.q_proj.bias.detach().numpy())
    assert np.array_equal(unpair(ts["blk.0.attn_k.bias"][:, None], 1)[:, 0], a.k_proj.bias.detach().numpy())
    assert np.array_equal(ts["blk.0.attn_v.bias"], a.v_proj.bias.detach().numpy())
    # even widths, but heads pruned: llama.cpp's qwen2 loader wants q as wide as the hidden size
    fewer, _ = gp.hf.prune(copy.deepcopy(model), targets=("heads",), ratio=0.5)
    widths = {layer.self_attn.q_proj.out_features for layer in fewer.model.layers}
    assert len(widths) == 1 and widths != {fewer.config.hidden_size}
    assert gp.export_gguf(fewer, tmp_path / "e.gguf", "f32", tokenizer=tok).arch == "deci"


@pytest.mark.parametrize("which", ["pruned", "unpruned", "qwen2", "qwen2-deci", "llama3-rope", "biased"])
def test_file_computes_the_model_as_llama_cpp_reads_it(which, pruned, tok, tmp_path):
    """tests/gguf_helpers.py runs the file the way llama.cpp's deci/llama/qwen2 graphs do (numpy,
    float64), so the default run checks the layout, the pair reorder and the padding without llama.cpp."""
    rope = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8}
    model = {"pruned": lambda: pruned, "unpruned": lambda: tiny_llama(tie_word_embeddings=False),
             "qwen2": tiny_qwen2, "qwen2-deci": pruned_qwen2, "llama3-rope": lambda: tiny_llama(rope_parameters=rope),
             "biased": tiny_biased}[which]()
    gp.export_gguf(model, tmp_path / "m.gguf", "f32", tokenizer=tok)
    for ids in prompts():
        with torch.no_grad():
            want = model(input_ids=torch.tensor([ids])).logits[0].double().numpy()
        got = logits_reference(tmp_path / "m.gguf", ids)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max(), which


def test_quant_needs_llama_cpp(pruned, tok, tmp_path):
    if importlib.util.find_spec("llama_cpp") is not None:
        pytest.skip("llama-cpp-python is built, so quant= does not refuse; test_quantized_file_runs checks it")
    refuse(pruned, tok, tmp_path, "make llama-cpp", quant="q8_0")


