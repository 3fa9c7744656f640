"""recover(blockwise=True): each block trained alone toward the original's output of it, on the
channels the plan kept (the map a pruned module carries, planning/module_channels.py)."""
from __future__ import annotations

import copy

import torch
from torch import nn

import graphprune as gp
from graphprune.api.recover_blocks import BlockStage
from graphprune.planning.module_channels import ATTR, composed


class Block(nn.Module):
    """An inverted residual with 1x1 convolutions: the residual stream's channels are coupled."""

    def __init__(self, c: int):
        super().__init__()
        self.a, self.b, self.n = nn.Conv2d(c, 4 * c, 1), nn.Conv2d(4 * c, c, 1), nn.BatchNorm2d(c)

    def forward(self, x):
        return x + self.n(self.b(torch.relu(self.a(x))))


def _net() -> nn.Module:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), Block(8), Block(8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    with torch.no_grad():  # distinct per-channel values: a channel is found by its BatchNorm scale
        for blk in (m[1], m[2]):
            blk.n.weight.copy_(torch.arange(1, 9.0)), blk.n.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _data(n: int = 10) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(8, 3, 12, 12, generator=g) for _ in range(n)]


def _found(student_w: torch.Tensor, teacher_w: torch.Tensor) -> list[int]:
    """Where each of the student's values sits among the teacher's (values are distinct)."""
    return [int((teacher_w == v).nonzero()) for v in student_w]


def test_map_names_the_kept_stream_channels():
    m = _net()
    p, _ = gp.prune(copy.deepcopy(m), (_data()[0][:1],), ratio=0.5, round_to=1, runtime=None)
    kept = getattr(p, ATTR)
    stream = _found(p[1].n.weight, m[1].n.weight)
    assert len(stream) == 4 and kept["1"] == {1: stream} and kept["2"] == {1: stream}
    assert kept["5"] == {} and set(kept) == {str(i) for i in range(6)}  # the blocks alone; the classifier whole
    x = _data()[0]
    with torch.no_grad():  # the stem's kept outputs are the original's, exactly
        assert torch.equal(p[0](x), m[0](x)[:, kept["0"][1]])


def test_map_composes_over_a_second_prune():
    m = _net()
    x = _data()[0][:1]
    once, _ = gp.prune(copy.deepcopy(m), (x,), ratio=0.25, round_to=1, runtime=None)
    twice, _ = gp.prune(copy.deepcopy(once), (x,), ratio=0.5, round_to=1, runtime=None)
    assert getattr(twice, ATTR)["1"] == {1: _found(twice[1].n.weight, m[1].n.weight)}
    assert composed(None, {"a": {1: [0, 2]}}) == {"a": {1: [0, 2]}}
    assert composed({"a": {1: [1, 3, 5]}}, {"a": {1: [0, 2]}, "b": {}}) == {"a": {1: [1, 5]}, "b": {}}


def test_blockwise_lowers_every_block_and_the_model():
    m, data = _net(), _data(20)
    p, _ = gp.prune(copy.deepcopy(m), (data[0][:1],), ratio=0.5, round_to=1, runtime=None)
    res = gp.recover(p, m, data, steps=200, blockwise=True)
    stage = res.blocks
    assert isinstance(stage, BlockStage) and [b[0] for b in stage.blocks] == ["0", "1", "2", "5"]
    assert all(after <= before for _, before, after, *_ in stage.blocks) and all(b[3] == 100 for b in stage.blocks)
    assert sum(b[2] for b in stage.blocks) < 0.5 * sum(b[1] for b in stage.blocks)
    before, after = stage.heldout_losses
    assert after < 0.5 * before and not stage.undone
    assert res.steps == 100 and res.heldout_losses[0] == (0, after)  # the end-to-end stage: the other half
    assert "blocks trained alone: 4" in str(res)


def test_a_stage_that_makes_the_model_worse_is_undone():
    # 40 steps on 10 batches: each block's output improves, the model's held-out loss rises
    m, data = _net(), _data(10)
    p, _ = gp.prune(copy.deepcopy(m), (data[0][:1],), ratio=0.5, round_to=1, runtime=None)
    res = gp.recover(p, m, data, steps=40, blockwise=True)
    before, after = res.blocks.heldout_losses
    assert after > before and res.blocks.undone and res.heldout_losses[0] == (0, before)
    assert any(b[2] < b[1] for b in res.blocks.blocks) and "the stage was undone" in str(res)


def test_blockwise_is_deterministic_under_a_seed():
    m, data = _net(), _data()
    p, _ = gp.prune(copy.deepcopy(m), (data[0][:1],), ratio=0.5, round_to=1, runtime=None)
    a, b = copy.deepcopy(p), copy.deepcopy(p)
    gp.recover(a, m, data, steps=16, blockwise=True, seed=3)
    gp.recover(b, m, data, steps=16, blockwise=True, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


class Twice(nn.Module):
    """One block run twice per forward: no single input/output pair to train it on."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(6, 6), nn.Linear(6, 6)])
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.blocks[1](self.blocks[0](self.blocks[0](x))))


def test_blocks_that_cannot_be_matched_are_left_with_a_reason():
    torch.manual_seed(0)
    teacher, data = Twice().eval(), [torch.randn(4, 6) for _ in range(6)]
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.blocks[1].weight.add_(0.3 * torch.randn(6, 6))
    res = gp.recover(student, teacher, data, steps=8, blockwise=True)
    assert res.blocks.skipped == {"blocks.0": "runs 2 times in a forward"}
    assert [b[0] for b in res.blocks.blocks] == ["blocks.1"] and res.blocks.blocks[0][2] < res.blocks.blocks[0][1]
    # a narrower output with no map from the plan (pruned elsewhere): left to the end-to-end stage
    m = _net()
    p, _ = gp.prune(copy.deepcopy(m), (_data()[0][:1],), ratio=0.5, round_to=1, runtime=None)
    delattr(p, ATTR)
    res = gp.recover(p, m, _data(), steps=8, blockwise=True)
    assert set(res.blocks.skipped) == {"0", "1", "2"} and [b[0] for b in res.blocks.blocks] == ["5"]
    assert "the plan does not map" in str(res.blocks)


def test_transformers_decoder_layers_are_blocks():
    """A pruned Llama (heads and FFN; the hidden size whole): its decoder layers, called with the
    keyword inputs transformers passes them (masks, rotary embeddings), are each trained alone."""
    from graphprune.zoo.hf import build

    torch.manual_seed(0)
    teacher = build("llama-gqa").eval()
    g = torch.Generator().manual_seed(2)
    data = [{"input_ids": torch.randint(0, 128, (4, 12), generator=g), "attention_mask": torch.ones(4, 12)}
            for _ in range(6)]
    student, _ = gp.hf.prune(copy.deepcopy(teacher), data[0], ratio=0.5, targets=("heads", "ffn"), round_to=1)
    res = gp.recover(student, teacher, data, steps=20, lr=1e-3, blockwise=True)
    layers = [n for n, *_ in res.blocks.blocks]
    assert layers == [f"model.layers.{i}" for i in range(teacher.config.num_hidden_layers)]
    assert all(after < before for _, before, after, *_ in res.blocks.blocks), res.blocks
    assert res.blocks.heldout_losses[1] < res.blocks.heldout_losses[0]


class Staged(nn.Module):
    """A stem, a Sequential of blocks and a classifier head, as torchvision-style CNNs are written."""

    def __init__(self):
        super().__init__()
        self.stem, self.blocks, self.fc = nn.Conv2d(3, 8, 3), nn.Sequential(Block(8), Block(8)), nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


def test_the_head_after_the_last_block_is_trained_alone_next():
    from graphprune.api.recover_blocks import after_blocks

    torch.manual_seed(0)
    m, data = Staged().eval(), _data(20)
    with torch.no_grad():
        m.fc.weight.mul_(20)  # a confident classifier, so pruning moves its predictions
    p, _ = gp.prune(copy.deepcopy(m), (data[0][:1],), ratio=0.5, round_to=1, runtime=None)
    assert after_blocks(p, "blocks.1", lambda: p(data[0])) == [p.fc.weight, p.fc.bias]  # not the stem's
    res = gp.recover(p, m, data, steps=200, blockwise=True, holdout=0.5)
    stage = res.blocks
    assert [b[0] for b in stage.blocks] == ["blocks.0", "blocks.1"] and stage.tail.steps == 50
    assert stage.tail.heldout_best < stage.tail.heldout_before and "the layers after the last block alone" in str(stage)
    # on this random network better blocks and a retrained head still end above the pruned model's held-out
    # loss: judged after the head, the whole stage is undone, back to the weights it started from
    before, after = stage.heldout_losses
    assert after > before and stage.undone and res.heldout_losses[0] == (0, before)


def test_a_dataloader_feeds_every_stage():
    """The block stage reads a pass of the data first; the head and end-to-end stages start new passes."""
    m = _net()
    x = torch.cat(_data(10))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(len(x))), batch_size=8)
    p, _ = gp.prune(copy.deepcopy(m), (x[:1],), ratio=0.5, round_to=1, runtime=None)
    res = gp.recover(p, m, loader, steps=20, blockwise=True)
    assert len(res.blocks.blocks) == 4 and res.batches == (9, 1)
    assert res.steps == (20 if res.blocks.undone else 10)  # an undone stage gives its steps back


def test_steps_and_time_both_bound_a_block():
    m, data = _net(), _data(10)
    p, _ = gp.prune(copy.deepcopy(m), (data[0][:1],), ratio=0.5, round_to=1, runtime=None)
    res = gp.recover(p, m, data, steps=100_000, time_s=4, blockwise=True, lr=1e-3)
    assert all(k < 50_000 for *_, k, _ in res.blocks.blocks) and res.blocks.seconds < 8


class Pair(nn.Module):
    """A block returning two tensors of one width: the map (its last value's) cannot say which is first."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.a(x), torch.relu(self.b(x))


class TwoOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList([Pair()])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        a, b = self.blocks[0](x)
        return self.head(torch.cat([a, b], -1))


def test_a_block_with_several_outputs_is_not_matched_by_the_map():
    torch.manual_seed(0)
    teacher, data = TwoOut().eval(), [torch.randn(8, 8) for _ in range(6)]
    p, _ = gp.prune(copy.deepcopy(teacher), (data[0][:1],), ratio=0.5, round_to=1, runtime=None)
    assert getattr(p, ATTR)["blocks.0"]  # narrowed, and mapped by its last value
    res = gp.recover(p, teacher, data, steps=8, blockwise=True)
    assert "blocks.0" in res.blocks.skipped and "several values" in res.blocks.skipped["blocks.0"]


def test_a_teacher_that_was_itself_pruned_is_compared_on_its_own_channels():
    """prune -> teacher = that model -> prune again: the student's map counts positions of the first
    original; the block's targets are taken within the teacher's kept channels."""
    m, data = _net(), _data(20)
    teacher, _ = gp.prune(copy.deepcopy(m), (data[0][:1],), ratio=0.25, round_to=1, runtime=None)
    student, _ = gp.prune(copy.deepcopy(teacher), (data[0][:1],), ratio=0.5, round_to=1, runtime=None)
    res = gp.recover(copy.deepcopy(student), teacher, data, steps=8, blockwise=True)
    assert [b[0] for b in res.blocks.blocks] == ["0", "1", "2", "5"]
    # the stem's kept outputs are the teacher's own on the re-based positions, exactly, before any training
    from graphprune.api.recover_blocks import _kept

    x = data[0]
    with torch.no_grad():
        out, ref = student[0](x), teacher[0](x)
        assert torch.equal(_kept(student, teacher, "0", out, ref, True), out)


def test_a_transformers_kv_cache_is_not_replayed():
    from graphprune.zoo.hf import build

    torch.manual_seed(0)
    teacher = build("llama-gqa").eval()
    student = copy.deepcopy(teacher)
    teacher.config.use_cache = student.config.use_cache = True  # as from_pretrained configs have it
    with torch.no_grad():
        student.model.layers[0].mlp.down_proj.weight.add_(0.05 * torch.randn_like(student.model.layers[0].mlp.down_proj.weight))
    g = torch.Generator().manual_seed(2)
    data = [{"input_ids": torch.randint(0, 128, (2, 8), generator=g)} for _ in range(4)]
    res = gp.recover(student, teacher, data, steps=40, lr=1e-3, blockwise=True)
    assert [b[0] for b in res.blocks.blocks] == ["model.layers.0", "model.layers.1"]
    assert res.blocks.blocks[0][2] < res.blocks.blocks[0][1]
