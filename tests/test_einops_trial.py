"""Regression tests for what the ninth new-user trial found (lucidrains' vit-pytorch and x-transformers,
built on einops; docs/real_models.md, "A ninth trial"), in plain torch and einops."""
from __future__ import annotations

import copy

import torch
from einops.layers.torch import Rearrange
from torch import nn

import graphprune as gp


class _Attention(nn.Module):
    """x-transformers' attention in small: heads split and merged by einops layers that hold the head
    count (``Rearrange(..., h=heads)``), keys and values with ``kv`` heads repeated to (r kvh)."""

    def __init__(self, dim=32, heads=4, kv=4, dh=8):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, heads * dh), nn.Linear(dim, kv * dh), nn.Linear(dim, kv * dh)
        self.o = nn.Linear(heads * dh, dim)
        self.split_q = Rearrange("b n (h d) -> b h n d", h=heads)
        self.split_kv = Rearrange("b n (h d) -> b h n d", d=dh)
        self.merge = Rearrange("b h n d -> b n (h d)")

    def forward(self, x):
        q, k, v = self.split_q(self.q(x)), self.split_kv(self.k(x)), self.split_kv(self.v(x))
        r = q.shape[1] // k.shape[1]
        b, kvh, n, dh = k.shape  # query head i reads kv head i % kvh, as einops' repeat '(r kvh)' lays them out
        k, v = (t[:, None].expand(b, r, kvh, n, dh).reshape(b, r * kvh, n, dh) for t in (k, v))
        a = (q @ k.transpose(-1, -2) * dh ** -0.5).softmax(-1)
        return x + self.o(self.merge(a @ v))


def _net(**kw) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 32), _Attention(**kw), nn.Linear(32, 3)).eval()


def test_heads_split_by_an_einops_layer_prune():
    """Before: the head count inside Rearrange's axis lengths could not be updated, so every head group
    was kept whole after the rewrite's proof failed (a PruneWarning, FFNs only)."""
    x = torch.randn(2, 10, 8)
    pruned, report = gp.prune(_net(), (x,), targets=("heads",), ratio=0.5, round_to=1, verify=True,
                              measure_latency=False)
    assert report.oracle.verdict == "PASS"
    attn = pruned[1]
    assert attn.q.out_features == attn.k.out_features == 16 and attn.split_q.axes_lengths == {"h": 2}
    assert not any("planned again" in n for n in report.notes), report.notes
    assert pruned(torch.randn(3, 7, 8)).shape == (3, 7, 3)


def test_kv_heads_repeated_as_r_kvh_are_the_heads():
    """Keys repeated to (r kvh) put the kv head inner on the queries' head axis: the kv head is the factor the
    key projection creates too. Before, the labels were swapped and targets=("heads",) cut query heads only."""
    x = torch.randn(2, 10, 8)
    graph = gp.trace(_net(heads=4, kv=2), (x,))
    kinds = {g.kind: g for g in graph.groups if g.kind in ("head", "query_group")}
    assert "1.k.weight" in {m.name for m in kinds["head"].members}
    assert "1.k.weight" not in {m.name for m in kinds["query_group"].members}
    pruned, report = gp.prune(_net(heads=8, kv=4), (x,), targets=("heads",), ratio=0.5, round_to=1, verify=True,
                              measure_latency=False)
    assert report.oracle.verdict == "PASS"
    assert (pruned[1].k.out_features, pruned[1].q.out_features) == (16, 32)  # 2 kv heads with their 4 query heads
    pruned, _ = gp.prune(_net(heads=8, kv=4), (x,), targets=("query_heads",), ratio=0.5, round_to=1,
                         measure_latency=False)
    assert (pruned[1].k.out_features, pruned[1].q.out_features) == (32, 32)


class _FusedGQA(nn.Module):
    """One fused q/k/v projection (Phi-3's), 4 query heads over 2 kv heads, keys expanded in HF's order
    (kv outer) or x-transformers' (r kvh): both head factors have the same weights, so only where the keys
    were before their repeat tells the kv head."""

    def __init__(self, kv_outer: bool):
        super().__init__()
        torch.manual_seed(0)
        self.kv_outer, self.nq, self.nkv, self.hd = kv_outer, 32, 16, 8
        self.qkv, self.o = nn.Linear(32, 64), nn.Linear(32, 32)

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (t.view(b, s, -1, self.hd).transpose(1, 2) for t in self.qkv(x).split([self.nq, self.nkv, self.nkv], -1))
        r, kvh = q.shape[1] // k.shape[1], k.shape[1]
        if self.kv_outer:
            k, v = (t[:, :, None].expand(b, kvh, r, s, self.hd).reshape(b, -1, s, self.hd) for t in (k, v))
        else:
            k, v = (t[:, None].expand(b, r, kvh, s, self.hd).reshape(b, -1, s, self.hd) for t in (k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.o(y.transpose(1, 2).reshape(b, s, -1))


def test_fused_qkv_gqa_tells_the_kv_head_in_either_order():
    x = torch.randn(2, 6, 32)
    for kv_outer in (True, False):
        kinds = sorted(g.kind for g in gp.trace(_FusedGQA(kv_outer).eval(), (x,)).groups if g.kind in ("head", "query_group"))
        assert kinds == ["head", "query_group"], kv_outer
        for targets, want in ((("heads",), (2, 1)), (("query_heads",), (2, 2))):  # (query heads, kv heads) kept
            pruned, report = gp.prune(_FusedGQA(kv_outer).eval(), (x,), targets=targets, ratio=0.5, round_to=1,
                                      verify=True, measure_latency=False)
            assert report.oracle.verdict == "PASS" and (pruned.nq // 8, pruned.nkv // 8) == want, (kv_outer, targets)


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.heads, self.norm, self.qkv, self.o = 2, nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in self.qkv(self.norm(x)).chunk(3, -1))
        x = x + self.o(((q @ k.transpose(-1, -2)).softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1))
        return x + self.ff(x)


class _PiT(nn.Module):
    """PiT: a stage's residual stream pooled by a depthwise conv with a channel multiplier."""

    def __init__(self, d=16):
        super().__init__()
        self.emb, self.b1 = nn.Conv2d(3, d, 4, 4), _Block(d)
        self.pool = nn.Sequential(nn.Conv2d(d, 2 * d, 3, 2, 1, groups=d), nn.Conv2d(2 * d, 2 * d, 1))
        self.b2, self.head = _Block(2 * d), nn.Linear(2 * d, 10)

    def forward(self, x):
        x = self.emb(x)
        b, _, h, w = x.shape
        x = self.b1(x.flatten(2).transpose(1, 2))
        x = self.pool(x.transpose(1, 2).reshape(b, -1, h, w)).flatten(2).transpose(1, 2)
        return self.head(self.b2(x).mean(1))


def test_a_layernormed_stream_split_by_a_depthwise_conv_is_the_hidden_size():
    """Before: labelled conv_group (a depthwise conv splits it), so the default call of a model with attention
    cut the stage's residual stream, inexact across its LayerNorms (oracle PARTIAL)."""
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(0)
    model = _PiT().eval()
    assert gp.trace(model, (x,)).group_of("emb.weight", 0).kind == "hidden"
    pruned, report = gp.prune(copy.deepcopy(model), (x,), verify=True, measure_latency=False)
    assert pruned.emb.out_channels == 16 and pruned.b1.heads == 1 and report.oracle.verdict == "PASS"


class _Merger(nn.Module):
    """vit-pytorch's PatchMerger: learned queries (tokens_out, dim) pool the sequence by attention."""

    def __init__(self, dim=32, tokens=8):
        super().__init__()
        self.inp, self.norm = nn.Linear(8, dim), nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(tokens, dim))
        self.block, self.out = _Block(dim), nn.Linear(dim, 5)

    def forward(self, x):
        x = self.norm(self.inp(x))
        x = (self.queries @ x.transpose(-1, -2) * x.shape[-1] ** -0.5).softmax(-1) @ x
        return self.out(self.block(x).mean(1))


def test_learned_queries_are_output_tokens_not_heads():
    """Before: a rank-2 query's rows (output tokens) were taken for a head axis, and the default call cut
    the merged tokens 8 -> 4 (oracle NOT CHECKED)."""
    torch.manual_seed(0)
    model, x = _Merger().eval(), torch.randn(2, 20, 8)
    graph = gp.trace(model, (x,))
    assert graph.group_of("queries", 0).kind != "head"
    assert [g.size for g in graph.groups if g.kind == "head"] == [2]  # the block's own two heads
    pruned, report = gp.prune(model, (x,), verify=True, measure_latency=False)
    assert pruned.queries.shape[0] == 8 and pruned.block.heads == 1 and report.oracle.verdict == "PASS"


class _Packed(nn.Module):
    """NaViT in small: forward takes one list of images of different sizes, and packs them by their values."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, images):
        sizes = torch.tensor([i.shape[-1] for i in images])
        tokens = torch.cat([self.conv(i[None]).flatten(2)[0].T for i in images])
        return tokens.repeat_interleave(sizes.repeat_interleave(sizes) * 0 + 1, dim=0)[: int(sizes.sum().item())]


def test_a_forward_that_takes_one_list_gets_no_advice_to_pass_a_tuple():
    """Before: "give a tuple, (x, y), where they are separate arguments", wrong for a forward of one list."""
    images = [torch.randn(3, 8, 8), torch.randn(3, 8, 12)]
    try:
        gp.prune(_Packed().eval(), (images,), ratio=0.5)
    except gp.GraphpruneError as err:
        assert "give a tuple" not in str(err)
    else:  # the forward reads its inputs' values: it must not prune silently either
        raise AssertionError("a forward that packs by its inputs' values was pruned")


class _ScaledGQA(nn.Module):
    """GQA whose repeated keys are scaled by a buffer first (``scale * k``): the repeat is not on the keys'
    first-input path (a review of 997f538: both head factors were labelled heads)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k, self.v, self.o = nn.Linear(32, 32), nn.Linear(32, 16), nn.Linear(32, 16), nn.Linear(32, 32)
        self.register_buffer("scale", torch.ones(1, 1, 1, 8))

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (f(x).view(b, s, -1, 8).transpose(1, 2) for f in (self.q, self.k, self.v))
        r, kvh = q.shape[1] // k.shape[1], k.shape[1]
        k, v = (t[:, :, None].expand(b, kvh, r, s, 8).reshape(b, -1, s, 8) for t in (k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, self.scale * k, v)
        return x + self.o(y.transpose(1, 2).reshape(b, s, -1))


def test_a_repeat_off_the_keys_first_input_path_still_tells_the_kv_head():
    x = torch.randn(2, 6, 32)
    graph = gp.trace(_ScaledGQA().eval(), (x,))
    assert sorted(g.kind for g in graph.groups if g.kind in ("head", "query_group")) == ["head", "query_group"]
    pruned, report = gp.prune(_ScaledGQA().eval(), (x,), targets=("heads",), ratio=0.5, round_to=1, verify=True,
                              measure_latency=False)
    assert report.oracle.verdict == "PASS" and (pruned.q.out_features, pruned.k.out_features) == (16, 8)
