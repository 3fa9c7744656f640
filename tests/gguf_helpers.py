"""What tests/test_gguf.py and tests/test_gguf_llama_cpp.py share: tiny models and tokenizer built in
code, and a numpy forward of a GGUF decoder file as llama.cpp's graphs compute it.

The forward follows llama.cpp's src/models/deci.cpp (llama and qwen2 are its special case of every
layer present at one width): RMS norms, normal RoPE on adjacent pairs (NEOX halves for qwen2) with
``rope_freqs`` dividing the frequencies, grouped-query attention with query head ``h`` reading
kv head ``h // (n_head / n_head_kv)``, a layer with ``n_head == 0`` passing its input to the FFN
unchanged, and a layer with ``n_ff == 0`` skipped whole (``continue`` before its output becomes
the next layer's input: llama.cpp drops such a layer's attention). It runs without llama.cpp, so
the default test run checks that a file computes what the PyTorch model does.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch

import graphprune as gp
from graphprune.backends.torch_depth import remove_blocks
from graphprune.errors import PruneWarning

VOCAB = 320


def tiny_tokenizer():
    """A byte-level BPE tokenizer trained in code on two sentences (no download): 300 tokens."""
    import transformers as T
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"])
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 10 + ["hello world, pruned models"] * 5,
                            trainer)
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


def tiny_llama(seed: int = 0, **over):
    import transformers as T

    cfg = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, use_cache=False, tie_word_embeddings=True)
    cfg.update(over)
    torch.manual_seed(seed)
    return T.LlamaForCausalLM(T.LlamaConfig(**cfg)).eval()


def pruned_llama():
    """Widths uneven (per-module ratios: layer 2 keeps more FFN units and all heads), then sub-layers
    removed the way depth pruning removes them: layer 0's attention, layer 1's FFN, all of layer 3. The
    file then needs both kinds of zero padding (graphprune/io/gguf_layers.py) and leaves layer 3 out."""
    with warnings.catch_warnings():  # a 2-head group at ratio 0.5 rounds to nothing: fine here
        warnings.simplefilter("ignore", PruneWarning)
        model, _ = gp.hf.prune(tiny_llama(), targets=("heads", "ffn"), ratio=0.5,
                               ratios={"model.layers.2.mlp.up_proj": 0.25, "model.layers.2.self_attn.q_proj": 0.0})
    ids = {"input_ids": torch.randint(0, VOCAB, (1, 12), generator=torch.Generator().manual_seed(0))}
    dg = gp.trace(model, (), ids)
    gone = {("self_attn", 0), ("mlp", 1), ("self_attn", 3), ("mlp", 3)}
    blocks = [b for b in dg.blocks if any(f"model.layers.{i}.{m}." in p for m, i in gone for p in b.params)]
    assert len(blocks) == 4
    remove_blocks(model, dg, blocks, (), ids)
    return model


def tiny_qwen2(seed: int = 0):
    import transformers as T

    cfg = T.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, use_cache=False, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = T.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # transformers initialises biases to 0: give them values a wrong layout would show
        for layer in model.model.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                lin.bias.normal_(0, 0.5)
    return model


def pruned_qwen2():
    """Qwen2 (q/k/v biases) with layer 0's heads halved and layer 1's kept: out as deci."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruneWarning)
        model, _ = gp.hf.prune(tiny_qwen2(), targets=("heads",), ratio=0.5,
                               ratios={"model.layers.1.self_attn.q_proj": 0.0})
    return model


def tiny_biased():
    """Llama with attention and MLP biases (as compensation may add to o_proj / down_proj), given values."""
    model = tiny_llama(attention_bias=True, mlp_bias=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.5)
    return model


def unpair(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's adjacent rotary pairs back to transformers' halves, per head."""
    hd = w.shape[0] // heads
    return np.concatenate([w.reshape(heads, hd // 2, 2, -1)[:, :, j] for j in (0, 1)], axis=1).reshape(w.shape)


def prompts(n: int = 3, length: int = 12) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, VOCAB, (length,), generator=g).tolist() for _ in range(n)]


def f16_rounded(model):
    """The model with every weight rounded to float16 and computed in float32: what an f16 file holds, so
    a comparison measures llama.cpp's arithmetic, not the rounding (a heavily pruned model can amplify
    the rounding alone to several percent of its logits)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            if p.dim() == 2:
                p.copy_(p.half().float())
    return out


# ------------------------------------------------------------------ the file run as llama.cpp runs it


def read(path) -> tuple[dict, dict]:
    """(metadata fields, name -> float64 array in torch's (out, in) layout)."""
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items()}
    tensors = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)
               .reshape(tuple(reversed([int(x) for x in t.shape]))) for t in reader.tensors}
    return fields, tensors


def _rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def _rope(x, cos, sin, neox: bool):
    """x: (T, heads, hd); cos/sin: (T, hd/2)."""
    c, s = cos[:, None], sin[:, None]
    if neox:
        a, b = np.split(x, 2, axis=-1)
        return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    return out


def _lin(t, name, x):
    y = x @ t[f"{name}.weight"].T
    return y + t[f"{name}.bias"] if f"{name}.bias" in t else y


def _attention(t, p, x, nh, nkv, hd, cos, sin, neox):
    n = len(x)
    q = _rope(_lin(t, f"{p}.attn_q", x).reshape(n, nh, hd), cos, sin, neox)
    k = _rope(_lin(t, f"{p}.attn_k", x).reshape(n, nkv, hd), cos, sin, neox)
    v = _lin(t, f"{p}.attn_v", x).reshape(n, nkv, hd)
    kv = np.arange(nh) // (nh // nkv)
    scores = np.einsum("qhd,khd->hqk", q, k[:, kv]) / np.sqrt(hd)
    scores = np.where(np.tril(np.ones((n, n), bool)), scores, -np.inf)
    w = np.exp(scores - scores.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("hqk,khd->qhd", w, v[:, kv]).reshape(n, nh * hd)
    return _lin(t, f"{p}.attn_output", out)


def logits_reference(path, ids: list[int]) -> np.ndarray:
    f, t = read(path)
    arch = f["general.architecture"]
    n_layer = f[f"{arch}.block_count"]
    per = lambda key: (f[f"{arch}.{key}"] if isinstance(f[f"{arch}.{key}"], list) else [f[f"{arch}.{key}"]] * n_layer)
    heads, kvs, ffs = per("attention.head_count"), per("attention.head_count_kv"), per("feed_forward_length")
    hd, eps = f[f"{arch}.attention.key_length"], f[f"{arch}.attention.layer_norm_rms_epsilon"]
    inv = f[f"{arch}.rope.freq_base"] ** -(np.arange(0, hd, 2) / hd) / t.get("rope_freqs.weight", 1.0)
    angle = np.arange(len(ids))[:, None] * inv
    cos, sin = np.cos(angle), np.sin(angle)
    x = t["token_embd.weight"][ids]
    for il in range(n_layer):
        p = f"blk.{il}"
        cur = x
        if heads[il]:
            cur = _attention(t, p, _rms(x, t[f"{p}.attn_norm.weight"], eps), heads[il], kvs[il], hd, cos, sin,
                             arch == "qwen2")
        if ffs[il] == 0:
            continue
        ffn_inp = cur + x if heads[il] else cur
        h = _rms(ffn_inp, t[f"{p}.ffn_norm.weight"], eps)
        gate = _lin(t, f"{p}.ffn_gate", h)
        x = _lin(t, f"{p}.ffn_down", gate / (1 + np.exp(-gate)) * _lin(t, f"{p}.ffn_up", h)) + ffn_inp
    x = _rms(x, t["output_norm.weight"], eps)
    return x @ t.get("output.weight", t["token_embd.weight"]).T


# ------------------------------------------------------------------ llama.cpp itself (llama-cpp-python)

# largest logit difference relative to the largest |logit| (docs/gguf.md): f32 with a float32 KV cache
# against the model; f16 with llama.cpp's f16 cache against the model rounded to float16; q8_0 against the model
TOL = {"f32": 1e-3, "f16": 2e-2, "q8_0": 5e-2}


def llama_cpp_logits(path, ids: list[int], f32_cache: bool) -> np.ndarray:
    """llama.cpp's logits at every position of ``ids`` (2 threads; float32 KV cache if asked, else its f16 default)."""
    import llama_cpp

    kw = dict(type_k=0, type_v=0) if f32_cache else {}  # 0: GGML_TYPE_F32
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=max(64, len(ids)), n_batch=max(64, len(ids)), logits_all=True,
                          n_threads=2, seed=0, verbose=False, **kw)
    llm.eval(ids)
    out = np.array(llm.scores[:len(ids)], dtype=np.float32)
    llm.close()
    return out


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
