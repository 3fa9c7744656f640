"""The measured choice between cutting heads with the rest and keeping them (planning/kinds.py).

Each model here is made so that one kind of unit carries next to nothing: the choice must then
spend the parameter count there, and both plans must remove the same parameters."""
import warnings

import numpy as np
import torch
from helpers import small_llama

import graphprune
from graphprune.metrics import count_params
from graphprune.planning.allocate import removed_params
from graphprune.planning.depth import split_targets
from graphprune.planning.kinds import spend_elsewhere
from graphprune.planning.plan import make_plan
from graphprune.planning.targets import select_groups


def _calib():
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(3, 64, (4, 16), generator=g)} for _ in range(4)]


def _prune(model, monkeypatch, **kw):
    # measuring each group's sensitivity is cheap on this tiny model; the choice runs where auto skips it
    monkeypatch.setattr("graphprune.planning.allocate.AUTO_MACS", 0.0)
    # text the model writes itself: the original is right on it, so any damage raises the loss
    return graphprune.hf.prune(model, ratio=0.5, generated=16, **kw)


def _groups(dg):
    return select_groups(dg, None, (), split_targets(("heads", "ffn"))[1])


def _weaken(model, name: str) -> None:
    """Scale one projection in every layer down 1000-fold: its kind of unit then carries almost nothing.
    The output head is scaled up so that the random model's next-token loss depends on its input."""
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
        for layer in model.model.layers:
            getattr(layer.mlp if name == "down_proj" else layer.self_attn, name).weight.mul_(1e-3)


def test_heads_are_kept_when_the_ffn_carries_nothing(monkeypatch):
    model = small_llama()
    _weaken(model, "down_proj")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, report = _prune(model, monkeypatch)
    # the heads were kept on purpose: no warning that the ratio rounds them to nothing
    assert not [w for w in caught if "lose nothing" in str(w.message)]
    note = next(n for n in report.notes if n.startswith("units:"))
    assert note.startswith("units: heads kept")
    assert "held-out calibration loss" in note  # refit on half the items, the loss on the other half
    assert model.config.num_key_value_heads == 2  # every head stays
    assert all(layer.mlp.gate_proj.out_features < 32 for layer in model.model.layers)  # more FFN than uniform's


def test_heads_go_when_they_carry_nothing(monkeypatch):
    model = small_llama()
    _weaken(model, "o_proj")
    model, report = _prune(model, monkeypatch)
    assert next(n for n in report.notes if n.startswith("units:")).startswith("units: every kind cut by the ratio")
    assert model.config.num_key_value_heads == 1
    assert [layer.mlp.gate_proj.out_features for layer in model.model.layers] == [32, 32]


def test_uniform_allocation_does_not_measure(monkeypatch):
    model = small_llama()
    _weaken(model, "down_proj")
    model, report = _prune(model, monkeypatch, allocation="uniform")
    assert not [n for n in report.notes if n.startswith("units:")]
    assert model.config.num_key_value_heads == 1


def test_not_measured_where_scoring_would_crowd_the_memory(monkeypatch):
    model = small_llama()
    _weaken(model, "down_proj")  # the measurement would keep the heads (the test above)
    monkeypatch.setattr("graphprune.planning.kinds.available_memory", lambda: 1000)
    model, report = _prune(model, monkeypatch)
    assert any(n.startswith("units: every kind cut by the ratio, not measured") for n in report.notes)
    assert model.config.num_key_value_heads == 1


def _uniform_cut():
    """(graph, heads and FFN groups, scores, parameters before, parameters the uniform half cut removes)."""
    dg = graphprune.trace(small_llama(), (), _calib()[0])
    groups = _groups(dg)
    scores = {g.id: np.arange(g.size, dtype=float) for g in groups}
    before = count_params(dg.ir)
    return dg, groups, scores, before, removed_params(dg, make_plan(groups, scores, 0.5, 1), before)


def test_both_plans_remove_the_same_parameter_count():
    dg, groups, scores, before, target = _uniform_cut()
    ratios = spend_elsewhere(dg, groups, scores, 0.5, 1, target, 0.9, before)
    spared = make_plan(groups, scores, 0.5, 1, ratios)
    heads = [g for g in groups if g.kind == "head"]
    assert heads and all(not spared.pruned[g.id] for g in heads)
    got = removed_params(dg, spared, before)
    # the least shared FFN ratio that makes up the count: one FFN unit fewer per layer falls short
    ffn = [g for g in groups if g.kind == "ffn"]
    per_unit = (got - removed_params(dg, make_plan(groups, scores, 0.5, 1, {
        **ratios, **{g.id: (len(spared.pruned[g.id]) - 1) / g.size for g in ffn}}), before)) // len(ffn)
    assert target <= got < target + len(ffn) * per_unit


def test_no_choice_when_the_rest_cannot_make_up_the_count():
    dg, groups, scores, before, target = _uniform_cut()
    assert spend_elsewhere(dg, groups, scores, 0.5, 1, target, 0.55, before) is None


def test_what_the_model_returns_is_no_ffn_unit():
    """A classifier's classes and a tied vocabulary were labelled 'ffn' (a weight creates them), the kind
    targets=('ffn',) selects; they are the model's output, kind 'channel', frozen."""
    import torch

    import graphprune as gp

    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    g = gp.trace(net, (torch.randn(2, 8),))
    assert g.group_of("2.weight", 0).kind == "channel" and not g.group_of("2.weight", 0).prunable
    assert g.group_of("0.weight", 0).kind == "ffn"  # the hidden units stay what they are


class _TanhGelu(torch.nn.Module):
    """transformers' NewGELU: ``0.5 * x * (1 + tanh(c * (x + 0.044715 * x**3)))``."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608 * (x + 0.044715 * torch.pow(x, 3.0))))


class _GatedFfn(torch.nn.Module):
    def __init__(self, act) -> None:
        super().__init__()
        self.emb, self.ln, self.act, self.head = torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), act, torch.nn.Linear(32, 8)
        self.wi_0, self.wi_1 = torch.nn.Linear(32, 64, bias=False), torch.nn.Linear(32, 64, bias=False)
        self.wo = torch.nn.Linear(64, 32, bias=False)

    def forward(self, x):
        h = self.emb(x)
        y = self.ln(h)
        return self.head(h + self.wo(self.act(self.wi_0(y)) * self.wi_1(y)))


def test_a_gelu_spelled_with_an_add_of_its_own_input_leaves_a_gated_ffn_an_ffn():
    """UMT5's gated-GELU FFN: the add inside the tanh GELU (x + 0.044715 x^3) read as two writers of a residual
    stream, so its units were 'hidden' and targets=("ffn",) was refused. A SiLU gate was 'ffn' all along."""
    x = torch.randn(2, 10, 16)
    for act in (torch.nn.SiLU(), _TanhGelu()):
        torch.manual_seed(0)
        graph = graphprune.trace(_GatedFfn(act).eval(), (x,))
        kinds = {g.kind for g in graph.groups if any(m.name == "wi_0.weight" and m.dim == 0 for m in g.members)}
        assert kinds == {"ffn"}, (type(act).__name__, kinds)
        assert {g.kind for g in graph.groups if any(m.name == "emb.weight" and m.dim == 0 for m in g.members)} == \
            {"hidden"}


class _MaskedAttention(torch.nn.Module):
    """Causal attention whose scores pass ``where(mask, scores, fill)`` (ImageGPT, with a mask buffer it slices to
    the length) or a floor ``torch.max(scores + mask, finfo.min)`` (XGLM) on their way to the softmax."""

    def __init__(self, how: str, heads: int = 4, dim: int = 32, positions: int = 64) -> None:
        super().__init__()
        self.how, self.h = how, heads
        self.emb, self.qkv, self.o = torch.nn.Linear(16, dim), torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.register_buffer("bias", torch.tril(torch.ones(positions, positions, dtype=torch.bool)).view(
            1, 1, positions, positions))

    def forward(self, x):
        h = self.emb(x)
        b, n, _ = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.h, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / 8.0
        mask = self.bias[:, :, :n, :n]
        if self.how == "where":
            scores = torch.where(mask, scores, torch.tensor(-1e4))
        else:
            scores = torch.max(scores + (~mask).float() * -1e4, torch.tensor(torch.finfo(scores.dtype).min))
        out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, -1)
        return h + self.o(out)


def test_scores_through_a_where_or_a_floor_are_still_an_attention_site():
    """The walk back from the softmax followed where's first input, the mask, and stopped at torch.max: ImageGPT's
    and XGLM's heads came out as convolution groups, and the default call cut their residual streams instead."""
    x = torch.randn(2, 10, 16)
    for how in ("where", "floor"):
        torch.manual_seed(0)
        graph = graphprune.trace(_MaskedAttention(how).eval(), (x,))
        kinds = {g.kind for g in graph.groups if any(m.name == "qkv.weight" and m.dim == 0 for m in g.members)}
        assert "head" in kinds, (how, kinds)


def test_rows_of_a_stored_mask_the_example_does_not_reach_are_kept():
    """ImageGPT's default call cut its causal-mask buffer (64 positions) to 50 rows: the 54 positions past the
    example's length were a group of their own, free to cut, and the pruned model failed at length 60."""
    torch.manual_seed(0)
    model = _MaskedAttention("where").eval()
    graphprune.prune(model, (torch.randn(2, 10, 16),), ratio=0.5, measure_latency=False)
    assert tuple(model.bias.shape) == (1, 1, 64, 64)
    assert model(torch.randn(1, 60, 16)).shape == (1, 60, 32)
