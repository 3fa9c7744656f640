"""A forward that turns a pruned size into a number (a fan-in scale, an attention temperature, a mean by hand)
gives a pruned model that is not the original with the removed channels zeroed; its shapes are all right, so
only tracing again and comparing the numbers sees it. The default call keeps those groups whole and says so."""
from __future__ import annotations

import copy
import math
import random

import pytest
import torch

import graphprune as gp
from graphprune.errors import PruneWarning


class _FanIn(torch.nn.Module):
    """e3nn's FullyConnectedNet layer: ``x @ (w / sqrt(fan_in))``, the fan-in read from the weight's shape."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_in, n_out))

    def forward(self, x):
        return x @ (self.weight / self.weight.shape[0] ** 0.5)


class _Net(torch.nn.Module):
    def __init__(self, by_hand: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.c = torch.nn.Linear(8, 32), torch.nn.Linear(32, 32), torch.nn.Linear(32, 32)
        self.fan, self.out, self.by_hand = _FanIn(32, 4), torch.nn.Linear(4, 2), by_hand

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x))))
        h = torch.relu(self.c(h))
        if self.by_hand:  # a mean over the channels written as a sum over a count
            return self.out(self.fan(h)) + h.sum(-1, keepdim=True) / h.shape[-1]
        return self.out(self.fan(h))


@pytest.mark.parametrize("by_hand", [False, True])
def test_groups_a_number_is_computed_from_are_kept_whole(by_hand):
    torch.manual_seed(0)
    model, x = _Net(by_hand).eval(), torch.randn(5, 8)
    original = copy.deepcopy(model)
    with pytest.warns(PruneWarning, match=r"computes a number from its size at node"):
        model, report = gp.prune(model, (x,), ratio=0.5, measure_latency=False, runtime=None)
    assert model.fan.weight.shape[0] == 32 and model.c.out_features == 32  # the channels the number counts stay
    assert model.a.out_features < 32  # the rest is pruned
    # and the pruned model is the original with the removed channels zeroed
    masked = gp.masked_original(gp.trace(original, (x,)), report.plan, (x,))
    torch.testing.assert_close((model(x),), tuple(masked), rtol=1e-5, atol=1e-5)


class _Temperature(torch.nn.Module):
    """Attention scaled by ``q.shape[-1] ** -0.5``, computed in the forward."""

    def __init__(self, d: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.h = heads
        self.qkv, self.o = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.h, -1).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
        return x + self.o((att @ v).transpose(1, 2).reshape(b, t, -1))


def test_a_head_dim_the_temperature_is_computed_from_is_refused():
    """Cutting head_dim changes the temperature the forward computes: before, the pruned model came back without a
    word (verify=True failed it). With head_dim the only target, nothing is left to cut: refused, saying why, and
    the model is as it was."""
    torch.manual_seed(0)
    model, x = _Temperature().eval(), torch.randn(1, 10, 64)
    before = copy.deepcopy(model.state_dict())
    with pytest.warns(PruneWarning), pytest.raises(gp.RewriteError, match=r"computes 0.35\d* where the traced one "
                                                                           r"computed 0.25 at node 'mul'"):
        gp.prune(model, (x,), targets=("head_dim",), ratio=0.5, measure_latency=False, runtime=None)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


class _NotFromSizes(torch.nn.Module):
    """Numbers that move between two traces, or compare unequal to themselves, with no size behind them."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.a, self.b, self.how = torch.nn.Linear(8, 32), torch.nn.Linear(32, 2), how

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.how == "nan":  # padded steps as NaN, then a nanmean (time-series models)
            h = h.masked_fill(x[:, :1] > 10, float("nan"))
            return self.b(h) + h.nanmean(-1, keepdim=True)
        return self.b(h * random.uniform(0.9, 1.1))  # a Python-side draw, other in every trace


@pytest.mark.parametrize("how", ["nan", "random"])
def test_numbers_no_pruned_size_explains_are_left_alone(how):
    """Review: NaN != NaN and a random draw read as numbers computed from a size froze every group."""
    random.seed(0)
    torch.manual_seed(0)
    model, report = gp.prune(_NotFromSizes(how).eval(), (torch.randn(5, 8),), ratio=0.5, measure_latency=False,
                             runtime=None)
    assert model.a.out_features == 16


class _KeywordScale(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.o1, self.o2 = (torch.nn.Linear(8, 24), torch.nn.Linear(24, 32), torch.nn.Linear(32, 2),
                                            torch.nn.Linear(8, 2))

    def forward(self, x):
        h = torch.relu(self.b(torch.relu(self.a(x))))
        return torch.add(self.o2(x), self.o1(h), alpha=h.shape[-1] ** -0.5)  # keyword-only alpha


def test_a_number_given_as_a_keyword_is_compared_too():
    torch.manual_seed(0)
    model, x = _KeywordScale().eval(), torch.randn(5, 8)
    with pytest.warns(PruneWarning, match=r"computes a number from its size at node 'add'"):
        model, report = gp.prune(model, (x,), ratio=0.5, measure_latency=False, runtime=None)
    assert model.b.out_features == 32 and model.a.out_features == 12  # the 32 the scale counts stay, the rest is cut


class _TensorTemperature(_Temperature):
    """The temperature as a tensor made from the size (``scores / torch.sqrt(torch.tensor(d_k))``)."""

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, t, 3, self.h, -1).permute(2, 0, 3, 1, 4)
        att = (q @ k.transpose(-1, -2) / torch.sqrt(torch.tensor(q.shape[-1], dtype=torch.float32))).softmax(-1)
        return x + self.o((att @ v).transpose(1, 2).reshape(b, t, -1))


def test_a_number_in_a_tensor_made_from_a_size_is_compared_too():
    """Review: a constant tensor the forward makes from the size carried the number past the check."""
    torch.manual_seed(0)
    with pytest.warns(PruneWarning, match=r"computes a number from its size at node 'lift_fresh'.*\(16 -> 8\)"), \
            pytest.raises(gp.RewriteError):
        gp.prune(_TensorTemperature().eval(), (torch.randn(1, 10, 64),), targets=("head_dim",), ratio=0.5,
                 measure_latency=False, runtime=None)


class _MultiQuery(torch.nn.Module):
    """Falcon-7B's multi-query attention, its scores scaled by ``math.sqrt(self.head_dim)``: an attribute the
    rewrite sets to the pruned head size."""

    def __init__(self, d: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, d // heads
        self.qkv = torch.nn.Linear(d, d + 2 * self.head_dim, bias=False)
        self.dense = torch.nn.Linear(d, d, bias=False)
        self.up, self.down = torch.nn.Linear(d, 128), torch.nn.Linear(128, d)

    def forward(self, x):
        b, n, _ = x.shape
        f = self.qkv(x).view(b, n, self.num_heads + 2, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in (f[..., :-2, :], f[..., [-2], :], f[..., [-1], :]))
        a = q @ k.transpose(-1, -2)
        a /= math.sqrt(self.head_dim)
        x = x + self.dense((a.softmax(-1) @ v).transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim))
        return x + self.down(torch.relu(self.up(x)))


def test_verify_keeps_the_groups_a_number_is_computed_from_whole_too():
    """verify=False kept head_dim whole and planned again; verify=True failed the oracle first ("oracle FAIL"),
    so asking for the proof refused a model the default call prunes. The oracle's failure is now explained the
    same way, and the plan made again passes it."""
    torch.manual_seed(0)
    model, x = _MultiQuery().eval(), torch.randn(2, 16, 64)
    with pytest.warns(PruneWarning, match=r"computes a number from its size at node 'div_'"):
        model, report = gp.prune(model, (x,), targets=("head_dim", "ffn"), verify=True, measure_latency=False)
    assert report.oracle.passed
    assert model.head_dim == 16 and model.qkv.out_features == 96  # the scaled size stays
    assert model.up.out_features < 128


class _HeadNorm(torch.nn.LayerNorm):
    """transformers' ChameleonLayerNorm: a (heads, head_dim) weight, normalised over head_dim alone."""

    def __init__(self, shape: tuple[int, int]) -> None:
        super().__init__(shape)
        self.normalized_shape = (shape[-1],)
        with torch.no_grad():
            self.weight.add_(torch.randn_like(self.weight))

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, self.normalized_shape, None, None, eps=1e-5) * self.weight + self.bias


class _NormedHeads(torch.nn.Module):
    def __init__(self, d: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.h, self.q, self.norm, self.o = heads, torch.nn.Linear(d, d), _HeadNorm((heads, d // heads)), torch.nn.Linear(d, d)
        self.up, self.down = torch.nn.Linear(d, 128), torch.nn.Linear(128, d)

    def forward(self, x):
        b, n, d = x.shape
        x = x + self.o(self.norm(self.q(x).view(b, n, self.h, d // self.h)).reshape(b, n, d))
        return x + self.down(torch.relu(self.up(x)))


def test_a_layer_norm_over_the_last_of_its_weights_dims_keeps_its_normalised_shape():
    """The rewrite set every LayerNorm's normalized_shape to its weight's shape: (16,) became (4, 16) though only the
    FFN was cut, so the pruned model normalised over all heads at once, silently (verify=True failed it)."""
    torch.manual_seed(0)
    model, x = _NormedHeads().eval(), torch.randn(2, 8, 64)
    model, report = gp.prune(model, (x,), targets=("ffn",), verify=True, measure_latency=False)
    assert report.oracle.passed and model.up.out_features == 64
    assert model.norm.normalized_shape == (16,)


def test_verify_reports_why_it_fails_where_prune_plans_again():
    """gp.verify() returns its report: the FAIL carries the number the pruned forward moved (review: it raised)."""
    torch.manual_seed(0)
    model, x = _MultiQuery().eval(), torch.randn(2, 16, 64)
    graph = gp.trace(model, (x,))
    plan = gp.plan(graph, model, ratio=0.5, targets=("head_dim",))
    report = gp.verify(model, (x,), plan, graph)
    assert report.verdict == "FAIL" and isinstance(report.moved, gp.RewriteError)
    assert "Why: the pruned forward computes" in str(report)
