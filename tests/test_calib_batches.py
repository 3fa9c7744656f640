"""Calibration data as users have it: any batch size, a smaller last batch, a DataLoader of
(inputs, labels), independent of the traced example's shapes."""
from __future__ import annotations

import copy

import pytest
import torch

import graphprune as gp
from graphprune.errors import PlanError


def _cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 24, 3, padding=1), torch.nn.ReLU(),
        # a view that spells the batch size: the trace at batch 1 bakes it in as a constant
        _Flatten(), torch.nn.Linear(24 * 8 * 8, 10)).eval()


class _Flatten(torch.nn.Module):
    def forward(self, x):
        return x.view(x.shape[0], -1)


def _images(n: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def _weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_batch_partition_does_not_change_the_prune():
    """Statistics are sums over samples: the same 20 images cut into batches of 1, of 4 with a
    last one of 4, or of 8 + 8 + 4 give the same plan and the same refit weights."""
    x = _images(20)
    example = (x[:1],)
    partitions = {
        "ones": [(x[i:i + 1],) for i in range(20)],
        "fours": [(x[i:i + 4],) for i in range(0, 20, 4)],
        "ragged": [(x[:8],), (x[8:16],), (x[16:],)],  # a smaller last batch
    }
    results = {}
    for name, calib in partitions.items():
        model, report = gp.prune(_cnn(), example, ratio=0.5, calib=calib)
        results[name] = (report.plan.pruned, _weights(model))
    plan0, w0 = results["ones"]
    for name, (plan, w) in results.items():
        assert plan == plan0, name
        for k in w0:
            assert w[k].shape == w0[k].shape, (name, k)
            torch.testing.assert_close(w[k], w0[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k}")


def test_dataloader_of_images_and_labels():
    """A classification DataLoader yields [images, labels]: the labels are not an input."""
    x = _images(24)
    y = torch.arange(24) % 10
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=5)
    model, report = gp.prune(_cnn(), (x[:1],), ratio=0.5, calib=loader)
    want, _ = gp.prune(_cnn(), (x[:1],), ratio=0.5, calib=[(x[i:i + 5],) for i in range(0, 24, 5)])
    assert report.plan.pruned
    for (k, a), b in zip(model.state_dict().items(), want.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)


def test_sequential_compensation_with_mixed_batch_sizes():
    x = _images(12)
    calib = [(x[:5],), (x[5:12],)]
    ref = [(x[i:i + 1],) for i in range(12)]
    a, _ = gp.prune(_cnn(), (x[:1],), ratio=0.5, calib=calib, compensate="sequential")
    b, _ = gp.prune(_cnn(), (x[:1],), ratio=0.5, calib=ref, compensate="sequential")
    for (k, u), v in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(u, v, rtol=1e-4, atol=1e-5, msg=k)


class _ShapeBranch(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if x.shape[0] > 2:  # other ops at other batch sizes
            h = h * 2
        return self.b(h)


def test_forward_whose_ops_change_with_shape_is_refused():
    model = _ShapeBranch().eval()
    with pytest.raises(PlanError, match=r"calibration batch 1 has input shapes \[\(4, 8\)\].*other ops"):
        gp.prune(copy.deepcopy(model), (torch.randn(1, 8),), ratio=0.5,
                 calib=[(torch.randn(2, 8),), (torch.randn(4, 8),)])


class _IBN(torch.nn.Module):
    """IBN-Net's block: InstanceNorm on half the channels, through ``.contiguous()``. A channel slice of a
    batch of one is contiguous already (no op runs); of a batch of four it is not (a copy runs)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.inorm = torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.InstanceNorm2d(16, affine=True)
        self.bn, self.c2, self.c3 = torch.nn.BatchNorm2d(16), torch.nn.Conv2d(32, 24, 1), torch.nn.Conv2d(24, 10, 1)

    def forward(self, x):
        a, b = torch.split(self.c1(x), [16, 16], dim=1)
        h = self.c2(torch.relu(torch.cat((self.inorm(a.contiguous()), self.bn(b)), dim=1)))
        return self.c3(torch.relu(h)).flatten(1)


@pytest.mark.parametrize("example_batch", [1, 4])
def test_a_contiguous_call_that_runs_at_some_batch_sizes_only(example_batch):
    """Traced at one item and calibrated at four (the copy only the calibration trace has), or the
    reverse with a last batch of one (the copy only the example's has): both take the same
    batches, and since the copy changes no value they give the same plan and weights."""
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(n, 3, 16, 16, generator=gen) for n in (4, 4, 1)]
    results = []
    for eb in (example_batch, 5):  # 5: every batch is traced again, none matches the example
        torch.manual_seed(0)
        model, report = gp.prune(_IBN().eval(), (torch.randn(eb, 3, 16, 16),), calib=calib, ratio=0.5,
                                 measure_latency=False, verify=True)
        assert report.oracle.verdict == "PASS"
        results.append(_weights(model))
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-4, atol=1e-5, msg=k)


def test_padded_text_batches_of_other_lengths():
    """Token batches of other lengths than the traced example, padded with an attention mask."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64)
    torch.manual_seed(0)
    model = transformers.BertModel(cfg).eval()
    g = torch.Generator().manual_seed(0)

    def batch(n, length, pad):
        ids = torch.randint(1, 64, (n, length), generator=g)
        mask = torch.ones(n, length, dtype=torch.long)
        mask[0, length - pad:] = 0
        return {"input_ids": ids, "attention_mask": mask}

    example = batch(1, 8, 0)
    calib = [batch(2, 12, 3), batch(3, 7, 2), batch(1, 16, 0)]
    pruned, report = gp.hf.prune(model, inputs=example, calib=calib, ratio=0.25)
    assert report.params_after < report.params_before
    out = pruned(**calib[0]).last_hidden_state
    assert out.shape == (2, 12, 32) and torch.isfinite(out).all()


class _HeadsInBatch(torch.nn.Module):
    """Attention that folds its heads into the batch (``'b n (h d) -> (b h) n d'``, as perceiver-pytorch
    does): a head mask over the merged dim has batch x heads positions."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.h = heads
        self.q, self.kv = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, 2 * dim)
        self.o, self.head = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, 5)

    def forward(self, x):
        b, n, _ = x.shape
        k, v = self.kv(x).chunk(2, dim=-1)
        q, k, v = (t.reshape(b, n, self.h, -1).permute(0, 2, 1, 3).reshape(b * self.h, n, -1) for t in (self.q(x), k, v))
        a = (q @ k.transpose(1, 2)).softmax(-1) @ v
        x = x + self.o(a.reshape(b, self.h, n, -1).permute(0, 2, 1, 3).reshape(b, n, -1))
        return self.head(x.mean(1))


def test_heads_folded_into_the_batch_take_batches_of_any_size():
    """Before, a calibration batch of 8 with an example of 2 raised a raw size mismatch in the masked run (a
    mask of 2 x 4 positions against 8 x 4). The masks widen along the batch, so batches of 8 give the plan and
    the refit weights that batches of the example's size give, and both cut heads."""
    x = torch.randn(16, 6, 32, generator=torch.Generator().manual_seed(5))
    results = {}
    for name, calib in {"as example": [(x[i:i + 2],) for i in range(0, 16, 2)],
                        "eights": [(x[:8],), (x[8:],)]}.items():
        torch.manual_seed(0)
        model, report = gp.prune(_HeadsInBatch().eval(), (x[:2],), budget={"params": 0.6}, calib=calib, verify=True,
                                 measure_latency=False, heldout_check=False, round_to=1)
        assert "PASS" in str(report.oracle)
        results[name] = (report.plan.pruned, _weights(model))
    (plan0, w0), (plan1, w1) = results.values()
    assert plan0 == plan1
    assert w0["q.weight"].shape[0] < 32 and w0["q.weight"].shape[0] % 8 == 0  # whole heads of 8 channels cut
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=1e-4, atol=1e-5, msg=k)


class _HeadsBatchAndTokens(torch.nn.Module):
    """A per-head-channel layer on ``(b h n) d``: a slot merging two input dims (batch, tokens) with the heads."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = 4
        self.qkv, self.proj, self.gain = (torch.nn.Linear(8, 96), torch.nn.Linear(32, 8),
                                          torch.nn.Linear(8, 8, bias=False))

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=0.3)
        o = self.gain(o.reshape(-1, o.shape[-1])).reshape(b, self.heads, n, -1)
        return self.proj(o.transpose(1, 2).reshape(b, n, -1))


@pytest.mark.parametrize("shape", [(2, 12), (3, 8), (4, 4)])
def test_a_mask_over_batch_heads_and_tokens_follows_the_runs_own_sizes(shape):
    """A first version widened such a mask along whichever input factor divided evenly, and returned it as it
    was where the product matched ((4, 4) against (2, 8)): the heads' pattern landed on other rows (review).
    The masks are rebuilt at the run's input sizes, so the masked original is the pruned model at every shape."""
    from graphprune.api.torch_models import masked_original

    torch.manual_seed(0)
    model, x = _HeadsBatchAndTokens().eval(), torch.randn(2, 8, 8)
    dg = gp.trace(model, (x,))
    heads = [g.id for g in dg.prunable_groups() if g.kind == "head"]
    plan = gp.plan(dg, model, 0.0, ratios={heads[0]: 0.25}, targets=("head",), round_to=1)
    pruned, _ = gp.prune(copy.deepcopy(model), (x,), plan_=plan, measure_latency=False)
    y = torch.randn(*shape, 8)
    with torch.no_grad():
        torch.testing.assert_close(masked_original(dg, plan, (y,))[0], pruned(y), rtol=1e-5, atol=1e-5)


class _Windows(torch.nn.Module):
    """SAM's windowed attention: windows folded into the batch, then heads too: (batch x windows x heads)."""

    def __init__(self, dim: int = 32, heads: int = 4, ws: int = 4) -> None:
        super().__init__()
        self.h, self.ws = heads, ws
        self.qkv, self.o = torch.nn.Linear(dim, 3 * dim), torch.nn.Linear(dim, dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 64), torch.nn.GELU(), torch.nn.Linear(64, dim))

    def forward(self, x):  # (b, h, w, c)
        b, hh, ww, c = x.shape
        ws = self.ws
        w = x.view(b, hh // ws, ws, ww // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, c)
        bn, n, _ = w.shape
        q, k, v = self.qkv(w).reshape(bn, n, 3, self.h, -1).permute(2, 0, 3, 1, 4).reshape(3, bn * self.h, n, -1).unbind(0)
        a = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(-1) @ v
        o = self.o(a.view(bn, self.h, n, -1).permute(0, 2, 1, 3).reshape(bn, n, -1))
        x = x + o.view(b, hh // ws, ww // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hh, ww, c)
        return x + self.mlp(x)


def test_a_batch_of_one_merged_with_windows_and_heads_takes_larger_batches():
    """With an example of one image, the batch is no factor of the (batch x windows x heads) dim, so no head mask
    could be fitted to a batch of 3: a PlanError. Such batches are cut into the example's size, item by item:
    the same plan and weights as batches of one."""
    x = torch.randn(6, 8, 8, 32, generator=torch.Generator().manual_seed(3))
    results = {}
    for name, calib in {"ones": [(x[i:i + 1],) for i in range(6)], "threes": [(x[:3],), (x[3:],)]}.items():
        torch.manual_seed(0)
        model, report = gp.prune(_Windows().eval(), (x[:1],), budget={"params": 0.6}, calib=calib, verify=True,
                                 measure_latency=False, heldout_check=False, round_to=1)
        assert report.oracle.verdict == "PASS"
        results[name] = (report.plan.pruned, _weights(model))
    (plan0, w0), (plan1, w1) = results.values()
    assert plan0 == plan1 and w0["qkv.weight"].shape[0] < 96
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=1e-4, atol=1e-5, msg=k)


class _CopiesThenViews(torch.nn.Module):
    """A channel split copied and viewed per channel (instance statistics by hand), and a transposed map copied: at a
    batch of one only the transpose needs its copy."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.Conv2d(32, 24, 1), torch.nn.Conv2d(24, 10, 1)

    def forward(self, x):
        a, b = self.c1(x).split(16, dim=1)
        n, c, h, w = a.shape
        a2 = a.contiguous().view(n * c, h * w)
        a2 = (a2 - a2.mean(1, keepdim=True)).view(n, c, h, w)
        t = b.transpose(2, 3).contiguous().transpose(2, 3)
        return self.c3(torch.relu(self.c2(torch.relu(torch.cat((a2, t), 1))))).flatten(1)


def test_copies_only_one_trace_has_are_matched_by_what_they_copy():
    """Review: the copy only the batch of four had was dropped and the view after it failed (a raw RuntimeError), and
    copies of different tensors were paired by their order."""
    gen = torch.Generator().manual_seed(1)
    calib = [torch.randn(n, 3, 8, 8, generator=gen) for n in (4, 4, 1)]
    torch.manual_seed(0)
    model, report = gp.prune(_CopiesThenViews().eval(), (torch.randn(1, 3, 8, 8),), calib=calib, ratio=0.5,
                             measure_latency=False, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS" and model.c2.out_channels < 24
