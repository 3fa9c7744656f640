"""Attention written in ways the engine first missed: complex RoPE (Llama 4's ``view_as_complex`` ->
multiply -> ``view_as_real``: no rule froze its heads; the real and imaginary parts never split) and attention
sinks (GPT-OSS: a learnt logit per head concatenated to the scores: its heads were no heads)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import graphprune as gp
from graphprune.reasons import POSITIONAL


class ComplexRopeAttention(nn.Module):
    """q, k rotated as complex numbers (Llama 4, Meta's original Llama), GQA 4 query heads over 2 kv heads."""

    def __init__(self, hidden: int = 32, heads: int = 4, kv: int = 2, head_dim: int = 8) -> None:
        super().__init__()
        self.h, self.kv, self.d = heads, kv, head_dim
        self.q = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k = nn.Linear(hidden, kv * head_dim, bias=False)
        self.v = nn.Linear(hidden, kv * head_dim, bias=False)
        self.o = nn.Linear(heads * head_dim, hidden, bias=False)
        self.register_buffer("inv_freq", 1.0 / 10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))

    def rotate(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(xc * freqs).flatten(3).type_as(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        angles = torch.outer(torch.arange(t, dtype=torch.float32), self.inv_freq)
        freqs = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
        q = self.rotate(self.q(x).view(b, t, self.h, self.d), freqs).transpose(1, 2)
        k = self.rotate(self.k(x).view(b, t, self.kv, self.d), freqs).transpose(1, 2)
        v = self.v(x).view(b, t, self.kv, self.d).transpose(1, 2)
        k, v = (z.repeat_interleave(self.h // self.kv, dim=1) for z in (k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.o(y.transpose(1, 2).reshape(b, t, self.h * self.d))


def test_complex_rope_heads_prune_exactly():
    torch.manual_seed(0)
    model, args = ComplexRopeAttention().eval(), (torch.randn(2, 6, 32),)
    g = gp.trace(model, args)
    kinds = {grp.kind for grp in g.prunable_groups()}
    assert "head" in kinds, g.summary()
    parts = [grp for grp in g.groups if any(r.kind == POSITIONAL and "real and imaginary" in str(r) for r in grp.frozen)]
    assert parts and all(grp.size == 2 for grp in parts)  # only the (re, im) dims are kept whole
    pruned, report = gp.prune(model, args, ratio=0.5, targets=("heads",), round_to=1, verify=True,
                              measure_latency=False)
    assert report.oracle.verdict == "PASS", report.oracle
    assert pruned.k.out_features == 8 and pruned.q.out_features == 16  # 1 of 2 kv heads with its 2 queries
    other = torch.randn(1, 9, 32)
    assert pruned(other).shape == other.shape


class WindowAttention(nn.Module):
    """Hiera's mask-unit attention: q, k, v as (batch, heads, windows, tokens, head_dim), scores by matmul."""

    def __init__(self, hidden: int = 32, heads: int = 4, windows: int = 2) -> None:
        super().__init__()
        self.h, self.w, self.d = heads, windows, hidden // heads
        self.qkv, self.proj = nn.Linear(hidden, 3 * hidden), nn.Linear(hidden, hidden)
        self.fc1, self.fc2 = nn.Linear(hidden, 64), nn.Linear(64, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        qkv = self.qkv(x).reshape(b, t // self.w, self.w, 3, -1, self.d).permute(3, 0, 4, 2, 1, 5)
        q, k, v = qkv.unbind(0)
        y = ((q * self.d ** -0.5) @ k.transpose(-1, -2)).softmax(-1) @ v
        x = x + self.proj(y.transpose(1, 3).reshape(b, t, -1))
        return x + self.fc2(torch.relu(self.fc1(x)))


def test_heads_of_a_five_dimensional_window_attention_are_heads():
    # the head axis was taken as the dim before (seq, dim): Hiera's windows, sequence positions, so its heads
    # were typed conv_group and the default call cut none
    torch.manual_seed(0)
    model, args = WindowAttention().eval(), (torch.randn(2, 8, 32),)
    g = gp.trace(model, args)
    heads = [grp for grp in g.prunable_groups() if grp.kind == "head"]
    assert [grp.size for grp in heads] == [4], g.summary()
    pruned, report = gp.prune(model, args, ratio=0.5, round_to=1, verify=True, measure_latency=False)
    assert report.oracle.verdict == "PASS", report.oracle
    assert pruned.qkv.out_features == 3 * 16 and pruned.proj.in_features == 16 and pruned.fc1.out_features == 32


T = pytest.importorskip("transformers", reason="Llama 4 text is a transformers model")


@pytest.mark.skipif(not hasattr(T, "Llama4TextConfig"), reason="Llama 4 is in transformers from 4.51")
def test_llama4_rope_layers_prune_their_heads():
    cfg = T.Llama4TextConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                             num_key_value_heads=4, head_dim=8, intermediate_size=64, intermediate_size_mlp=128,
                             num_local_experts=2, num_experts_per_tok=1, interleave_moe_layer_step=2,
                             attention_chunk_size=8, no_rope_layers=[1, 0], use_cache=False, pad_token_id=0,
                             bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = T.Llama4ForCausalLM(cfg).eval()
    model, report = gp.hf.prune(model, verify=True)
    assert report.oracle.verdict == "PASS", report.oracle
    assert all(layer.self_attn.k_proj.out_features < 32 for layer in model.model.layers)  # the RoPE layer's too


class SinkAttention(nn.Module):
    """GPT-OSS's eager attention: a learnt logit per head joins the scores before the softmax (its column
    sliced off after), so the scores -> softmax -> @ v path has a cat and a slice in it."""

    def __init__(self, hidden: int = 32, heads: int = 4, head_dim: int = 8) -> None:
        super().__init__()
        self.h, self.d = heads, head_dim
        self.qkv = nn.ModuleList(nn.Linear(hidden, heads * head_dim) for _ in range(3))
        self.o = nn.Linear(heads * head_dim, hidden)
        self.sinks = nn.Parameter(torch.randn(heads))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (p(x).view(b, t, self.h, self.d).transpose(1, 2) for p in self.qkv)
        scores = q @ k.transpose(-1, -2) * self.d ** -0.5
        joined = torch.cat([scores, self.sinks.reshape(1, -1, 1, 1).expand(b, -1, t, -1)], dim=-1)
        joined = joined - joined.max(dim=-1, keepdim=True).values
        probs = torch.softmax(joined, dim=-1)[..., :-1]
        return x + self.o((probs @ v).transpose(1, 2).reshape(b, t, self.h * self.d))


def test_attention_with_sinks_is_found_and_its_heads_prune():
    """The heads were typed conv_group, so the default call found no heads and cut the hidden size."""
    torch.manual_seed(0)
    model, args = SinkAttention().eval(), (torch.randn(2, 5, 32),)
    g = gp.trace(model, args)
    (heads,) = [grp for grp in g.groups if grp.kind == "head"]
    assert ("sinks", 0) in {(m.name, m.dim) for m in heads.members}
    pruned, report = gp.prune(model, args, ratio=0.5, targets=("heads",), round_to=1, verify=True,
                              measure_latency=False)
    assert report.oracle.verdict == "PASS" and tuple(pruned.sinks.shape) == (2,) and pruned.o.in_features == 16


class _GatedUnits(nn.Module):
    """gMLP with a tiny attention (g-mlp-pytorch's ``attn_dim``): the attention's output is added into the
    gate, so the gated units are written by two layers and labelled ``hidden``, though no norm crosses them."""

    def __init__(self, dim: int = 32, ff: int = 128, attn: int = 16, tokens: int = 8) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.proj_in, self.proj_out = nn.Linear(dim, ff), nn.Linear(ff // 2, dim)
        self.qkv, self.attn_out = nn.Linear(dim, 3 * attn, bias=False), nn.Linear(attn, ff // 2)
        self.spatial = nn.Linear(tokens, tokens)

    def forward(self, x):
        h = self.norm(x)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        a = self.attn_out((q @ k.transpose(1, 2)).softmax(-1) @ v)
        res, gate = F.gelu(self.proj_in(h)).chunk(2, dim=-1)
        return x + self.proj_out(res * (self.spatial(gate.transpose(1, 2)).transpose(1, 2) + a))


def test_exact_hidden_channels_of_a_model_with_attention_are_default_targets():
    """Before, the default call on gMLPVision(attn_dim=...) returned the model unpruned: its attention made the
    defaults heads + FFN + conv groups, and its units are ``hidden``. Hidden channels no norm crosses are cut by
    default, exactly; the LayerNorm'd residual stream is not."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), _GatedUnits(), _GatedUnits(), nn.Linear(32, 4)).eval()
    x = torch.randn(2, 8, 16)
    g = gp.trace(model, (x,))
    units = [grp for grp in g.prunable_groups() if grp.kind == "hidden" and not grp.inexact]
    stream = [grp for grp in g.prunable_groups() if grp.kind == "hidden" and grp.inexact]
    assert len(units) == 2 and len(stream) == 1, g.summary()
    pruned, report = gp.prune(model, (x,), budget={"macs": 0.5}, verify=True, runtime=None)
    assert report.oracle.verdict == "PASS" and report.macs_after <= 0.51 * report.macs_before
    assert pruned[1].proj_out.in_features < 64 and pruned[0].out_features == 32  # the units cut, the stream kept


class _MapsAttention(nn.Module):
    """lucidrains' tab-transformer attention: returns its output and the post-softmax maps."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        attn = (torch.einsum("bhid,bhjd->bhij", q, k) * q.shape[-1] ** -0.5).softmax(-1)
        return self.out(torch.einsum("bhij,bhjd->bhid", attn, v).transpose(1, 2).reshape(b, n, -1)), attn


class _StacksMaps(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb, self.head = nn.Linear(5, 32), nn.Linear(32, 1)
        self.layers = nn.ModuleList([nn.ModuleList([nn.LayerNorm(32), _MapsAttention(), nn.LayerNorm(32), nn.Sequential(
            nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 32))]) for _ in range(2)])

    def forward(self, x):
        x, maps = self.emb(x), []
        for n1, attn, n2, ffn in self.layers:
            y, a = attn(n1(x))
            maps.append(a)
            x = x + y
            x = x + ffn(n2(x))
        torch.stack(maps)  # stacked for a return_attn option, then dropped
        return self.head(x[:, 0])


def test_attention_maps_stacked_and_dropped_hide_no_heads():
    """The stacked maps tied every layer's heads into one conv_group, so the model counted as one without attention
    and the default call cut its LayerNorm'd stream (oracle PARTIAL). Read by no output, they change nothing."""
    torch.manual_seed(0)
    pruned, report = gp.prune(_StacksMaps().eval(), (torch.randn(4, 9, 5),), verify=True, measure_latency=False)
    cut = {report.kinds[g] for g, (k, n) in report.kept.items() if k < n}
    assert cut == {"head", "ffn"} and report.oracle.verdict == "PASS" and pruned.emb.out_features == 32


class _PrivateHeads(nn.Module):
    """rtdl's MultiheadAttention: the head count in ``self._n_heads``, read by a reshape helper."""

    def __init__(self, d: int = 64, heads: int = 8) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self._n_heads = heads
        self.ffn = nn.Sequential(nn.Linear(d, 128), nn.ReLU(), nn.Linear(128, d))

    def _split(self, x):
        b, n, d = x.shape
        return x.reshape(b, n, self._n_heads, d // self._n_heads).transpose(1, 2)

    def forward(self, x):
        a = F.softmax(self._split(self.q(x)) @ self._split(self.k(x)).transpose(-1, -2), -1) @ self._split(self.v(x))
        x = x + self.o(a.transpose(1, 2).flatten(2))
        return x + self.ffn(x)


@pytest.mark.parametrize("budget", [None, {"macs": 0.5}])
def test_a_private_head_count_attribute_is_updated(budget):
    """``_n_heads`` was never probed (private names were skipped): heads were kept whole after a failed proof, and a
    MACs budget was refused. A model's own private ints are probed; torch's layers' are not."""
    torch.manual_seed(0)
    pruned, report = gp.prune(_PrivateHeads().eval(), (torch.randn(4, 9, 64),), budget=budget, verify=True,
                              measure_latency=False)
    assert report.oracle.verdict == "PASS" and pruned._n_heads < 8 and pruned.q.out_features == pruned._n_heads * 8


class _HybridMixer(torch.nn.Module):
    """An attention layer, then a Mamba2-like mixer whose heads a norm over all of them reads (Bamba, Zamba2: the
    gated RMSNorm over the whole inner width)."""

    def __init__(self, d: int = 32, heads: int = 8, head_dim: int = 4) -> None:
        super().__init__()
        self.h, self.hd, self.nh = heads, head_dim, 4
        self.qkv, self.o = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.x, self.gate = torch.nn.Linear(d, heads * head_dim), torch.nn.Linear(d, heads * head_dim)
        self.norm, self.out = torch.nn.RMSNorm(heads * head_dim), torch.nn.Linear(heads * head_dim, d)

    def forward(self, inp):
        n, s, d = inp.shape
        q, k, v = (t.view(n, s, self.nh, -1).transpose(1, 2) for t in self.qkv(inp).chunk(3, -1))
        h = inp + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, s, -1))
        y = self.x(h).view(n, s, self.h, self.hd) * torch.sigmoid(self.gate(h)).view(n, s, self.h, self.hd)
        return h + self.out(self.norm(y.reshape(n, s, -1)))


def test_a_models_whole_groups_a_norm_reads_across_stay_by_default():
    """The default call of a model with attention keeps the hidden size where a norm reads across it; whole
    groups a norm reads across (a Mamba2 mixer's heads under its gated RMSNorm) stay too, so the default stays
    provable (Bamba and Zamba2 came out PARTIAL). Named as a target, they are cut."""
    torch.manual_seed(0)
    x = torch.randn(2, 8, 32)
    model, report = gp.prune(_HybridMixer().eval(), (x,), ratio=0.5, verify=True)
    cut = {report.kinds[g] for g, (kept, size) in report.kept.items() if kept < size}
    assert report.oracle.verdict == "PASS" and "head" in cut and "conv_group" not in cut
    torch.manual_seed(0)
    model, report = gp.prune(_HybridMixer().eval(), (x,), ratio=0.5, verify=True, targets=("heads", "conv_groups"))
    assert "conv_group" in {report.kinds[g] for g, (kept, size) in report.kept.items() if kept < size}
    assert model.x.out_features < 32


class _EinsumAttention(torch.nn.Module):
    """Attention written with einsum over (batch, seq, heads, dim) operands, as Funnel-Transformer writes it."""

    def __init__(self, equations: tuple[str, str], d: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.h, self.eq = heads, equations
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2, self.ln = torch.nn.Linear(d, 128), torch.nn.Linear(128, d), torch.nn.LayerNorm(d)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (f(x).view(b, s, self.h, -1) for f in (self.q, self.k, self.v))
        if self.eq[0].startswith("bh"):  # the (batch, heads, seq, dim) layout
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        ctx = torch.einsum(self.eq[1], torch.einsum(self.eq[0], q, k).softmax(-1), v)
        ctx = ctx.transpose(1, 2) if self.eq[0].startswith("bh") else ctx
        x = self.ln(x + self.o(ctx.reshape(b, s, -1)))
        return x + self.ff2(torch.relu(self.ff1(x)))


@pytest.mark.parametrize("equations", [("bind,bjnd->bnij", "bnij,bjnd->bind"), ("bhid,bhjd->bhij", "bhij,bhjd->bhid")])
def test_heads_of_an_einsum_attention_are_found_in_its_subscripts(equations):
    """Funnel's keys enter as (batch, seq, heads, dim), contracted on their last dim: read as ``q @ k.T`` operands,
    the head axis was taken for the head_dim, no heads were found and the default call cut only the FFN."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 64)
    dg = gp.trace(_EinsumAttention(equations).eval(), (x,))
    assert [g.size for g in dg.groups if g.kind == "head"] == [4]
    model, report = gp.prune(_EinsumAttention(equations).eval(), (x,), ratio=0.5, verify=True)
    assert report.oracle.verdict == "PASS" and model.q.out_features == 32  # 2 of 4 heads


class _InPlaceScores(nn.Module):
    """Falcon's eager attention: ``scores /= math.sqrt(head_dim)`` and ``scores.masked_fill_(mask, -inf)``, in place."""

    def __init__(self, d: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.h, self.head_dim = heads, d // heads
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 128), nn.Linear(128, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.h, self.head_dim).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2)
        scores /= 8.0
        scores.masked_fill_(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
        x = x + self.o((torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, n, d))
        return x + self.down(torch.relu(self.up(x)))


def test_scores_scaled_and_masked_in_place_are_an_attention_site():
    """The in-place div_ and masked_fill_ broke the walk from the q.k product to the softmax: the heads were typed
    conv_group, so graphprune.hf.prune's default targets (heads, ffn) cut Falcon's hidden size instead."""
    graph = gp.trace(_InPlaceScores().eval(), (torch.randn(2, 16, 64),))
    kinds = {(graph.kinds[g.id], g.size) for g in graph.groups if g.prunable}
    assert kinds == {("ffn", 128), ("head", 4), ("head_dim", 16)}
