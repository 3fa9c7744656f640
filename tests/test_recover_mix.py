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
from graphprune.api.recover_mix import blended, mix_inputs


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


def test_a_float_mask_is_never_blended_and_the_default_blends_images_only():
    torch.manual_seed(0)
    embeds, mask = torch.randn(4, 3, 8), torch.tensor([[1.0, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0]])
    _, kw, mixed = mix_inputs((), {"inputs_embeds": embeds, "attention_mask": mask}, 1.0)
    assert mixed == 1 and torch.equal(kw["attention_mask"], mask) and not torch.equal(kw["inputs_embeds"], embeds)
    images = torch.randn(4, 3, 6, 6)
    (seq, img), _ = blended(((embeds, images), {}), None, "batch 1")  # (time, batch, features) may not be items
    assert torch.equal(seq, embeds) and not torch.equal(img, images)
    (seq, _), _ = blended(((embeds, images), {}), 0.5, "batch 1")  # an explicit mix= blends any floating input
    assert not torch.equal(seq, embeds)


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
    held = data[0]
    assert res.batches == (4, 1)
    for x in rec.seen:
        if torch.equal(x, held):
            continue  # an evaluation of the held-out batch, unblended
        # every item blends two items of one training batch, never items of two batches
        fits = [b for b in data[1:] if all(_pair_weight(row, b) is not None for row in x)]
        assert len(fits) == 1 and any(_pair_weight(row, fits[0])[2] < 0.999 for row in x)
    assert sum(not torch.equal(x, held) for x in rec.seen) == 4  # one blended batch per step
    plain = gp.recover(copy.deepcopy(student), teacher, data, steps=4, lr=1e-3, mix=0)
    assert plain.heldout_losses[0] == res.heldout_losses[0]  # the same unblended score before training


@pytest.mark.parametrize("mix, blends", [(None, False), (0, False), (1.0, True)])
def test_features_are_blended_only_when_asked(mix, blends):
    teacher, data, student = _setup()
    rec = Recorder(teacher)
    gp.recover(copy.deepcopy(student), rec, data, steps=4, lr=1e-3, mix=mix)
    given = [x for x in rec.seen if any(torch.equal(x, b) for b in data)]
    assert len(given) == (len(rec.seen) - 4 if blends else len(rec.seen))  # 4 training steps


def test_images_are_blended_by_default():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4)).eval()
    data = [torch.randn(4, 3, 8, 8) for _ in range(5)]
    rec = Recorder(teacher)
    gp.recover(copy.deepcopy(teacher), rec, data, steps=3, lr=1e-3)
    given = [x for x in rec.seen if any(torch.equal(x, b) for b in data)]
    assert len(rec.seen) - len(given) == 3  # each training step's batch was blended


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
    with pytest.raises(RecoverError, match="mix=inf is out of range"):
        gp.recover(student, teacher, data, steps=2, mix=float("inf"))
