"""Torch-Pruning 1.6.1 (reference peer) configured to prune a Hugging Face ``LlamaForCausalLM``
to exactly the structure of ``graphprune.hf.prune(model, ratio=r, targets=("heads", "ffn"))``:

- FFN units of every layer: ``I -> I - floor(I*r)``;
- whole key/value heads with the query heads that share them (GQA): ``KV -> KV - floor(KV*r)``
  kv heads (at least 1), ``num_attention_heads/KV`` query heads each, head_dim unchanged;
- hidden size (embeddings, norms, lm_head) untouched. L2 group magnitude, one shot.

Install the peer with ``.venv/bin/pip install --no-deps torch-pruning==1.6.1``; it is only called,
never copied.

What Torch-Pruning 1.6.1 could not do on its own here (transformers 5.x Llama):

1. Trace the attention. Its dependency graph never terminates on RoPE: ``rotate_half`` slices and
   concatenates the last dim of the ``[B, H, T, head_dim]`` view, TP maps those indices as if they
   were ``H*head_dim`` channels, and the index sets grow without bound in
   ``get_pruning_group`` (same hang as upstream issue VainF/Torch-Pruning#527). RoPE acts inside a
   head, so removing whole heads commutes with it: we trace with RoPE replaced by the identity.
   It also needs eager attention: with SDPA's native GQA (no ``repeat_kv``) q (H heads) and k/v
   (KV heads) meet in one op and TP couples their channels one to one, which is wrong.
2. Remove kv heads. Its GQA mode (``num_heads={q: H, k: KV, v: KV}``) only removes query heads,
   the same number from every kv group, and never kv heads. On both test models even that is a
   silent no-op: it first decrements its head counts (8 -> 4 query heads vs 4 kv heads on the tiny
   Llama, 9 -> 3 vs 3 on SmolLM2 at r=0.5), then, the counts now being equal, skips its own GQA
   exemption for k/v; v_proj keeps the repeated indices of the GQA index mapping (384 for 192
   channels), ``check_pruning_group`` rejects every attention group, and ``pruner.num_heads``
   reports fewer heads than the weights hold. So MetaPruner prunes the FFN only
   (``head_pruning_ratio=0``) and the kv-head removal is a by-hand step on TP's own dependency graph
   and importance: score each GQA block (a kv head and its query heads) by the mean group L2
   importance over its ``o_proj`` input channels, drop the lowest ``floor(KV*r)`` blocks through
   ``DG.get_pruning_group(o_proj, prune_linear_in_channels, ...)``.
3. Score k_proj/v_proj. TP's GQA index mapping gives the kv channels no root index, so
   ``GroupMagnitudeImportance`` skips them: the block score comes from q_proj rows and o_proj
   columns only (graphprune's l2 also counts k/v), so the two may keep different heads.
"""
from __future__ import annotations

import contextlib
import math
import sys
from typing import TYPE_CHECKING, Iterator

import torch

if TYPE_CHECKING:
    from torch_pruning.dependency.group import Group
    from torch_pruning.pruner import MetaPruner

# Everything Torch-Pruning needed written by hand for a transformers Llama (for reports).
TP_BY_HAND = [
    "the head count of every attention projection: `num_heads = {q_proj: H, k_proj: KV, v_proj: KV}` "
    "for each layer; TP does not find heads itself",
    "`prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0` so that MetaPruner leaves "
    "the attention alone (its GQA head mode removes query heads only and, on Llama, silently "
    "nothing), plus `pruning_ratio` for the FFN units",
    "the FFN ratio passed as `(floor(I*r) - 0.5) / I`: TP keeps `int(I*(1-r))` units, graphprune "
    "keeps `I - floor(I*r)` (1229 vs 1228 of 1536 at r=0.2)",
    "`ignored_layers=[model.model.embed_tokens, model.lm_head]` to keep the hidden size (residual "
    "stream group, tied embeddings)",
    "`output_transform=lambda out: out.logits` (the model returns a `CausalLMOutputWithPast`)",
    "tracing with RoPE (`apply_rotary_pos_emb`) patched to the identity: TP's graph loops forever "
    "on `rotate_half`'s slice/cat",
    "tracing with `attn_implementation='eager'`: SDPA's native GQA couples q and k/v channels one "
    "to one without `repeat_kv`",
    "kv-head removal: per layer, score GQA blocks (kv head + its query heads) by the mean TP group "
    "importance over the `o_proj` inputs and prune the lowest floor(KV*r) through "
    "`DG.get_pruning_group(o_proj, prune_linear_in_channels, idxs)`, with the repeated kv indices "
    "of TP's GQA index mapping de-duplicated (else `out_features` goes wrong)",
    "after pruning: `num_key_value_groups` (and `num_heads`/`num_key_value_heads` where present) on "
    "each attention, `intermediate_size` on each MLP, and `num_attention_heads`, "
    "`num_key_value_heads`, `head_dim`, `intermediate_size` in the config",
]


def _n_pruned(size: int, ratio: float) -> int:
    """graphprune's count of units removed from ``size``."""
    return math.floor(size * ratio + 1e-9)


@contextlib.contextmanager
def _traceable_attention(model: torch.nn.Module) -> Iterator[None]:
    """Eager attention and identity RoPE while TP traces (see the module docstring, point 1)."""
    attn_cls = type(model.model.layers[0].self_attn)
    modeling = sys.modules[attn_cls.__module__]
    rope = modeling.apply_rotary_pos_emb
    impl = model.config._attn_implementation
    modeling.apply_rotary_pos_emb = lambda q, k, *args, **kwargs: (q, k)
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        modeling.apply_rotary_pos_emb = rope
        model.set_attn_implementation(impl)


def _dedup(group: Group) -> None:
    """TP's GQA index mapping repeats each kv channel once per query head; the Linear pruner
    subtracts ``len(idxs)`` from ``out_features``, so repeats must go."""
    for i, item in enumerate(group):
        if len(set(item.idxs)) != len(item.idxs):
            keep = sorted(set(item.idxs))
            group[i] = type(item)(item.dep, keep)
            group[i].root_idxs = [None] * len(keep)


def _prune_kv_heads(pruner: MetaPruner, layer: torch.nn.Module, n_drop: int) -> None:
    """Remove the ``n_drop`` least important GQA blocks of one layer with TP's graph and importance."""
    import torch_pruning as tp

    attn = layer.self_attn
    o_proj, kv = attn.o_proj, attn.k_proj.out_features // attn.head_dim
    full = pruner.DG.get_pruning_group(o_proj, tp.prune_linear_in_channels, list(range(o_proj.in_features)))
    block_imp = pruner.importance(full).view(kv, -1).mean(1)  # [kv]: one score per GQA block
    width = o_proj.in_features // kv  # query heads of one block times head_dim
    drop = sorted(block_imp.argsort()[:n_drop].tolist())
    idxs = [c for j in drop for c in range(j * width, (j + 1) * width)]
    group = pruner.DG.get_pruning_group(o_proj, tp.prune_linear_in_channels, idxs)
    _dedup(group)
    group.prune()


def _sync(model: torch.nn.Module) -> None:
    """Make module attributes and config agree with the pruned weights (uniform across layers)."""
    cfg, layers = model.config, model.model.layers
    attn0, mlp0 = layers[0].self_attn, layers[0].mlp
    heads = attn0.q_proj.out_features // attn0.head_dim
    kv_heads = attn0.k_proj.out_features // attn0.head_dim
    ffn = mlp0.gate_proj.out_features
    for layer in layers:
        attn, mlp = layer.self_attn, layer.mlp
        shapes = (attn.q_proj.out_features, attn.k_proj.out_features, mlp.gate_proj.out_features)
        if shapes != (heads * attn.head_dim, kv_heads * attn.head_dim, ffn):
            raise RuntimeError(f"Torch-Pruning pruned layers unevenly: {shapes}")
        attn.num_key_value_groups = heads // kv_heads
        for name, value in (("num_heads", heads), ("num_key_value_heads", kv_heads)):
            if hasattr(attn, name):
                setattr(attn, name, value)
        mlp.intermediate_size = ffn
    cfg.head_dim = attn0.head_dim  # no longer hidden_size // num_attention_heads
    cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size = heads, kv_heads, ffn


def _logits_shape(model: torch.nn.Module, inputs: dict) -> torch.Size:
    with torch.no_grad():
        return model(**inputs).logits.shape


def prune_torch_pruning_llama(model: torch.nn.Module, ratio: float, example_inputs: dict) -> torch.nn.Module:
    """Prune ``model`` (a transformers ``LlamaForCausalLM``) in place with Torch-Pruning 1.6.1 to
    graphprune's ``targets=("heads", "ffn")`` structure at ``ratio``; returns it.

    ``example_inputs`` are keyword inputs for ``model(**example_inputs)`` (TP traces with them).
    Raises ``RuntimeError`` if the result does not have that structure or its output shape
    changed; a forward that fails raises its own error."""
    import torch_pruning as tp

    cfg = model.config
    heads, kv, ffn = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size
    hidden = cfg.hidden_size
    head_dim = model.model.layers[0].self_attn.head_dim
    drop_kv = min(_n_pruned(kv, ratio), kv - 1)
    drop_ffn = _n_pruned(ffn, ratio)
    want = (heads - drop_kv * (heads // kv), kv - drop_kv, ffn - drop_ffn)
    model.eval()
    shape = _logits_shape(model, example_inputs)

    num_heads = {}
    for layer in model.model.layers:
        attn = layer.self_attn
        num_heads.update({attn.q_proj: heads, attn.k_proj: kv, attn.v_proj: kv})
    with _traceable_attention(model):
        pruner = tp.pruner.MetaPruner(
            model, example_inputs,
            importance=tp.importance.GroupMagnitudeImportance(p=2),
            # TP keeps int(I*(1-r)) units; this makes it I - floor(I*r) like graphprune
            pruning_ratio=(drop_ffn - 0.5) / ffn if drop_ffn else 0.0,
            num_heads=num_heads, prune_num_heads=True, prune_head_dims=False, head_pruning_ratio=0.0,
            ignored_layers=[model.model.embed_tokens, model.lm_head],  # keeps the hidden size
            output_transform=lambda out: out.logits,
        )
    pruner.step()  # FFN units
    if drop_kv:
        for layer in model.model.layers:
            _prune_kv_heads(pruner, layer, drop_kv)
    _sync(model)

    got = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size)
    if got != want or model.model.layers[0].self_attn.head_dim != head_dim:
        raise RuntimeError(f"Torch-Pruning gave (heads, kv heads, FFN) = {got}, expected {want}")
    widths = {model.model.embed_tokens.embedding_dim, model.lm_head.in_features}
    for layer in model.model.layers:
        widths |= {layer.self_attn.o_proj.out_features, layer.mlp.down_proj.out_features}
    if widths != {hidden}:
        raise RuntimeError(f"Torch-Pruning changed the hidden size {hidden}: {sorted(widths)}")
    if _logits_shape(model, example_inputs) != shape:
        raise RuntimeError("the pruned model's output shape changed")
    return model
