"""Multi-head latent attention (DeepSeek-V2/V3, Kimi K2): keys assembled in place in a fresh buffer
(``new_empty`` then ``copy_`` into two slices of it) and latent ranks behind an RMSNorm. Before, the buffer's
sizes froze every head ("size set by the arguments of node 'new_empty'"), and the latent ranks were labelled FFN
units, so the default call cut them across their norm and the oracle could only say PARTIAL."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphprune as gp
from graphprune.reasons import COMPUTED


class RMSNorm(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.rand(n) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)


class LatentAttention(nn.Module):
    """Queries and keys/values through small latents; each head's key is its own part (from the latent)
    joined to one rotary part all heads share, written into a buffer as MLA writes it."""

    def __init__(self, hidden: int = 32, heads: int = 4, rank: int = 16, nope: int = 8, rope: int = 4,
                 fill: str = "whole") -> None:
        super().__init__()
        self.h, self.nope, self.rope, self.fill = heads, nope, rope, fill
        self.kv_a = nn.Linear(hidden, rank + rope, bias=False)
        self.kv_norm = RMSNorm(rank)
        self.kv_b = nn.Linear(rank, heads * (nope + nope), bias=False)
        self.q = nn.Linear(hidden, heads * (nope + rope), bias=False)
        self.o = nn.Linear(heads * nope, hidden, bias=False)
        self.rank = rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q(x).view(b, t, -1, self.nope + self.rope).transpose(1, 2)
        latent, k_rot = torch.split(self.kv_a(x), [self.rank, self.rope], dim=-1)
        kv = self.kv_b(self.kv_norm(latent)).view(b, t, -1, 2 * self.nope).transpose(1, 2)
        k_nope, v = torch.split(kv, [self.nope, self.nope], dim=-1)
        k_rot = k_rot.view(b, 1, t, self.rope).expand(-1, k_nope.shape[1], -1, -1)
        k = k_nope.new_empty(*k_nope.shape[:-1], self.nope + self.rope)
        if self.fill == "read first":  # read before it is written: not a concatenation
            x = x + k.sum() * 0
        k[..., : self.nope].copy_(k_nope)
        if self.fill != "gap":  # "gap": the rotary part is never written
            k[..., self.nope:].copy_(k_rot)
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return x + self.o(y.transpose(1, 2).reshape(b, t, -1))


def _model(**kw) -> LatentAttention:
    torch.manual_seed(0)
    return LatentAttention(**kw).eval()


def test_keys_assembled_in_place_are_heads_and_prune_exactly():
    model, args = _model(), (torch.randn(2, 6, 32),)
    g = gp.trace(model, args)
    assert "head" in {grp.kind for grp in g.prunable_groups()}, g.summary()
    assert not [grp for grp in g.groups if any("new_empty" in str(r) for r in grp.frozen)], g.summary()
    pruned, report = gp.prune(model, args, ratio=0.5, targets=("heads",), round_to=1, verify=True,
                              measure_latency=False)
    assert report.oracle.verdict == "PASS", report.oracle  # the masked original's copies land in its buffer
    assert pruned.kv_b.out_features == 2 * 16 and pruned.q.out_features == 2 * 12 and pruned.o.in_features == 16
    other = torch.randn(3, 9, 32)
    assert pruned(other).shape == other.shape


@pytest.mark.parametrize("fill", ["gap", "read first"])
def test_a_buffer_not_written_whole_before_it_is_read_stays_frozen(fill):
    g = gp.trace(_model(fill=fill), (torch.randn(2, 6, 32),))
    frozen = [grp for grp in g.groups if any(r.kind == COMPUTED and "new_empty" in str(r) for r in grp.frozen)]
    assert frozen, g.summary()
    assert "head" not in {grp.kind for grp in g.prunable_groups()}


def test_a_latent_rank_behind_its_norm_is_latent_and_the_default_call_leaves_it():
    model, args = _model(), (torch.randn(2, 6, 32),)
    g = gp.trace(model, args)
    latent = [grp for grp in g.prunable_groups() if grp.kind == "latent"]
    assert [grp.size for grp in latent] == [16] and latent[0].inexact, g.summary()
    pruned, report = gp.prune(copy.deepcopy(model), args, ratio=0.5, round_to=1, verify=True, measure_latency=False)
    assert pruned.kv_a.out_features == 16 + 4 and report.oracle.verdict == "PASS", report.oracle
    pruned, report = gp.prune(copy.deepcopy(model), args, ratio=0.5, targets=("latent",), round_to=1, verify=True,
                              measure_latency=False)
    assert pruned.kv_b.in_features == 8 and report.oracle.verdict == "NOT CHECKED", report.oracle  # named, not passed


T = pytest.importorskip("transformers", reason="DeepSeek-V3 is a transformers model")


def test_deepseek_v3_default_call_prunes_mla_heads_and_keeps_its_latent_ranks(tmp_path):
    torch.manual_seed(0)
    cfg = T.DeepseekV3Config(vocab_size=128, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4,
                             num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1, q_lora_rank=32,
                             kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_group=1,
                             topk_group=1, use_cache=False, max_position_embeddings=64)
    model = T.DeepseekV3ForCausalLM(cfg).eval()
    original = copy.deepcopy(model)
    ids = torch.randint(0, 128, (2, 16))
    pruned, report = gp.hf.prune(model, {"input_ids": ids}, verify=True)
    assert report.oracle.verdict == "PASS", report.oracle
    attn = pruned.model.layers[0].self_attn
    assert attn.kv_b_proj.out_features < 4 * 16 and attn.o_proj.in_features < 4 * 8  # heads went
    assert attn.kv_a_proj_with_mqa.out_features == 16 + 8 and attn.q_a_proj.out_features == 32  # latents stayed
    other = torch.randint(0, 128, (3, 11))
    gp.hf.save_pruned(pruned, tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(gp.hf.load_pruned(tmp_path / "m")(other).logits, pruned(other).logits)
        assert original(other).logits.shape == pruned(other).logits.shape
