"""Forwards that check their input against a module attribute (diffusers' ``assert
hidden_states.shape[1] == self.channels``): the rewrite updates the attribute where the plan gives it one
size, refuses where the attribute is also read as a number, and names the failing line otherwise."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import graphprune as gp


class Checked(nn.Module):
    """A 1x1 convolution behind a check of its input width, as diffusers' Upsample2D writes it."""

    def __init__(self, channels: int, scaled: str = ""):
        super().__init__()
        self.channels = channels
        self.out_channels = channels
        self.scaled = scaled
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        self.check(x)
        y = self.conv(x)
        if self.scaled == "sqrt":
            return y / math.sqrt(self.channels)
        return y / self.channels if self.scaled == "int" else y

    def check(self, x):  # a helper method's check is the forward's
        assert x.shape[1] == self.channels


class Net(nn.Module):
    def __init__(self, scaled: str = "", literal: bool = False):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.mid = Checked(16, scaled)
        self.head = nn.Conv2d(16, 4, 1)
        self.literal = literal

    def forward(self, x):
        h = torch.relu(self.stem(x))
        if self.literal:
            assert h.shape[1] == 16, "stem width"
        return self.head(torch.relu(self.mid(h)))


def _net(**kw) -> Net:
    torch.manual_seed(0)
    return Net(**kw).eval()


X = (torch.randn(1, 3, 8, 8),)


def test_an_attribute_the_forward_checks_its_input_against_takes_the_pruned_width():
    model = _net()
    ref = model(*X)
    pruned, report = gp.prune(model, X, ratio=0.25, round_to=1, runtime=None, verify=True)
    # the plan keeps 12 of the stem's 16 channels (the mid conv's input) and 12 of its own outputs
    assert pruned.stem.out_channels == 12 and pruned.mid.conv.out_channels == 12
    assert pruned.mid.channels == 12, "the checked attribute follows the input the module is handed"
    assert report.oracle.passed
    other = torch.randn(2, 3, 8, 8)
    assert pruned(other).shape == (2,) + ref.shape[1:]


@pytest.mark.parametrize("scaled", ["sqrt", "int"])
def test_an_attribute_also_read_as_a_number_is_refused_not_rewritten(scaled):
    """The same attribute divides the output by sqrt(channels), or by channels (an int argument): updating
    it would pass the shape proof and change the model's numbers, so the rewrite refuses and names the module."""
    model = _net(scaled=scaled)
    with pytest.raises(gp.RewriteError, match="not only a size check") as err:
        gp.prune(model, X, ratio=0.25, round_to=1, runtime=None)
    assert "mid" in err.value.modules
    assert model.mid.channels == 16 and model.stem.out_channels == 16, "a refused rewrite leaves the model whole"


def test_a_literal_size_check_is_named_by_its_line():
    """``assert h.shape[1] == 16`` has no attribute to update: the error quotes the line that
    failed (an AssertionError with no message said nothing before)."""
    model = _net(literal=True)
    with pytest.raises(gp.RewriteError, match=r"raised at .*test_guards\.py:\d+ \(`assert h\.shape\[1\] == 16"):
        gp.prune(model, X, ratio=0.25, round_to=1, runtime=None)


class _Downsample(nn.Module):
    """diffusers' Downsample2D: checks its input against ``channels``; ``out_channels`` is the width it returns."""

    def __init__(self, c: int):
        super().__init__()
        self.channels, self.out_channels = c, c
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

    def forward(self, x):
        assert x.shape[1] == self.channels
        return self.conv(x)


def test_entering_and_leaving_widths_cut_apart_go_to_the_attributes_named_for_them():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), _Downsample(16), nn.ReLU(), nn.Conv2d(16, 4, 1))
    graph = gp.trace(model.eval(), X)
    into, out = graph.group_of("0.weight", 0), graph.group_of("2.conv.weight", 0)
    pruned, _ = gp.prune(model, X, ratios={into.id: 0.25, out.id: 0.5}, round_to=1, runtime=None, verify=True)
    down = pruned[2]
    assert (down.conv.in_channels, down.conv.out_channels) == (12, 8)
    assert (down.channels, down.out_channels) == (12, 8)


class _CrossView(nn.Module):
    """PixArt's caption path: a projection viewed at *another* tensor's width (``h.shape[-1]``, a number
    in the trace), then read by its own layer. The returned ``h`` keeps its width; the projection's does not."""

    def __init__(self):
        super().__init__()
        self.inp, self.proj, self.key = nn.Linear(4, 12), nn.Linear(6, 12), nn.Linear(12, 12)
        self.mix, self.out = nn.Linear(12, 20), nn.Linear(20, 12)

    def forward(self, x, c):
        h = self.inp(x)
        e = torch.relu(self.proj(c)).view(x.shape[0], -1, h.shape[-1])
        return h + self.key(e).mean(1, keepdim=True), self.out(torch.relu(self.mix(h)))


def test_a_width_the_forward_spells_from_another_tensor_is_kept_whole_and_the_rest_pruned():
    """The first plan cuts the projection, whose view the rewrite cannot follow; the default call keeps
    that group whole, says so, and prunes the other group instead of refusing the model."""
    torch.manual_seed(0)
    model = _CrossView().eval()
    args = (torch.randn(1, 3, 4), torch.randn(1, 5, 6))
    with pytest.warns(gp.PruneWarning, match=r"kept 1 group\(s\) whole .*planned again"):
        pruned, report = gp.prune(model, args, ratio=0.25, round_to=1, runtime=None, verify=True)
    assert pruned.proj.out_features == 12, "the projection's width is spelled at the view: kept"
    assert pruned.mix.out_features == 15, "the other group still prunes"
    assert report.oracle.verdict == "PASS"
    graph = gp.trace(model, args)
    assert any("planned again" in n for n in report.notes)
    # a plan the user gave is not changed: the error names the line and the layer that owns the width
    plan = gp.plan(graph, model, ratio=0.25, round_to=1)
    with pytest.raises(gp.RewriteError, match=r"raised at .*test_guards\.py:\d+ .*pruned channels of proj"):
        gp.prune(model, args, graph=graph, plan_=plan, runtime=None)


def test_a_width_that_enters_unchanged_keeps_its_attribute():
    """Two layers of one class: the second is handed a cut width and fails its check, so the class's
    attributes are set; the first is handed the model's own 16 channels (kept) and returns a cut width,
    and its ``channels`` stays 16 (a DDPM UNet's first Downsample2D: the unchanged input once counted
    as no evidence, and the cut output width went into ``channels``)."""
    torch.manual_seed(0)
    model = nn.Sequential(_Downsample(16), nn.ReLU(), _Downsample(16), nn.ReLU(), nn.Conv2d(16, 4, 1)).eval()
    x = (torch.randn(1, 16, 8, 8),)
    pruned, report = gp.prune(model, x, ratio=0.25, round_to=1, runtime=None, verify=True)
    first, second = pruned[0], pruned[2]
    assert (first.conv.in_channels, first.conv.out_channels, second.conv.in_channels) == (16, 12, 12)
    assert (first.channels, second.channels) == (16, 12)
    assert report.oracle.verdict == "PASS" and pruned(*x).shape == (1, 4, 2, 2)


def test_the_graph_a_caller_passes_keeps_no_freeze_of_the_replanning():
    """The groups kept whole to plan again are frozen for that call only: the caller's graph (``graph=``,
    which hf's own retry reuses) reads as before, so a later plan of the user's meets the rewrite's error,
    not 'group is frozen'."""
    torch.manual_seed(0)
    model = _CrossView().eval()
    args = (torch.randn(1, 3, 4), torch.randn(1, 5, 6))
    graph = gp.trace(model, args)
    before = {g.id: list(g.frozen) for g in graph.groups}
    with pytest.warns(gp.PruneWarning, match="planned again"):
        gp.prune(copy.deepcopy(model), args, graph=graph, ratio=0.25, round_to=1, runtime=None)
    assert {g.id: list(g.frozen) for g in graph.groups} == before


class _ReadsWidth(nn.Module):
    """Attention that reads the model width from its input (``b, n, d = x.shape`` ... ``reshape(b, n, d)``, as
    lucidrains' and many hand-written attentions do): the trace holds that 64 as a literal no plan changes."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.h = heads
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = (t.reshape(b, n, self.h, -1).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(o.transpose(1, 2).reshape(b, n, d))


@pytest.mark.parametrize("budget", [{"params": 0.7}, {"macs": 0.5}])
def test_a_width_read_from_the_input_keeps_that_input_and_the_heads_whole(budget):
    """The input's width and the heads' width must stay equal, so both stay whole and the rest prunes. Before,
    the default call kept the heads whole and cut the input, and the oracle's run of the pruned copy raised a
    raw 'shape [2, 8, 23] is invalid' (no size the plan changed was spelled, so nothing was proved)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), _ReadsWidth(), nn.Linear(32, 128), nn.GELU(), nn.Linear(128, 4)).eval()
    x = torch.randn(2, 8, 8)
    with pytest.warns(gp.PruneWarning, match=r"kept 3 group\(s\) whole \(0\.weight\[0\], 1\.qkv\.weight\[0\] \(2 groups\)\)"):
        pruned, report = gp.prune(model, (x,), budget=budget, verify=True, measure_latency=False)
    assert (pruned[0].out_features, pruned[1].qkv.out_features) == (32, 96)
    assert pruned[2].out_features < 128 and report.oracle.verdict == "PASS"
    assert pruned(torch.randn(3, 5, 8)).shape == (3, 5, 4)


def _attend(self, h, b, n, d):
    q, k, v = self.to_qkv(h).chunk(3, -1)
    q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
    return self.proj(torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.25).transpose(1, 2).reshape(b, n, d))


class _AtRoot(nn.Module):
    """The width read in the model's own forward, from a tensor a layer made (not an input of a submodule)."""

    def __init__(self):
        super().__init__()
        self.embed, self.head = nn.Linear(4, 64), nn.Linear(64, 3)
        self.heads, self.to_qkv, self.proj = 4, nn.Linear(64, 192, bias=False), nn.Linear(64, 64)

    def forward(self, x):
        h = self.embed(x)
        b, n, d = h.shape
        return self.head(h + _attend(self, h, b, n, d))


@pytest.mark.parametrize("where", ["root", "made inside"])
def test_a_width_read_at_the_root_or_from_a_sublayers_output_is_proved_too(where):
    """A first version looked only at values entering a submodule: at the root, or where a sublayer made the
    tensor, a budget cutting the width and the heads apart raised a raw shape error, or with verify=False
    returned a model that failed on every input (review). Now it is refused with the reason, or prunes."""
    torch.manual_seed(0)
    model = _AtRoot().eval()
    if where == "made inside":
        inner = _AtRoot()
        model = nn.Sequential(inner, nn.Identity()).eval()
    x = torch.randn(2, 5, 4)
    for verify in (True, False):
        try:
            pruned, _ = gp.prune(copy.deepcopy(model), (x,), budget={"macs": 0.6}, verify=verify, measure_latency=False,
                                 round_to=1)
        except (gp.RewriteError, gp.PlanError) as exc:
            assert str(exc).startswith("planning again failed") or "cannot be met" in str(exc)
            continue
        assert pruned(torch.randn(3, 7, 4)).shape == (3, 7, 3)


class _ConfigWidth(nn.Module):
    """The hidden width read from a config object the rewrite cannot reach (mambapy's ``self.config.d_inner``)."""

    def __init__(self) -> None:
        super().__init__()
        self.config = type("Config", (), {"d_inner": 32})()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + torch.zeros(x.shape[0], self.config.d_inner))


def test_a_failed_replan_leads_with_its_outcome():
    """Every group spelled where the rewrite cannot reach: the error read "the pruned model no longer runs ..." and
    only ended with "nothing in this model can be pruned"; the outcome now comes first, the cause after it."""
    with pytest.raises(gp.RewriteError) as got:
        gp.prune(_ConfigWidth().eval(), (torch.randn(2, 8),), measure_latency=False)
    text = str(got.value)
    assert text.startswith("planning again failed after keeping whole the groups whose sizes the forward spells: "
                           "nothing in this model can be pruned")
    assert "Why they were kept whole: " in text and "zeros" in text.split("Why they were kept whole: ")[1]


class _WidthsInAList(nn.Module):
    """gluonts' SimpleFeedForward: the last layer emits steps x width, reshaped by a width kept in a list."""

    def __init__(self, first: int, steps: int = 12, width: int = 64) -> None:
        super().__init__()
        self.steps, self.hidden_dimensions = steps, [first, width]
        self.nn = nn.Sequential(nn.Linear(48, first), nn.ReLU(), nn.Linear(first, width * steps))
        self.proj = nn.Linear(width, 3)

    def forward(self, x):
        return self.proj(torch.relu(self.nn(x).reshape(-1, self.steps, self.hidden_dimensions[-1])))


@pytest.mark.parametrize("first", [48, 64])
def test_a_width_kept_in_a_list_attribute_takes_the_pruned_width(first):
    """The list's ints were no candidates: the reshape's width stayed 64, and with the first layer 64 wide too both
    groups were kept whole and the prune refused ("nothing in this model can be pruned"). The list gets the new
    width as a new list."""
    torch.manual_seed(0)
    model, x = _WidthsInAList(first).eval(), torch.randn(2, 48)
    pruned, report = gp.prune(model, (x,), ratio=0.5, verify=True, measure_latency=False)
    assert report.oracle.verdict == "PASS"
    assert pruned.hidden_dimensions == [first, 32] and pruned.proj.in_features == 32
    assert pruned(torch.randn(5, 48)).shape == (5, 12, 3)


class _MaskRepeater(nn.Module):
    """Mask2Former's mask predictor: one module, called for every decoder layer, repeats a mask ``num_heads`` times."""

    def __init__(self, heads: int) -> None:
        super().__init__()
        self.num_heads = heads

    def forward(self, scores):
        return (scores.unsqueeze(1).repeat(1, self.num_heads, 1, 1) < 0).flatten(0, 1)


class _SharedMaskDecoder(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4, layers: int = 3) -> None:
        super().__init__()
        self.head_dim, self.mask = d // heads, _MaskRepeater(heads)
        self.layers = nn.ModuleList(nn.ModuleDict({"q": nn.Linear(d, d), "kv": nn.Linear(d, 2 * d), "o": nn.Linear(d, d),
                                                   "up": nn.Linear(d, 64), "down": nn.Linear(64, d)})
                                    for _ in range(layers))

    def forward(self, x, memory):
        b, n, d = x.shape
        m = memory.shape[1]
        for layer in self.layers:
            q = layer["q"](x).view(b, n, -1, self.head_dim).transpose(1, 2)
            k, v = layer["kv"](memory).view(b, m, 2, -1, self.head_dim).permute(2, 0, 3, 1, 4)
            bias = self.mask(x[..., :1] @ memory[..., :1].transpose(1, 2)).view(b, -1, n, m)
            att = torch.softmax(q @ k.transpose(-1, -2) - 1e4 * bias, -1)
            x = x + layer["o"]((att @ v).transpose(1, 2).reshape(b, n, -1))
            x = x + layer["down"](torch.relu(layer["up"](x)))
        # once more after the last layer (Mask2Former's final mask): this call's heads meet no attention
        return x, self.mask(x[..., :1] @ memory[..., :1].transpose(1, 2)).float()


def test_an_attribute_shared_by_every_layer_keeps_their_heads_whole_and_the_rest_prunes():
    """The shared module's one ``num_heads`` cannot follow heads cut per layer: the node of a layer left at 4 heads
    came out at 3, and the error named no group, so the default call stopped instead of planning again."""
    torch.manual_seed(0)
    x, memory = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    model = _SharedMaskDecoder().eval()
    with torch.no_grad():
        want = model(x, memory)
    pruned, report = gp.prune(model, (x, memory), ratio=0.5, verify=True, measure_latency=False)
    assert report.oracle.passed and report.params_after < report.params_before
    assert pruned.mask.num_heads == 4 and any("kept" in n and "whole" in n for n in report.notes), report.notes
    assert [w.shape for w in want] == [p.shape for p in pruned(x, memory)]
