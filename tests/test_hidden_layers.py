"""Layers a model keeps in a plain Python list, their weights registered through an ``nn.ParameterList``
(nbeats-pytorch): the rewrite must reach the layers the forward calls, not only the registered paths."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphprune as gp
from graphprune.api.torch_models import masked_original


class _Listed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = [nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
                       for _ in range(2)]  # not registered
        self.params = nn.ParameterList([p for b in self.blocks for p in b.parameters()])

    def forward(self, x):
        for b in self.blocks:
            x = x - b(x)
        return x


def test_layers_in_a_plain_list_are_pruned_where_the_forward_calls_them():
    """Before, the registered tensors were sliced and the listed layers kept the old ones: without ``verify`` the
    report counted 1,236 parameters while the model computed what the original did, bit for bit."""
    torch.manual_seed(0)
    model, x = _Listed().eval(), torch.randn(4, 10)
    dg = gp.trace(model, (x,))
    plan = gp.plan(dg, model, 0.5)
    with torch.no_grad():
        before, want = model(x), masked_original(dg, plan, (x,))[0]
    pruned, report = gp.prune(model, (x,), plan_=plan, measure_latency=False)
    assert pruned.blocks[0][0].weight.shape == (16, 10) and pruned.blocks[0][0].out_features == 16
    assert pruned.blocks[0][0].weight is pruned.params[0]  # one tensor, as the model had it
    assert sum(p.numel() for p in pruned.parameters()) == report.params_after < report.params_before
    with torch.no_grad():
        got = pruned(x)
    assert not torch.equal(got, before)  # the plan cuts channels that matter: not a no-op
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_a_failed_rewrite_restores_the_listed_layers_too():
    """The rewrite's undo covers the layers it reached through the list."""
    from graphprune.backends.torch_module import apply_plan
    from graphprune.backends.torch_snapshot import restore, snapshot

    torch.manual_seed(0)
    model, x = _Listed().eval(), torch.randn(4, 10)
    dg = gp.trace(model, (x,))
    plan = gp.plan(dg, model, 0.5)
    saved, ref = snapshot(model), copy.deepcopy(model.state_dict())
    apply_plan(model, dg, plan)
    assert model.blocks[1][2].weight.shape == (16, 16)
    restore(saved)
    assert model.blocks[1][2].weight.shape == (32, 32) and model.blocks[1][2].weight is model.params[8]
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())


def test_layers_held_where_the_rewrite_cannot_reach_them_are_refused():
    """Held in a deque, the layers were not found and kept the old weights: the report counted pruned parameters
    while the model computed what the original did (review). The recording saw the forward call them: refused."""
    import collections

    class _Deque(_Listed):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = collections.deque(self.blocks)

    torch.manual_seed(0)
    with pytest.raises(gp.RewriteError, match="the forward calls layers the model does not register, holding params.0"):
        gp.prune(_Deque().eval(), (torch.randn(4, 10),), ratio=0.5, measure_latency=False)
