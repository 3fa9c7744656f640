"""Every importance criterion ranks a planted least-important unit last.

One hidden layer (fc1 -> BatchNorm -> ReLU -> fc2) gives one prunable group of HIDDEN units.
Unit PLANT is made the least important by what each kind of criterion reads
(``Criterion.needs``), and pruning one unit must remove exactly it:

- weights only (""): every weight the unit owns is near zero;
- calibration data ("calib"): its weights are the largest, but it is dead on the data
  (a large negative bias before the ReLU), so it contributes nothing where it is consumed;
- gradients ("grad"): its weights are the largest and it is active, but it only reaches an
  output the loss ignores, so the loss gradient of every weight it owns is zero.

The data and gradient plantings are built so that weights alone would keep the unit: a
criterion that ignored the data or the loss would fail. PLANT is neither the first nor the last
index, so a constant score (stable order) fails too. The registry is iterated, so a criterion
registered later is covered without a change here.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp
from graphprune.importance import CRITERIA

IN, HIDDEN, OUT = 8, 6, 4
PLANT = 2
RATIO = 1.5 / HIDDEN  # floor(6 * 0.25) = 1 unit pruned


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(IN, HIDDEN), nn.BatchNorm1d(HIDDEN), nn.Linear(HIDDEN, OUT)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


def _signed(gen, *shape, low=0.5, high=1.0):
    """Magnitudes in [low, high] with random signs: no unit is small by accident."""
    mag = torch.empty(shape).uniform_(low, high, generator=gen)
    return mag * torch.where(torch.rand(shape, generator=gen) < 0.5, -1.0, 1.0)


def planted(needs: str) -> Net:
    gen = torch.Generator().manual_seed(0)
    net = Net().eval()
    with torch.no_grad():
        net.fc1.weight.copy_(_signed(gen, HIDDEN, IN))
        net.fc1.bias.fill_(0.5)  # every other unit active on most inputs
        net.bn.weight.copy_(torch.empty(HIDDEN).uniform_(0.5, 1.5, generator=gen))
        net.bn.bias.copy_(torch.empty(HIDDEN).uniform_(-0.1, 0.1, generator=gen))
        net.fc2.weight.copy_(_signed(gen, OUT, HIDDEN))
        if needs == "":
            for t in (net.fc1.weight[PLANT], net.fc1.bias[PLANT:PLANT + 1], net.bn.weight[PLANT:PLANT + 1],
                      net.bn.bias[PLANT:PLANT + 1], net.fc2.weight[:, PLANT]):
                t.mul_(1e-3)
        elif needs == "calib":
            net.fc1.weight[PLANT] *= 3.0
            net.fc2.weight[:, PLANT] *= 3.0
            net.fc1.bias[PLANT] = -100.0  # |w.x| <= 3 * 8 * 4 sigma: never above zero on the data
        else:
            net.fc1.weight[PLANT] *= 3.0
            net.fc2.weight[:OUT - 1, PLANT] = 0.0
            net.fc2.weight[OUT - 1, PLANT] = 5.0  # reaches only the output the loss ignores
    return net


def loss_fn(out, batch):
    return out[:, :OUT - 1].square().sum()  # the last output is not part of the loss


def _calib():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(16, IN, generator=gen),) for _ in range(4)]


def _args():
    return (torch.randn(4, IN, generator=torch.Generator().manual_seed(2)),)


def _first_pruned(net: Net, importance: str) -> list[int]:
    args = _args()
    g = gp.trace(net, args)
    (grp,) = g.prunable_groups()
    assert grp.size == HIDDEN and {(m.name, m.dim) for m in grp.members} == {
        ("fc1.weight", 0), ("fc1.bias", 0), ("bn.weight", 0), ("bn.bias", 0), ("bn.running_mean", 0),
        ("bn.running_var", 0), ("fc2.weight", 1)}
    needs = CRITERIA[importance].needs
    extra = {"calib": _calib(), "allocation": "uniform"} if needs else {}
    if needs == "grad":
        extra["loss_fn"] = loss_fn
    plan = gp.plan(g, net, ratio=RATIO, importance=importance, round_to=1, **extra)
    return plan.pruned[grp.id]


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_planted_unit_ranks_last(name):
    crit = CRITERIA[name]
    if name == "random":
        pytest.skip("random ranks nothing by design: test_random_is_seeded_and_not_index_order holds it instead")
    assert _first_pruned(planted(crit.needs), name) == [PLANT], (name, crit.needs)


@pytest.mark.parametrize("needs", ["calib", "grad"])
def test_plantings_fool_a_weight_criterion(needs):
    """The data and gradient plantings give the unit the largest weights: l2 keeps it, so the
    criteria above found it from the data or the loss, not from its weights."""
    assert _first_pruned(planted(needs), "l2") != [PLANT]


def test_gradient_planting_fools_a_data_criterion():
    """The gradient planting's unit is active with a large outgoing weight: activation keeps it."""
    assert _first_pruned(planted("grad"), "activation") != [PLANT]


def test_bn_scale_reads_the_batchnorm_scale():
    """Small BatchNorm scale, large weights everywhere else: bn_scale prunes it, l2 does not."""
    net = planted("calib")
    with torch.no_grad():
        net.fc1.bias[PLANT] = 0.5
        net.bn.weight[PLANT] = 1e-3
    assert _first_pruned(net, "bn_scale") == [PLANT]
    assert _first_pruned(net, "l2") != [PLANT]


def test_random_is_seeded_and_not_index_order():
    net = planted("")
    args = _args()
    g = gp.trace(net, args)
    (grp,) = g.prunable_groups()
    first = gp.plan(g, net, ratio=0.5, importance="random", round_to=1).pruned[grp.id]
    again = gp.plan(gp.trace(net, args), net, ratio=0.5, importance="random", round_to=1).pruned[grp.id]
    assert first == again  # a fresh trace, the same draw
    assert len(first) == HIDDEN // 2
    # neither the first nor the last half of the indices: the order is not the identity (or its reverse)
    assert first not in (list(range(HIDDEN // 2)), list(range(HIDDEN // 2, HIDDEN)))


def test_planted_unit_is_dead_on_the_calibration_data():
    """The calib planting's premise, checked on the data itself."""
    net = planted("calib")
    with torch.no_grad():
        h = torch.cat([F.relu(net.bn(net.fc1(x))) for (x,) in _calib()])
    assert np.count_nonzero(h[:, PLANT].numpy()) == 0
    assert all(np.count_nonzero(h[:, k].numpy()) > 0 for k in range(HIDDEN) if k != PLANT)


def test_planted_unit_gets_no_loss_gradient():
    """The grad planting's premise: the unit is active, yet no weight it owns moves the loss."""
    net = planted("grad")
    (x,) = _calib()[0]
    loss_fn(net(x), None).backward()
    owned = (net.fc1.weight.grad[PLANT], net.fc1.bias.grad[PLANT], net.bn.weight.grad[PLANT],
             net.bn.bias.grad[PLANT], net.fc2.weight.grad[OUT - 1, PLANT])
    assert all(float(g.abs().max()) == 0.0 for g in owned)
    # its other outgoing weights are zero, so their (nonzero) gradients add nothing to w * dL/dw
    assert float(net.fc2.weight.detach()[:OUT - 1, PLANT].abs().max()) == 0.0
    assert all(float(net.fc1.weight.grad[k].abs().max()) > 0 for k in range(HIDDEN) if k != PLANT)
    with torch.no_grad():
        assert int((F.relu(net.bn(net.fc1(x)))[:, PLANT] > 0).sum()) > 0  # active on the data
