"""recover(mix=): teacher and student see the same blend of two items of a training batch (function
matching), by default where the inputs are floating; held-out batches are scored as given; token ids
are never blended (an explicit mix= on them is an error)."""
from __future__ import annotations

import copy
import re

import pytest
import torch
from torch import nn

import graphprune as gp
from graphprune.api.recover import RecoverError
from graphprune.api.recover_mix import mix_inputs


def _pair_weight(row: torch.Tensor, batch: torch.Tensor) -> tuple[int, int, float] | None:
    """(i, j, lam) with row == lam * batch[i] + (1 - lam) * batch[j], found by least squares; None if no pair fits."""
    for i in range(len(batch)):
        for j in range(len(batch)):
            d = batch[i] - batch[j]
            lam = 1.0 if i == j else float((row - batch[j]) @ d / (d @ d))
            if 0 <= lam <= 1 and torch.allclose(row, lam * batch[i] + (1 - lam) * batch[j], atol=1e-5):
                return i, j, lam
    return None


def test_every_item_is_a_blend_of_two_and_all_inputs_share_it():
    torch.manual_seed(0)
    x = torch.randn(6, 5)
    ids = torch.arange(6)[:, None]
    (a, b, n), kw, mixed = mix_inputs((x, 2 * x, ids), {"mask": torch.ones(6, 3, dtype=torch.long)}, 0.5)
    assert mixed == 2 and torch.equal(n, ids) and torch.equal(kw["mask"], torch.ones(6, 3, dtype=torch.long))
    assert torch.allclose(b, 2 * a)  # one permutation and one weight per item for every input
    pairs = [_pair_weight(row, x) for row in a]
    assert all(p is not None for p in pairs)
    assert sum(p[2] < 0.999 for p in pairs) >= 4  # blended, not copied
    one = torch.randn(1, 5)
    assert mix_inputs((one,), {}, 1.0)[0][0] is one  # a single item has nothing to blend with


class Recorder(nn.Module):
    """The teacher, keeping what it was fed."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.model(x)


def _setup():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(8, 48), nn.ReLU(), nn.Linear(48, 6)).eval()
    g = torch.Generator().manual_seed(3)
    data = [torch.randn(8, 8, generator=g) for _ in range(5)]
    student, _ = gp.prune(copy.deepcopy(teacher), (data[0],), ratio=0.5, round_to=1)
    return teacher, data, student


def test_training_batches_are_blended_for_both_models_and_held_out_ones_are_not():
    teacher, data, student = _setup()
    rec = Recorder(teacher)
    res = gp.recover(copy.deepcopy(student), rec, data, steps=4, lr=1e-3, mix=1.0)
    held, rows = data[0], torch.cat(data[1:])
    assert res.batches == (4, 1)
    for x in rec.seen:
        if torch.equal(x, held):
            continue  # an evaluation of the held-out batch, unblended
        pairs = [_pair_weight(row, rows) for row in x]
        assert all(p is not None for p in pairs) and any(p[2] < 0.999 for p in pairs)
    assert sum(not torch.equal(x, held) for x in rec.seen) == 4  # one blended batch per step
    plain = gp.recover(copy.deepcopy(student), teacher, data, steps=4, lr=1e-3, mix=0)
    assert plain.heldout_losses[0] == res.heldout_losses[0]  # the same unblended score before training


@pytest.mark.parametrize("mix, blended", [(None, True), (0, False)])
def test_floating_inputs_are_blended_by_default_and_not_with_mix_0(mix, blended):
    teacher, data, student = _setup()
    rec = Recorder(teacher)
    gp.recover(copy.deepcopy(student), rec, data, steps=4, lr=1e-3, mix=mix)
    given = [x for x in rec.seen if any(torch.equal(x, b) for b in data)]
    assert len(given) == (len(rec.seen) - 4 if blended else len(rec.seen))  # 4 training steps


def test_mixing_is_seeded():
    teacher, data, student = _setup()
    runs = []
    for mix, seed in ((1.0, 0), (1.0, 0), (1.0, 1), (0.0, 0)):
        s = copy.deepcopy(student)
        gp.recover(s, teacher, data, steps=6, lr=1e-3, mix=mix, seed=seed)
        runs.append(torch.cat([p.flatten() for p in s.parameters()]))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2]) and not torch.equal(runs[0], runs[3])


def test_token_ids_are_not_blended_and_mix_must_be_positive():
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.out = nn.Embedding(10, 8), nn.Linear(8, 10)

        def forward(self, ids):
            return self.out(self.emb(ids).mean(1))

    teacher, student = Tokens().eval(), Tokens().eval()
    data = [torch.randint(0, 10, (4, 3)) for _ in range(3)]
    with pytest.raises(RecoverError, match=re.escape("mix=0.5 blends floating inputs")):
        gp.recover(student, teacher, data, steps=2, lr=1e-3, mix=0.5)
    assert gp.recover(student, teacher, data, steps=2, lr=1e-3).steps == 2  # the default leaves token ids alone
    with pytest.raises(RecoverError, match="mix=-1 is out of range"):
        gp.recover(student, teacher, data, steps=2, mix=-1)
