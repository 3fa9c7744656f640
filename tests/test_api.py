"""Public API behaviour: queries, options, errors, rewrite guarantees."""
from __future__ import annotations

import copy
import json

import networkx as nx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp
from graphprune.errors import PlanError
from graphprune.reasons import UNKNOWN_OP
from graphprune.zoo import build


@pytest.fixture(scope="module")
def resnet():
    model, args = build("resnet18")
    return model, args, gp.trace(model, args)


def test_query_what_moves_with_one_channel(resnet):
    model, args, g = resnet
    moved = {(name, dim): pos for name, dim, pos in g.affected("layer1.0.conv1.weight", 0, 3)}
    # conv1's output channel 3 feeds bn1 and conv2's input channel 3, nothing else.
    assert moved == {("layer1.0.conv1.weight", 0): [3], ("layer1.0.bn1.weight", 0): [3],
                     ("layer1.0.bn1.bias", 0): [3], ("layer1.0.bn1.running_mean", 0): [3],
                     ("layer1.0.bn1.running_var", 0): [3], ("layer1.0.conv2.weight", 1): [3]}


def test_a_query_on_a_frozen_or_shared_position_says_so(resnet):
    """affected() answered a fused q/k/v row with the frozen q/k/v slab (rows 0-63, no heads) and a
    model input's channel with itself, silently: neither can be removed that way."""
    _, _, g = resnet
    with pytest.raises(PlanError, match="cannot be removed: group .* is frozen"):
        g.affected("conv1.weight", 1, 0)  # the image's colour channel
    model, args = build("vit")
    vit = gp.trace(model, args)
    name = "blocks.0.attn.qkv.weight"
    heads, dims = (next(grp for grp in vit.groups_of(name, 0) if grp.kind == k and grp.prunable)
                   for k in ("head", "head_dim"))
    with pytest.raises(PlanError, match=rf"lies in 2 prunable groups, each another way to remove it: .*{heads.id} "
                                        rf"\(head.*{dims.id} \(head_dim"):
        vit.affected(name, 0, 7)
    by_head = {(n, d): p for n, d, p in vit.affected(name, 0, 7, group=heads.id)}
    by_dim = {(n, d): p for n, d, p in vit.affected(name, 0, 7, group=dims.id)}
    # a head: its query, key and value rows and its columns of the output projection; a position
    # within heads: that position in every head's q, k and v, and the value's in every proj column block
    assert 7 in by_head[(name, 0)] and len(by_head[(name, 0)]) == 3 * len(by_head[("blocks.0.attn.proj.weight", 1)])
    assert 7 in by_dim[(name, 0)] and len(by_dim[(name, 0)]) > 3 and ("blocks.0.attn.proj.weight", 1) in by_dim
    with pytest.raises(PlanError, match="does not hold position"):
        vit.affected(name, 0, 7, group=0)


def test_residual_stream_couples_a_whole_stage(resnet):
    _, _, g = resnet
    grp = g.group_of("layer2.0.conv2.weight", 0)
    names = {m.name for m in grp.members}
    # the stage-2 stream: both blocks' outputs, the projection shortcut, next stage's inputs
    for expected in ("layer2.0.downsample.0.weight", "layer2.1.conv2.weight", "layer2.1.conv1.weight",
                     "layer3.0.conv1.weight", "layer3.0.downsample.0.weight"):
        assert expected in names
    assert "layer1.0.conv2.weight" not in names


def test_group_printing_and_json(resnet):
    _, _, g = resnet
    grp = g.group_of("layer1.0.conv1.weight", 0)
    # conv1's planes[0] = 4 outputs, made by conv1 alone (an FFN-like inner channel, not the
    # residual stream), and what moves with them (test_query_what_moves_with_one_channel)
    members = {("layer1.0.conv1.weight", 0), ("layer1.0.bn1.weight", 0), ("layer1.0.bn1.bias", 0),
               ("layer1.0.bn1.running_mean", 0), ("layer1.0.bn1.running_var", 0), ("layer1.0.conv2.weight", 1)}
    header, *lines = str(grp).splitlines()
    assert header == f"Group {grp.id}: size 4, ffn (channel), prunable"
    assert {(w[0], int(w[2])) for w in (line.split() for line in lines)} == members
    data = json.loads(g.to_json())
    assert [d["id"] for d in data["groups"]] == [x.id for x in g.groups]
    (entry,) = [d for d in data["groups"] if d["id"] == grp.id]
    assert (entry["size"], entry["prunable"], entry["role"]) == (4, True, "channel")
    assert {(m["name"], m["dim"]) for m in entry["members"]} == members
    # ResNet-18 small: 5 residual streams + 8 block-inner spaces prunable, RGB and classes frozen
    # (derived in tests/test_zoo.py)
    assert sum(d["prunable"] for d in data["groups"]) == 13 and len(data["groups"]) == 15
    assert "\n15 groups, 13 prunable" in g.summary()
    # the table lists the first `limit` groups (None: all) and cuts reasons at `width` (None: whole)
    short = g.summary(limit=4)
    assert "... 11 more groups" in short and short.count("\n") < g.summary().count("\n")
    whole = g.summary(limit=None, width=None)
    assert all(str(x.frozen[0]) in whole for x in g.groups if x.frozen)


def test_networkx_view(resnet):
    _, _, g = resnet
    dg = g.to_networkx()
    assert isinstance(dg, nx.DiGraph) and nx.is_directed_acyclic_graph(dg)
    convs = [n for n, d in dg.nodes(data=True) if d.get("op") == "aten.conv2d"]
    # 1 stem + 8 blocks x 2 + 4 projections (small config: stem 8 wide, layer1 4 wide)
    assert len(convs) == 21


def test_frozen_groups_say_why(resnet):
    _, _, g = resnet
    frozen = [grp for grp in g.groups if not grp.prunable]
    reasons = " ".join(str(r) for grp in frozen for r in grp.frozen)
    assert "model input 'x'" in reasons and "model output" in reasons


def test_unknown_parameter_and_bad_index_errors(resnet):
    _, _, g = resnet
    with pytest.raises(gp.PlanError, match="unknown parameter 'layer1.0.conv9.weight'"):
        g.group_of("layer1.0.conv9.weight", 0)
    with pytest.raises(gp.PlanError, match="out of range"):
        g.group_of("layer1.0.conv1.weight", 5)
    with pytest.raises(gp.PlanError, match="out of range"):
        g.group_of("layer1.0.conv1.weight", 0).affected(99)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "0.5", True])
def test_ratio_out_of_range(resnet, ratio):
    model, args, g = resnet
    with pytest.raises(gp.PlanError, match=r"ratio must be a number in \[0, 1\)"):
        gp.plan(g, model, ratio=ratio)


def test_unknown_importance_and_ignored_name(resnet):
    model, args, g = resnet
    with pytest.raises(gp.PlanError, match="unknown importance"):
        gp.plan(g, model, importance="nope")
    with pytest.raises(gp.PlanError, match="matches no parameter or module"):
        gp.plan(g, model, ignore=["layer9"])


def test_ignore_keeps_a_module_whole(resnet, check_prune):
    model, args, g = resnet
    plan = gp.plan(g, model, ratio=0.5, ignore=["layer1.0.conv1"])
    # both spaces the conv touches stay whole: its outputs and the stem stream it reads
    touched = {g.group_of("layer1.0.conv1.weight", 0).id, g.group_of("layer1.0.conv1.weight", 1).id}
    assert len(touched) == 2 and not touched & set(plan.pruned)
    assert len(plan.pruned) == len(g.prunable_groups()) - 2
    pruned, _ = check_prune(model, args, graph=g, plan_=plan)
    assert pruned.layer1[0].conv1.weight.shape == model.layer1[0].conv1.weight.shape


def test_round_to_and_floor(resnet):
    model, args, g = resnet
    plan = gp.plan(g, model, ratio=0.9, round_to=4)
    for gid, idx in plan.pruned.items():
        size = g.group(gid).size
        kept = size - len(idx)
        assert kept >= 1 and (kept % 4 == 0 or kept == size)
    plan = gp.plan(g, model, ratio=0.99)
    assert all(g.group(gid).size - len(idx) >= 1 for gid, idx in plan.pruned.items())


def test_plan_json_round_trip_and_determinism(resnet):
    model, args, g = resnet
    p1 = gp.plan(g, model, ratio=0.4)
    p2 = gp.plan(gp.trace(model, args), model, ratio=0.4)
    assert p1.to_json() == p2.to_json()
    assert gp.PrunePlan.from_json(p1.to_json()).pruned == p1.pruned


def test_pruned_model_keeps_dtype_grad_and_trains(check_prune):
    model, args = build("se_cnn")
    frozen_name, frozen_param = next(iter(model.named_parameters()))
    frozen_param.requires_grad_(False)
    model, _ = check_prune(model, args, ratio=0.5)
    assert not dict(model.named_parameters())[frozen_name].requires_grad
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(*args).square().mean()
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_tied_weights_stay_tied(check_prune):
    model, args = build("llama")
    assert model.lm_head.weight is model.embed_tokens.weight
    model, _ = check_prune(model, args, ratio=0.5, roles=("channel", "outer"))  # the tied weight counts once
    assert model.lm_head.weight is model.embed_tokens.weight
    assert model.embed_tokens.weight.shape[1] == model.norm.weight.shape[0]
    assert model(*args).shape[-1] == 100  # vocabulary untouched


def test_meta_device_analysis_allocates_nothing():
    with torch.device("meta"):
        model, args = build("resnet50", "full")
    g = gp.trace(model, args)
    assert all(p.is_meta for p in model.parameters())
    # meta parameters have no magnitudes: random importance still plans
    plan = gp.plan(g, model, ratio=0.3, importance="random")
    assert plan.pruned
    with pytest.raises(gp.PlanError, match="meta"):
        gp.plan(g, model, ratio=0.3, importance="l2")


def test_ratio_zero_is_bit_identical():
    model, args = build("mobilenetv2")
    ref = model(*args)
    model, report = gp.prune(model, args, ratio=0.0)
    assert torch.equal(model(*args), ref)
    assert report.params_after == report.params_before


class HardCoded(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 4)

    def forward(self, x):
        return self.b(F.relu(self.a(x)).view(x.shape[0], 2, 4).reshape(x.shape[0], 8))


def test_hard_coded_size_is_reported_and_model_left_untouched():
    model = HardCoded().eval()
    args = (torch.randn(3, 8),)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(gp.RewriteError, match="spells a pruned size"):
        gp.prune(model, args, ratio=0.5, roles=("channel", "outer", "inner"))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class WithPadOp(nn.Module):
    """A model with an op no rule knows (a custom op registered through torch.library)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(6, 8), nn.Linear(8, 6), nn.Linear(6, 10), nn.Linear(10, 3)

    def forward(self, x):
        h = torch.ops.graphprune_test.mystery(self.b(F.relu(self.a(x))))
        return self.d(F.relu(self.c(h)))


@torch.library.custom_op("graphprune_test::mystery", mutates_args=())
def _mystery(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1) * 2.0


@_mystery.register_fake
def _(x):
    return torch.empty_like(x)


def test_unknown_op_freezes_with_reason_and_prunes_elsewhere(check_prune):
    model = WithPadOp().eval()
    args = (torch.randn(4, 6),)
    g = gp.trace(model, args)
    frozen = [grp for grp in g.groups if any(r.kind == UNKNOWN_OP and "graphprune_test.mystery" in r.op
                                             for r in grp.frozen)]
    # the op's input (b's outputs) and its output (c's inputs): two spaces of 6, both frozen
    assert sorted(sorted((m.name, m.dim) for m in grp.members) for grp in frozen) == [
        [("b.bias", 0), ("b.weight", 0)], [("c.weight", 1)]], g.summary()
    assert frozen[0].frozen[0].node == "mystery" and "node 'mystery'" in str(frozen[0].frozen[0])
    # the spaces the op does not touch still prune, exactly
    prunable = {grp.size for grp in g.prunable_groups()}
    assert prunable == {8, 10}
    pruned, _ = check_prune(model, args, graph=g, ratio=0.5)  # the custom op costs no MACs either way
    assert pruned(*args).shape == model(*args).shape and pruned.a.out_features == 4 and pruned.c.out_features == 5


def test_prune_rewrites_the_model_in_place():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    first = model[0]
    pruned, report = gp.prune(model, (torch.randn(3, 4),), ratio=0.5, measure_latency=False)
    assert pruned is model and model[0] is first  # the same objects, smaller
    assert first.weight.shape == (4, 4) and first.out_features == 4 and model[2].weight.shape == (2, 4)
    assert report.params_after == 4 * 4 + 4 + 2 * 4 + 2


class _HoldsComputed(torch.nn.Module):
    """torchdyn's ODEProblem: ``self.vf_params = torch.cat([p.flatten() for p in vf.parameters()])``, a tensor with a
    grad_fn, which torch refuses to deepcopy."""

    def __init__(self) -> None:
        super().__init__()
        self.f = torch.nn.Conv2d(16, 16, 3, padding=1)
        self.flat = torch.cat([p.flatten() for p in self.f.parameters()])

    def forward(self, x):
        return x + self.f(x)


def test_a_module_holding_a_tensor_computed_from_its_weights_is_copied_and_pruned():
    """Every copy the pipeline makes (candidate plans timed, the oracle's float64 twin) raised torch's raw
    'Only Tensors created explicitly by the user (graph leaves) support the deepcopy protocol'."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), _HoldsComputed(),
                                torch.nn.ReLU(), torch.nn.Conv2d(16, 8, 3, padding=1)).eval()
    x = torch.randn(2, 1, 12, 12)
    with pytest.raises(RuntimeError, match="graph leaves"):
        copy.deepcopy(model)  # the case is real
    pruned, report = gp.prune(model, (x,), ratio=0.5, verify=True)  # the default call: widths timed on copies
    assert report.oracle.passed and pruned[0].out_channels < 16


def test_a_registered_or_private_tensor_computed_from_the_weights_is_copied_too():
    """The review's cases: a buffer registered from ``weight * 2`` and a private ``self._cache = weight.t()``."""
    from graphprune.util.model_copy import model_copy

    model = torch.nn.Linear(4, 3)
    model.register_buffer("scaled", model.weight * 2)
    model._cache = model.weight.t()
    copied = model_copy(model)
    assert torch.equal(copied.scaled, model.scaled) and copied.scaled.grad_fn is None
    assert torch.equal(copied._cache, model._cache) and copied.weight is not model.weight
