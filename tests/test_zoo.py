"""Every zoo model, small config: hand-derived group counts, prune at 0.5 under the oracle,
ratio 0 is the identity, and whole heads for Llama (GQA kv heads) and ViT.

The expected group counts are derived from the architectures in models/*.py and the
coupling semantics (not copied from the engine's output). A group is one independent
index space that at least one parameter/buffer dim carries, of size > 1, that is not a
conv kernel window. Shared conventions used below:

  * "frozen io": the RGB input channels (3) of the first conv and the class/vocab dim of
    the output layer are frozen groups; they still count in ``g.groups``.
  * a residual stream (every tensor joined by `+`) is one group;
  * a conv/linear/norm chain between two such points is one group;
  * size-1 spaces (batch, the cls token's own slot) never appear.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import n_params

import graphprune as gp
from graphprune.reasons import MODEL_IO
from graphprune.zoo import (
    ZOO,
    build,
    csp,
    densenet,
    efficientnet_lite,
    llama,
    mixer,
    mobilenetv2,
    resnet,
    resnext,
    se_cnn,
    unet,
    vit,
)

FROZEN_IO = 2  # RGB input channels + output classes (llama has neither: its frozen group is the vocab)


# ------------------------------------------------------------------------------------------------
# Hand derivations. Each returns total / prunable group counts and, where the model has any,
# the number and size of "outer" (block) groups and the number of "inner" groups.
# ------------------------------------------------------------------------------------------------
def _expect_resnet18() -> dict:
    c = resnet._R18["small"]  # layers (2,2,2,2), planes (4,8,12,16), stem 8, 10 classes
    blocks = sum(c["layers"])  # 8 BasicBlocks
    # Every stage opens with a 1x1 projection shortcut, stage 1 too (stem 8 != 4 wide), so the
    # stem output and each stage's residual stream are separate spaces: 1 + 4 streams.
    assert c["stem_width"] != c["planes"][0] * 1
    streams = 1 + len(c["planes"])
    inner = blocks  # conv1 -> bn1 -> conv2 inside each BasicBlock
    # 5 streams + 8 block-inner + 2 frozen io = 15; prunable 13
    sizes = [c["stem_width"], *c["planes"]] + [p for p, n in zip(c["planes"], c["layers"]) for _ in range(n)]
    return dict(total=streams + inner + FROZEN_IO, prunable=streams + inner, sizes=sizes + [3, c["num_classes"]])


def _expect_resnet50() -> dict:
    c = resnet._R50["small"]  # layers (2,2,2,2), planes (2,4,6,8) x4 = 8,16,24,32; stem 8
    blocks = sum(c["layers"])
    # Stage 1 keeps the stem's width (8 == 2*4) at stride 1: no projection, so the stem output
    # *is* the stage-1 residual stream. Stages 2-4 open with projections: 4 streams in all.
    assert c["stem_width"] == c["planes"][0] * 4
    streams = len(c["planes"])
    # Bottleneck: conv1 out (planes) and conv2 out (planes) are two inner spaces; planes >= 2.
    assert min(c["planes"]) > 1
    inner = 2 * blocks
    # 4 streams + 16 inner + 2 frozen io = 22; prunable 20
    sizes = [4 * p for p in c["planes"]] + [p for p, n in zip(c["planes"], c["layers"]) for _ in range(2 * n)]
    return dict(total=streams + inner + FROZEN_IO, prunable=streams + inner, sizes=sizes + [3, c["num_classes"]])


def _expect_resnext() -> dict:
    c = resnext._CONFIGS["small"]  # planes (4,8,16,32), stem 8, groups 4, width_per_group 2, base 4
    kw = c["block_kwargs"]
    G = kw["groups"]
    widths = [G * kw["width_per_group"] * p // kw["base_planes"] for p in c["planes"]]  # 8,16,32,64
    assert all(w // G > 1 for w in widths)  # channels per conv group: 2,4,8,16 (never depthwise)
    blocks = sum(c["layers"])
    # Stage 1 out = 4*4 = 16 != stem 8: projection. So 1 stem + 4 stage streams.
    assert c["stem_width"] != c["planes"][0] * 4
    streams = 1 + len(c["planes"])
    # Grouped 3x3 conv: its input channels = (group, in-per-group) and its output channels =
    # (group, out-per-group); the group factor is shared by input, weight and output.
    # Per block: 1 outer (conv groups, size G) + 2 inner (conv1->bn1->conv2-in per group,
    # conv2-out->bn2->conv3-in per group).
    outer, inner = blocks, 2 * blocks
    # 5 streams + 8 outer + 16 inner + 2 frozen io = 31; prunable 29
    return dict(total=streams + outer + inner + FROZEN_IO, prunable=streams + outer + inner,
                outer=outer, outer_size=G, inner=inner)


def _expect_mobilenetv2() -> dict:
    c = mobilenetv2._CONFIGS["small"]  # [[1,4,1,1],[6,8,2,2],[6,12,2,2],[6,16,2,1]], stem 8, last 32
    # The stem output (8) is one space; the first block has t=1 (no expand conv), and a
    # depthwise conv ties its input to its output channels, so that block's dw conv joins it.
    stem = 1
    cin, streams, expand_blocks = c["stem_width"], 0, 0
    for t, ch, n, s in c["setting"]:
        for i in range(n):
            residual = (s if i == 0 else 1) == 1 and cin == ch
            streams += 0 if residual else 1  # a block without `x + ...` starts a new stream
            expand_blocks += t != 1  # expand conv -> BN -> dw -> BN -> project-in: one space
            cin = ch
    assert (streams, expand_blocks) == (4, 6)  # streams 4, 8, 12, 16; 6 of the 7 blocks expand
    last = 1  # final 1x1 conv (32) -> classifier input
    # 1 stem + 4 streams + 6 hidden + 1 last + 2 frozen io = 14; prunable 12
    prunable = stem + streams + expand_blocks + last
    return dict(total=prunable + FROZEN_IO, prunable=prunable)


def _expect_efficientnet_lite0() -> dict:
    c = efficientnet_lite._CONFIGS["small"]  # stages (repeats, k, stride, expand, out), stem 8, head 32
    # As MobileNetV2: the stem's output is a stream; a block keeps the stream when it adds its input
    # (stride 1, same width), else starts one; an expanding block's inner channels are one space.
    streams, inner, cin = 1, 0, c["stem_width"]
    for repeats, _, stride, expand, cout in c["setting"]:
        for i in range(repeats):
            residual = (stride if i == 0 else 1) == 1 and cin == cout
            streams += 0 if residual else 1
            inner += expand != 1
            cin = cout
    assert (streams, inner) == (3, 4)  # streams 8 (the t=1 block adds onto the stem's), 12, 16
    prunable = streams + inner + 1  # + the head conv's 32 outputs
    return dict(total=prunable + FROZEN_IO, prunable=prunable)


def _expect_densenet121() -> dict:
    c = densenet._CONFIGS["small"]  # growth 4, blocks (2,3,2,2), init 8, bn_size 2
    layers = sum(c["block_config"])  # 9 dense layers
    transitions = len(c["block_config"]) - 1  # 3
    # torch.cat keeps every part its own space: the stem output (block-1 input), each
    # layer's new `growth` features, each transition's output (next block's input).
    # Each dense layer also has its bottleneck (bn_size*growth = 8) space.
    stem = 1
    prunable = stem + 2 * layers + transitions  # 1 + 18 + 3 = 22
    # widths: each layer's bottleneck and growth; a transition halves the block's output width
    sizes, width = [c["init_features"]], c["init_features"]
    for i, n in enumerate(c["block_config"]):
        sizes += [c["bn_size"] * c["growth"], c["growth"]] * n
        width += n * c["growth"]
        if i < len(c["block_config"]) - 1:
            width //= 2
            sizes.append(width)
    return dict(total=prunable + FROZEN_IO, prunable=prunable, sizes=sizes + [3, c["num_classes"]])  # 24


def _expect_unet() -> dict:
    c = unet._CONFIGS["small"]  # widths (4,8,12,16), 2 classes
    levels = len(c["widths"])
    double_convs = 1 + 2 * (levels - 1)  # inc + 3 downs + 3 ups = 7
    # DoubleConv: conv1 out (mid) and conv2 out are two spaces; the skip it feeds is the
    # same tensor as its output. Each Up's ConvTranspose output (cin//2) is a new space,
    # concatenated after the skip.
    ups = levels - 1
    prunable = 2 * double_convs + ups  # 14 + 3 = 17
    assert c["num_classes"] > 1  # outc's 2 output channels are a (frozen) group
    return dict(total=prunable + FROZEN_IO, prunable=prunable)  # 19


def _expect_se_cnn() -> dict:
    c = se_cnn._CONFIGS["small"]  # widths (8,12,16), blocks (2,1,2), reduction 4
    # Stage 0 is as wide as the stem (8) with stride 1: identity adds, so the stem output is
    # the stage-0 stream. Stages 1 and 2 open with a projection shortcut: 3 streams.
    assert all(a != b for a, b in zip(c["widths"], c["widths"][1:]))  # each later stage projects
    streams = len(c["widths"])
    blocks = sum(c["blocks"])  # 5
    # Per block: conv1 -> bn1 -> conv2-in, and the SE squeeze (fc1 out -> fc2 in, width
    # max(w // 4, 2) = 2, 2, 3, 4, 4). The SE gate (fc2 out) multiplies the block's
    # channels, so it joins the stream.
    prunable = streams + 2 * blocks  # 3 + 10 = 13
    return dict(total=prunable + FROZEN_IO, prunable=prunable)  # 15


def _expect_csp() -> dict:
    c = csp._CONFIGS["small"]  # stem 4, widths (8,12,16,16), depths (1,2,1,1), split (4,8), depth 1
    stem = 1
    # Per stage: the stride-2 Conv's output (C2f input); C2f's cv1 output is chunk(2): both
    # halves share ONE space, and the shortcut bottlenecks keep it (x + y), so every part of
    # C2f's concat is that same space; one inner space per bottleneck (cv1 -> cv2 in);
    # C2f's cv2 output. So 3 + n per stage.
    stages = sum(3 + n for n in c["depths"])  # 4 + 5 + 4 + 4 = 17
    sppf = 2  # cv1 output (shared by the three max-pools and all 4 concat parts) + cv2 output
    # CSPSplit: explicit, uneven split sizes keep bypass (4) and process (8) separate;
    # each no-shortcut bottleneck adds an inner and a new output space; then cv2's output.
    cspsplit = 2 + 2 * c["split_depth"] + 1  # 5
    head = 1  # head_conv output (32) -> linear input
    prunable = stem + stages + sppf + cspsplit + head  # 1 + 17 + 2 + 5 + 1 = 26
    return dict(total=prunable + FROZEN_IO, prunable=prunable)  # 28


def _expect_vit() -> dict:
    c = vit._CONFIGS["small"]  # img 32, patch 8, dim 64, depth 2, heads 4, mlp 128
    depth, heads = c["depth"], c["num_heads"]
    grid = c["img_size"] // c["patch"]  # 4x4 patches
    assert grid > 1 and c["dim"] // heads > 1
    hidden = 1  # residual stream incl. patch_embed out, cls/pos embed dim 2, every LayerNorm
    # Per block: qkv's output reshapes to (3, heads, head_dim): the q/k/v selector (size 3,
    # frozen by unbind), heads (outer), head_dim (inner); and the MLP hidden (128).
    per_block = 4
    # pos_embed dim 1 = cat(cls slot (size 1: no group), patches = grid rows x grid cols);
    # the patch conv's spatial dims are frozen positions: 2 frozen groups of size `grid`.
    tokens = 2
    total = hidden + depth * per_block + tokens + FROZEN_IO  # 1 + 8 + 2 + 2 = 13
    prunable = hidden + depth * 3  # hidden + (heads, head_dim, mlp) per block = 7
    sizes = [c["dim"]] + [3, heads, c["dim"] // heads, c["mlp_hidden"]] * depth + [grid, grid, 3, c["num_classes"]]
    return dict(total=total, prunable=prunable, outer=depth, outer_size=heads, inner=depth, sizes=sizes)


def _expect_mixer() -> dict:
    c = mixer._CONFIGS["small"]  # img 32, patch 8, dim 32, depth 2, token_hidden 24, channel_hidden 64
    hidden = 1  # residual stream, LayerNorm'd (inexact)
    per_block = 2  # token-MLP hidden (24), channel-MLP hidden (64)
    # The token axis (16) is carried by every token-MLP's fc1 input / fc2 output; it is the
    # flattened (rows, cols) grid of the stem conv's frozen spatial dims: 2 frozen groups.
    tokens = 2
    total = hidden + c["depth"] * per_block + tokens + FROZEN_IO  # 1 + 4 + 2 + 2 = 9
    return dict(total=total, prunable=hidden + c["depth"] * per_block)  # 5


def _expect_llama() -> dict:
    c = llama._CONFIGS["small"]  # vocab 100, hidden 64, inter 160, 2 layers, 4 heads, 2 kv, head_dim 16
    n_rep = c["num_heads"] // c["num_kv_heads"]
    assert n_rep > 1 and c["num_kv_heads"] > 1 and c["head_dim"] // 2 > 1
    hidden = 1  # embed dim, RMSNorm weights, all projections' hidden side, tied lm_head (inexact)
    vocab = 1  # embedding rows = tied lm_head rows = model output: one frozen group
    # RoPE: cos/sin = cat(freqs, freqs) over inv_freq (head_dim/2 = 8), computed once and
    # used by every layer, so all layers' q/k head_dim = cat(f, f) with ONE shared atom f.
    rope = 1
    # Per layer: kv heads (outer, size num_kv_heads; q heads = kv x n_rep via repeat_kv),
    # queries per kv head (inner, n_rep), v/o head_dim (inner, 16: v never meets RoPE),
    # MLP intermediate (gate * up -> down).
    per_layer = 4
    L = c["num_layers"]
    total = hidden + vocab + rope + L * per_layer  # 1 + 1 + 1 + 8 = 11
    sizes = [c["hidden"], c["vocab_size"], c["head_dim"] // 2]
    sizes += [c["num_kv_heads"], n_rep, c["head_dim"], c["intermediate"]] * L
    return dict(total=total, prunable=total - vocab, outer=L, outer_size=c["num_kv_heads"],
                inner=rope + 2 * L, sizes=sizes)  # 10 prunable, 2 outer, 5 inner


EXPECT = {
    "resnet18": _expect_resnet18, "resnet50": _expect_resnet50, "resnext": _expect_resnext,
    "mobilenetv2": _expect_mobilenetv2, "densenet121": _expect_densenet121, "unet": _expect_unet,
    "se_cnn": _expect_se_cnn, "csp": _expect_csp, "vit": _expect_vit, "mixer": _expect_mixer,
    "llama": _expect_llama, "efficientnet_lite0": _expect_efficientnet_lite0,
}
NAMES = list(ZOO)

# A parameter on the LayerNorm/RMSNorm'd hidden dim of each transformer-like model.
NORMED_HIDDEN = {"vit": "blocks.0.norm1.weight", "mixer": "blocks.0.norm1.weight",
                 "llama": "layers.0.input_layernorm.weight"}


_TRACED: dict = {}


def _traced(name: str):
    """(model, args, graph) built and traced once per model for the whole module.

    The graph only reads shapes off the model (and the exported program keeps its own
    references), so tests that prune must work on a deep copy of the model.
    """
    if name not in _TRACED:
        model, args = build(name)
        _TRACED[name] = (model, args, gp.trace(model, args))
    return _TRACED[name]


def _run(model, args):
    with torch.no_grad():
        return model(*args)


def _member(group, name: str, dim: int):
    found = [m for m in group.members if m.name == name and m.dim == dim]
    assert len(found) == 1, f"{name} dim {dim} not a member of group {group.id}"
    return found[0]


def test_every_zoo_model_has_a_derivation():
    assert set(EXPECT) == set(ZOO)


# ------------------------------------------------------------------------------------------------
# 1. group counts
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_group_counts_match_derivation(name):
    exp = EXPECT[name]()
    _, _, g = _traced(name)
    roles = [grp.role for grp in g.groups]
    assert len(g.groups) == exp["total"], g.summary()
    assert len(g.prunable_groups()) == exp["prunable"], g.summary()
    assert roles.count("outer") == exp.get("outer", 0), g.summary()
    assert roles.count("inner") == exp.get("inner", 0), g.summary()
    outer = [grp for grp in g.groups if grp.role == "outer"]
    assert all(grp.size == exp["outer_size"] and grp.prunable for grp in outer)
    if "sizes" in exp:  # the width of every space, where the derivation spells them
        assert sorted(grp.size for grp in g.groups) == sorted(exp["sizes"]), g.summary()
    # the frozen io groups: image channels (or vocab rows) and the output classes
    frozen = [grp for grp in g.groups if not grp.prunable]
    reasons = " ".join(str(r) for grp in frozen for r in grp.frozen)
    assert "model output" in reasons and any(r.kind == MODEL_IO for grp in frozen for r in grp.frozen)
    # the summary's footer counts the same groups
    assert f"\n{exp['total']} groups, {exp['prunable']} prunable" in g.summary()


# ------------------------------------------------------------------------------------------------
# 2 + 3. prune at 0.5 with the default roles, under the oracle
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_prune_half_passes_oracle_and_shrinks(name, check_prune):
    model, args, g = _traced(name)  # check_prune prunes a copy: the cached model stays whole
    ref = _run(model, args)
    plan = gp.plan(g, model, ratio=0.5, importance="l2", roles=("channel", "outer"))
    selected = {grp.id for grp in g.prunable_groups(("channel", "outer"))}
    assert set(plan.pruned) == selected
    for gid, idx in plan.pruned.items():  # ratio 0.5 drops floor(size / 2) of every group
        assert len(idx) == g.group(gid).size // 2 and len(set(idx)) == len(idx)

    # parameters and MACs measured on the pruned module, and the oracle (checked and inexact
    # groups together are the pruned ones: see check_prune)
    pruned, report = check_prune(model, args, graph=g, plan_=plan, atol=1e-5)
    oracle = report.oracle
    assert oracle.max_abs_diff <= 1e-5
    assert oracle.checked_groups
    assert not set(oracle.checked_groups) & set(oracle.inexact_groups)

    if name in NORMED_HIDDEN:
        hidden = g.group_of(NORMED_HIDDEN[name], 0)
        assert hidden.role == "channel" and hidden.prunable and hidden.inexact
        assert hidden.id in oracle.inexact_groups and hidden.id not in oracle.checked_groups
    else:  # CNNs: BatchNorm is per channel, so every pruned group is oracle-exact
        assert not oracle.inexact_groups

    out = _run(pruned, args)
    assert out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, ref)  # half of every group is gone: the function changed
    assert report.params_after < report.params_before and report.macs_after < report.macs_before


@pytest.mark.parametrize("name", NAMES)
def test_count_params_counts_tied_tensors_once(name):
    model, _, g = _traced(name)
    real = n_params(model)  # the cached model is never pruned
    # llama's tied embed_tokens/lm_head weight is two placeholders in the exported program
    # but one tensor: it must count once.
    assert gp.count_params(g.ir) == real


# ------------------------------------------------------------------------------------------------
# 4. ratio 0 is the identity
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_ratio_zero_is_bit_identical(name):
    model, args = build(name)
    ref = _run(model, args)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    model, report = gp.prune(model, args, ratio=0.0)
    assert torch.equal(_run(model, args), ref)
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert (report.params_after, report.macs_after) == (report.params_before, report.macs_before)


# ------------------------------------------------------------------------------------------------
# 5. Llama: GQA kv heads found without being told, pruned whole
# ------------------------------------------------------------------------------------------------
def test_llama_kv_heads_are_found_and_pruned_whole(check_prune):
    c = llama._CONFIGS["small"]
    H, KV, D, L = c["num_heads"], c["num_kv_heads"], c["head_dim"], c["num_layers"]
    n_rep = H // KV
    model, args = build("llama")
    ref = _run(model, args)
    g = gp.trace(model, args)
    outer = [grp for grp in g.groups if grp.role == "outer"]
    assert len(outer) == L

    kv_group = {}
    for i in range(L):
        pre = f"layers.{i}.self_attn."
        mine = [grp for grp in outer if any(m.name.startswith(pre) for m in grp.members)]
        assert len(mine) == 1
        grp = kv_group[i] = mine[0]
        assert grp.size == KV and grp.prunable and not grp.inexact
        have = {(m.name, m.dim) for m in grp.members}
        assert {(pre + "q_proj.weight", 0), (pre + "k_proj.weight", 0), (pre + "v_proj.weight", 0),
                (pre + "o_proj.weight", 1)} <= have
        # kv head j owns head_dim rows of k/v and its n_rep query heads' rows of q (cols of o)
        for j in range(KV):
            for name, dim, block in (("k_proj.weight", 0, D), ("v_proj.weight", 0, D),
                                     ("q_proj.weight", 0, n_rep * D), ("o_proj.weight", 1, n_rep * D)):
                pos = grp.positions(_member(grp, pre + name, dim), j)
                assert pos.tolist() == list(range(j * block, (j + 1) * block)), (name, j)

    plan = gp.plan(g, model, ratio=0.5, roles=("outer",))
    assert set(plan.pruned) == {grp.id for grp in kv_group.values()}
    assert all(len(idx) == KV // 2 for idx in plan.pruned.values())
    oracle = gp.verify(model, args, plan, g, atol=1e-5)
    assert oracle.passed, str(oracle)
    assert set(oracle.checked_groups) == set(plan.pruned) and not oracle.inexact_groups
    assert torch.equal(_run(model, args), ref)  # verify did not touch the model

    old = model.state_dict()  # check_prune prunes a copy
    model, report = check_prune(model, args, graph=g, plan_=plan, verify=False)  # verified above
    assert report.params_after < report.params_before
    for i, grp in kv_group.items():
        pre = f"layers.{i}.self_attn."
        attn = model.layers[i].self_attn
        q_rows, k_rows, v_rows = (attn.q_proj.weight.shape[0], attn.k_proj.weight.shape[0],
                                  attn.v_proj.weight.shape[0])
        assert q_rows % D == 0 and k_rows % D == 0 and v_rows == k_rows
        q_heads, kv_heads = q_rows // D, k_rows // D
        assert kv_heads == KV - len(plan.pruned[grp.id])
        assert q_heads * KV == H * kv_heads  # q heads / kv heads unchanged
        assert attn.o_proj.weight.shape[1] == q_rows
        assert attn.num_key_value_groups == n_rep and attn.head_dim == D
        # every pruned kv head is one whole, aligned block of head_dim rows of k_proj, and the
        # rewritten weights are exactly the original minus those blocks
        k_member = _member(grp, pre + "k_proj.weight", 0)
        removed = set()
        for j in plan.pruned[grp.id]:
            pos = grp.positions(k_member, j)
            assert len(pos) == D and pos[0] % D == 0 and np.array_equal(pos, np.arange(pos[0], pos[0] + D))
            removed.update(pos.tolist())
        keep = [r for r in range(KV * D) if r not in removed]
        assert torch.equal(attn.k_proj.weight, old[pre + "k_proj.weight"][keep])
        assert torch.equal(attn.v_proj.weight, old[pre + "v_proj.weight"][keep])
        q_member = _member(grp, pre + "q_proj.weight", 0)
        q_removed = {p for j in plan.pruned[grp.id] for p in grp.positions(q_member, j).tolist()}
        q_keep = [r for r in range(H * D) if r not in q_removed]
        assert torch.equal(attn.q_proj.weight, old[pre + "q_proj.weight"][q_keep])
        assert torch.equal(attn.o_proj.weight, old[pre + "o_proj.weight"][:, q_keep])
    out = _run(model, args)
    assert out.shape == ref.shape and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------
# 6. ViT: heads found in the fused qkv, pruned whole, num_heads updated
# ------------------------------------------------------------------------------------------------
def test_vit_heads_are_found_and_pruned_whole(check_prune):
    c = vit._CONFIGS["small"]
    H, dim, depth = c["num_heads"], c["dim"], c["depth"]
    D = dim // H
    model, args = build("vit")
    ref = _run(model, args)
    g = gp.trace(model, args)
    outer = [grp for grp in g.groups if grp.role == "outer"]
    assert len(outer) == depth

    heads = {}
    for i in range(depth):
        pre = f"blocks.{i}.attn."
        mine = [grp for grp in outer if any(m.name.startswith(pre) for m in grp.members)]
        assert len(mine) == 1
        grp = heads[i] = mine[0]
        assert grp.size == H and grp.prunable and not grp.inexact
        have = {(m.name, m.dim) for m in grp.members}
        assert {(pre + "qkv.weight", 0), (pre + "qkv.bias", 0), (pre + "proj.weight", 1)} <= have
        qkv = _member(grp, pre + "qkv.weight", 0)
        proj = _member(grp, pre + "proj.weight", 1)
        for h in range(H):
            # head h: one D-block in each of the q, k and v thirds of qkv, one D-block of proj's input
            want = [t * dim + h * D + d for t in range(3) for d in range(D)]
            assert grp.positions(qkv, h).tolist() == want
            assert grp.positions(proj, h).tolist() == list(range(h * D, (h + 1) * D))

    plan = gp.plan(g, model, ratio=0.5, roles=("outer",))
    assert set(plan.pruned) == {grp.id for grp in heads.values()}
    old = model.state_dict()  # check_prune prunes a copy, under the oracle
    model, report = check_prune(model, args, graph=g, plan_=plan, atol=1e-5)
    assert set(report.oracle.checked_groups) == set(plan.pruned) and not report.oracle.inexact_groups
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    for i, grp in heads.items():
        pre = f"blocks.{i}.attn."
        attn = model.blocks[i].attn
        kept_heads = H - len(plan.pruned[grp.id])
        assert attn.num_heads == kept_heads == H // 2
        assert attn.head_dim == D  # heads pruned whole: head_dim untouched
        assert attn.qkv.weight.shape == (3 * kept_heads * D, dim)
        assert attn.qkv.out_features == 3 * kept_heads * D
        assert attn.proj.weight.shape == (dim, kept_heads * D) and attn.proj.in_features == kept_heads * D
        qkv = _member(grp, pre + "qkv.weight", 0)
        removed = {p for h in plan.pruned[grp.id] for p in grp.positions(qkv, h).tolist()}
        keep = [r for r in range(3 * dim) if r not in removed]
        assert torch.equal(attn.qkv.weight, old[pre + "qkv.weight"][keep])
        assert torch.equal(attn.qkv.bias, old[pre + "qkv.bias"][keep])
    out = _run(model, args)
    assert out.shape == ref.shape and torch.isfinite(out).all()
