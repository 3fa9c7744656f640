"""Read a (pruned) transformers decoder into the blocks a GGUF file holds.

Each decoder layer of a Llama-family model is two residual sub-layers: attention and the gated
FFN. graphprune's width pruning leaves them with their own head, kv-head and FFN counts; its depth
pruning swaps a removed sub-layer's module for a ``ZeroBranch`` (graphprune/backends/torch_depth.py).
llama.cpp's ``deci`` graph (src/models/deci.cpp) runs per-layer counts, with two limits this module
works around exactly rather than write a file that loads wrong:

- a layer with ``n_ff == 0`` skips the layer's output (``continue`` before ``inpL = cur``), so an
  attention whose FFN was removed would be dropped: it gets a one-unit FFN whose weights are zero;
- the head size is read from layer 0's head count, so a first layer without attention gets a
  one-head attention whose weights are zero.

Both add exactly 0 to the residual stream. Sub-layers are packed in order: an attention followed by
its FFN (or the next remaining FFN) share a block, and wholly removed layers are left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..backends.torch_depth import Skip, ZeroBranch
from ..errors import PlanError

FAMILIES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}
STATIC_ROPE = ("default", "linear", "llama3")  # inverse frequencies fixed at load: written as rope_freqs


@dataclass
class SubLayer:
    kind: str  # "attn" or "ffn"
    where: str  # the transformers module path, or "zero padding"
    widths: tuple[int, ...]  # (heads, kv heads) or (ffn units,)
    tensors: list[tuple[str, torch.Tensor]]  # GGUF suffix (e.g. "attn_q.weight") -> tensor, torch layout


@dataclass
class Block:
    n_head: int
    n_head_kv: int
    n_ff: int
    tensors: list[tuple[str, torch.Tensor]]
    sources: list[str]


@dataclass
class DecoderSpec:
    family: str  # "llama" or "qwen2"
    arch: str  # "llama", "qwen2" or "deci"
    hidden: int
    head_dim: int
    vocab: int
    context: int
    eps: float
    rope_base: float
    rope_freqs: torch.Tensor | None  # llama.cpp divides each rotary frequency by this factor
    blocks: list[Block]
    globals_: list[tuple[str, torch.Tensor]]
    padded: list[str] = field(default_factory=list)  # zero sub-layers added, for the report


def array(t: torch.Tensor) -> torch.Tensor:
    """The weight as it is (no copy): the exporter converts one tensor at a time to the file's dtype."""
    return t.detach()


def interleave_rotary(w: torch.Tensor, n_heads: int, head_dim: int) -> torch.Tensor:
    """Rows of a q/k projection (or its bias) from transformers' rotate-half order (each head's first
    half rotates with its second half) to the adjacent pairs llama.cpp's normal RoPE rotates."""
    if w.shape[0] != n_heads * head_dim:
        raise PlanError(f"a q/k projection has {w.shape[0]} rows, not heads x head_dim = {n_heads} x {head_dim}")
    return w.reshape(n_heads, 2, head_dim // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def _linear(prefix: str, lin: torch.nn.Module, out: list) -> None:
    out.append((f"{prefix}.weight", array(lin.weight)))
    if getattr(lin, "bias", None) is not None:
        out.append((f"{prefix}.bias", array(lin.bias)))


def _removed(mod: torch.nn.Module, output: str) -> bool:
    return isinstance(mod, ZeroBranch) or isinstance(getattr(mod, output, None), ZeroBranch)


def _check_depth_modules(layer: torch.nn.Module, path: str, attn_gone: bool, ffn_gone: bool) -> None:
    allowed = set()
    if attn_gone:
        allowed |= {"self_attn", "input_layernorm"}
    if ffn_gone:
        allowed |= {"mlp", "post_attention_layernorm"}
    for name, mod in layer.named_modules():
        if isinstance(mod, (Skip, ZeroBranch)) and name.split(".")[0] not in allowed:
            raise PlanError(f"{path}.{name} was removed by depth pruning ({type(mod).__name__}) in a way GGUF cannot "
                            "express: only whole attention or FFN sub-layers can be left out")


def _attention(layer, path: str, head_dim: int, interleave: bool) -> SubLayer:
    attn = layer.self_attn
    where = f"{path}.self_attn"
    for name in ("q_norm", "k_norm"):
        if getattr(attn, name, None) is not None:
            raise PlanError(f"{where}.{name}: query/key norms are not part of llama.cpp's llama/deci graph")
    hd = int(getattr(attn, "head_dim", head_dim))
    q, k, v, o = attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj
    if hd != head_dim:
        raise PlanError(f"{where} has head_dim {hd}, other layers {head_dim}: GGUF holds one head size "
                        "(attention.key_length); prune head_dim uniformly or not at all")
    n_head, n_kv = q.out_features // hd, k.out_features // hd
    if q.out_features % hd or k.out_features % hd or v.out_features != k.out_features or o.in_features != q.out_features:
        raise PlanError(f"{where}: projection widths q {q.out_features}, k {k.out_features}, v {v.out_features}, "
                        f"o {o.in_features} are not whole heads of {hd}")
    if n_kv == 0 or n_head % n_kv:
        raise PlanError(f"{where}: {n_head} query heads over {n_kv} key/value heads is no whole group size")
    groups = attn.__dict__.get("num_key_value_groups")
    if groups is not None and groups * n_kv != n_head:
        raise PlanError(f"{where}: num_key_value_groups is {groups} but {n_head} query heads share {n_kv} kv heads")
    scaling = float(getattr(attn, "scaling", hd ** -0.5))
    if abs(scaling - hd ** -0.5) > 1e-6 * hd ** -0.5:
        raise PlanError(f"{where}: attention scale {scaling:g} is not 1/sqrt(head_dim {hd}) (head_dim pruned?), "
                        "which llama.cpp's llama/deci graph always uses")
    tensors = [("attn_norm.weight", array(layer.input_layernorm.weight))]
    for prefix, lin, heads in (("attn_q", q, n_head), ("attn_k", k, n_kv)):
        part: list = []
        _linear(prefix, lin, part)
        tensors += [(n, interleave_rotary(a, heads, hd) if interleave else a) for n, a in part]
    _linear("attn_v", v, tensors)
    _linear("attn_output", o, tensors)
    return SubLayer("attn", where, (n_head, n_kv), tensors)


def _ffn(layer, path: str) -> SubLayer:
    mlp = layer.mlp
    where = f"{path}.mlp"
    if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        raise PlanError(f"{where} is not a gated FFN (gate_proj, up_proj, down_proj)")
    n_ff = mlp.up_proj.out_features
    if mlp.gate_proj.out_features != n_ff or mlp.down_proj.in_features != n_ff:
        raise PlanError(f"{where}: gate {mlp.gate_proj.out_features}, up {n_ff}, down {mlp.down_proj.in_features} "
                        "units differ")
    tensors = [("ffn_norm.weight", array(layer.post_attention_layernorm.weight))]
    for prefix, lin in (("ffn_gate", mlp.gate_proj), ("ffn_up", mlp.up_proj), ("ffn_down", mlp.down_proj)):
        _linear(prefix, lin, tensors)
    return SubLayer("ffn", where, (n_ff,), tensors)


def zero_attention(hidden: int, head_dim: int) -> SubLayer:
    z = lambda *s: torch.zeros(s)
    return SubLayer("attn", "zero padding", (1, 1), [
        ("attn_norm.weight", torch.ones(hidden)), ("attn_q.weight", z(head_dim, hidden)),
        ("attn_k.weight", z(head_dim, hidden)), ("attn_v.weight", z(head_dim, hidden)),
        ("attn_output.weight", z(hidden, head_dim))])


def zero_ffn(hidden: int) -> SubLayer:
    z = lambda *s: torch.zeros(s)
    return SubLayer("ffn", "zero padding", (1,), [
        ("ffn_norm.weight", torch.ones(hidden)), ("ffn_gate.weight", z(1, hidden)),
        ("ffn_up.weight", z(1, hidden)), ("ffn_down.weight", z(hidden, 1))])


def pack(subs: list[SubLayer], hidden: int, head_dim: int, padded: list[str]) -> list[Block]:
    """Sub-layers in order -> deci blocks (attention then FFN), with the zero padding the module
    docstring explains."""
    blocks: list[Block] = []
    k = 0
    while k < len(subs):
        a = subs[k] if subs[k].kind == "attn" else None
        k += a is not None
        f = subs[k] if k < len(subs) and subs[k].kind == "ffn" else None
        k += f is not None
        if a is None and not blocks:
            a = zero_attention(hidden, head_dim)
            padded.append(f"block 0: a zero one-head attention (llama.cpp reads the head size from layer 0), "
                          f"before {f.where}")
        if f is None:
            f = zero_ffn(hidden)
            padded.append(f"block {len(blocks)}: a zero one-unit FFN after {a.where} "
                          "(llama.cpp's deci graph drops a layer with no FFN)")
        heads = a.widths if a is not None else (0, 0)
        blocks.append(Block(heads[0], heads[1], f.widths[0], (a.tensors if a else []) + f.tensors,
                            [s.where for s in (a, f) if s is not None]))
    return blocks


def _rope(model, cfg, head_dim: int, attention: bool) -> tuple[float, torch.Tensor | None]:
    params = getattr(cfg, "rope_parameters", None) or {}
    base = params.get("rope_theta", getattr(cfg, "rope_theta", None))
    kind = params.get("rope_type", "default")
    if base is None:
        raise PlanError("the config names no rope_theta: the RoPE base llama.cpp needs (rope.freq_base) is unknown")
    if kind not in STATIC_ROPE:
        raise PlanError(f"RoPE type '{kind}' changes frequencies or scales attention at run time; GGUF export "
                        f"supports {', '.join(STATIC_ROPE)}")
    rotary = getattr(model.model, "rotary_emb", None)
    inv = getattr(rotary, "inv_freq", None)
    if inv is None:
        raise PlanError("model.model.rotary_emb.inv_freq not found: the rotary frequencies cannot be read")
    if float(getattr(rotary, "attention_scaling", 1.0)) != 1.0:
        raise PlanError(f"rotary attention_scaling is {rotary.attention_scaling}, which llama.cpp's llama/deci "
                        "graph does not apply")
    inv = inv.detach().to("cpu", torch.float64).numpy()
    if not attention:  # depth pruning removed every attention, and may have dropped the frequencies with them
        return float(base), None
    if 2 * inv.size != head_dim:
        raise PlanError(f"{inv.size} rotary frequencies for head_dim {head_dim}: llama.cpp's llama/deci graph "
                        "rotates whole heads (rope.dimension_count = head_dim)")
    default = 1.0 / float(base) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    factors = default / inv
    if np.allclose(factors, 1.0, rtol=1e-6, atol=0):
        return float(base), None
    return float(base), torch.from_numpy(factors.astype(np.float32))


def _norm_eps(model, layers) -> float:
    norms = [model.model.norm] + [getattr(layer, n) for layer in layers
                                  for n in ("input_layernorm", "post_attention_layernorm")]
    eps = {float(getattr(n, "variance_epsilon", getattr(n, "eps", -1.0))) for n in norms if not isinstance(n, Skip)}
    if len(eps) != 1 or -1.0 in eps:
        raise PlanError(f"RMS norm epsilons {sorted(eps)}: GGUF holds one (attention.layer_norm_rms_epsilon)")
    return eps.pop()


def _own_graph_fits(family: str, layers, hidden: int) -> bool:
    """llama.cpp's qwen2 loader wants q and the attention output n_embd wide (all heads kept) and
    has no attention-output or FFN biases (compensation may add them); deci has both."""
    if family != "qwen2":
        return True
    return all(layer.self_attn.q_proj.out_features == hidden and layer.self_attn.o_proj.bias is None
               and all(getattr(layer.mlp, n).bias is None for n in ("gate_proj", "up_proj", "down_proj"))
               for layer in layers)


def decoder_spec(model: torch.nn.Module) -> DecoderSpec:
    """What a GGUF file of ``model`` holds; raises PlanError naming what it cannot express."""
    family = FAMILIES.get(type(model).__name__)
    if family is None:
        raise PlanError(f"GGUF export supports {', '.join(FAMILIES)}; got {type(model).__name__}")
    cfg = model.config
    if getattr(cfg, "hidden_act", "silu") not in ("silu", "swish"):
        raise PlanError(f"hidden_act '{cfg.hidden_act}': llama.cpp's llama/deci FFN is SiLU-gated")
    if getattr(cfg, "use_sliding_window", False):
        raise PlanError("use_sliding_window is set: llama.cpp's qwen2/deci graph attends over the whole context")
    if isinstance(model.model.norm, (Skip, ZeroBranch)):
        raise PlanError("the final norm was removed, which llama.cpp's graph cannot leave out")
    layers = list(model.model.layers)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    live = [layer.self_attn for layer in layers if not _removed(layer.self_attn, "o_proj")]
    if live:
        head_dim = int(getattr(live[0], "head_dim", head_dim))
    embed = model.model.embed_tokens.weight
    vocab, hidden = embed.shape
    gone = [(_removed(layer.self_attn, "o_proj"), _removed(layer.mlp, "down_proj")) for layer in layers]
    shapes = {(layer.self_attn.q_proj.out_features, layer.self_attn.k_proj.out_features, layer.mlp.up_proj.out_features)
              for layer, g in zip(layers, gone) if not any(g)}
    uniform = len(shapes) == 1 and not any(a or f for a, f in gone)
    arch = family if uniform and _own_graph_fits(family, layers, int(hidden)) else "deci"
    subs: list[SubLayer] = []
    for i, (layer, (attn_gone, ffn_gone)) in enumerate(zip(layers, gone)):
        path = f"model.layers.{i}"
        _check_depth_modules(layer, path, attn_gone, ffn_gone)
        if not attn_gone:  # llama.cpp's qwen2 graph rotates halves (NEOX) as transformers does; llama/deci pairs
            subs.append(_attention(layer, path, head_dim, interleave=arch != "qwen2"))
        if not ffn_gone:
            subs.append(_ffn(layer, path))
    if not subs:
        raise PlanError("every attention and FFN sub-layer was removed: there is no decoder left to export")
    padded: list[str] = []
    blocks = pack(subs, hidden, head_dim, padded)
    base, freqs = _rope(model, cfg, head_dim, any(s.kind == "attn" for s in subs))
    globals_ = [("token_embd.weight", array(embed)), ("output_norm.weight", array(model.model.norm.weight))]
    head = model.lm_head
    if getattr(head, "bias", None) is not None:
        raise PlanError("lm_head has a bias, which llama.cpp's llama/deci output layer does not add")
    if not (head.weight is embed or torch.equal(head.weight, embed)):
        globals_.append(("output.weight", array(head.weight)))
    return DecoderSpec(family, arch, int(hidden), head_dim, int(vocab), int(cfg.max_position_embeddings),
                       _norm_eps(model, layers), base, freqs, blocks, globals_, padded)
