"""graphprune.recover: distillation from the original after pruning. The held-out loss falls and
agreement rises, early stopping restores the best weights, runs are bit-identical under a seed,
bad data is a clear error, and prune_iterative and the CLI plug it in."""
from __future__ import annotations

import copy
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import graphprune as gp
from graphprune.api.recover import RecoverError, RecoverResult, _kind, _leaves

ROOT = Path(__file__).resolve().parents[1]


def _mlp() -> nn.Module:
    """A random MLP whose argmax varies with the input (the last layer is scaled up)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)).eval()
    with torch.no_grad():
        m[-1].weight.mul_(10)
    return m


class ResMLP(nn.Module):
    """Residual blocks in a ModuleList: the block outputs keep their width when the blocks shrink."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(16, 32)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(32, 96), nn.ReLU(), nn.Linear(96, 32)) for _ in range(2))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)


def _batches(n: int, *shape: int, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, *shape, generator=g) for _ in range(n)]


def _pruned(teacher: nn.Module, x: torch.Tensor, ratio: float = 0.75, **options) -> nn.Module:
    student, _ = gp.prune(copy.deepcopy(teacher), (x,), ratio=ratio, round_to=1, **options)
    return student


def _agreement(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x).argmax(-1) == b(x).argmax(-1)).float().mean().item()


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recover_lowers_the_heldout_loss_and_raises_agreement():
    teacher, data = _mlp(), _batches(12, 16)
    original, test_x = _state(teacher), torch.randn(512, 16, generator=torch.Generator().manual_seed(7))
    student = _pruned(teacher, data[0])
    assert student[0].out_features == 16
    before = _agreement(teacher, student, test_x)
    student.train()  # its mode comes back after recovery
    result = gp.recover(student, teacher, data, steps=150)
    assert isinstance(result, RecoverResult) and callable(gp.recover)  # the function, not its module
    assert (result.steps, result.reason, result.stopped_early, result.batches) == (150, "steps", False, (11, 1))
    assert len(result.train_losses) == 150 and result.heldout_losses[0][0] == 0
    assert result.lr == min(result.lr_probe, key=lambda t: t[1])[0]  # no lr given: the probe's best
    assert result.heldout_best < 0.75 * result.heldout_before, result
    after = _agreement(teacher, student, test_x)
    assert after > before + 0.15, (before, after)
    assert student.training and not teacher.training and _same(_state(teacher), original)  # the teacher is frozen
    text = str(result)
    assert "held-out loss" in text and "best" in text and f"weights of step {result.best_step}" in text


def test_cnn_with_a_dataloader_of_images_and_labels_keeps_batchnorm_statistics():
    from graphprune.zoo import build

    teacher, _ = build("resnet18")
    g = torch.Generator().manual_seed(3)
    images, labels = torch.randn(48, 3, 16, 16, generator=g), torch.randint(0, 10, (48,), generator=g)
    ds = torch.utils.data.TensorDataset(images, labels)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)  # yields [images, labels]: forward(x) takes images
    student = _pruned(teacher, ds[:2][0], ratio=0.5)
    stats = {k: v.clone() for k, v in student.state_dict().items() if "running" in k}
    assert stats
    result = gp.recover(student, teacher, loader, steps=12, eval_every=4, lr=1e-2)
    assert result.batches == (5, 1) and result.heldout_best < result.heldout_before, result
    assert all(torch.equal(stats[k], student.state_dict()[k]) for k in stats)  # eval mode: BN statistics frozen


def test_early_stopping_restores_the_best_weights():
    teacher, data = _mlp(), _batches(8, 16)
    student = _pruned(teacher, data[0])
    before = _state(student)
    plateau = gp.recover(student, teacher, data, steps=500, lr=0.0, eval_every=5, patience=2)  # nothing moves
    assert plateau.stopped_early and plateau.reason == "patience" and plateau.steps == 10 and plateau.best_step == 0
    assert [s for s, _ in plateau.heldout_losses] == [0, 5, 10] and _same(_state(student), before)
    out_of_time = gp.recover(copy.deepcopy(student), teacher, data, time_s=1e-6)
    assert out_of_time.reason == "time" and out_of_time.steps == 1 and not out_of_time.stopped_early

    states = {0: before}
    keep = lambda step, train, held: states.__setitem__(step, _state(student))
    result = gp.recover(student, teacher, data, steps=400, lr=1.0, eval_every=5, patience=2, callback=keep)
    held = dict(result.heldout_losses)  # lr far too high: the held-out loss soon rises and stays up
    assert result.reason == "patience" and result.steps == result.best_step + 10 < 400, result
    assert held[result.best_step] == min(held.values()) and held[result.steps] > held[result.best_step]
    assert _same(_state(student), states[result.best_step])  # the best weights are back, not the last

    seen = []
    stop = lambda step, train, held: seen.append((step, train, held)) or False
    result = gp.recover(student, teacher, data, steps=100, eval_every=3, callback=stop)
    assert result.reason == "callback" and result.steps == 3 and len(seen) == 1
    assert seen[0][0] == 3 and seen[0][2] == result.heldout_losses[-1][1] and seen[0][1] > 0


def test_same_seed_same_weights_other_seed_other_weights():
    teacher, data = _mlp(), _batches(12, 16)
    student = _pruned(teacher, data[0])
    runs = {}
    for key, seed, feed in (("a", 0, data), ("b", 0, data), ("c", 1, data), ("gen", 0, (b for b in data))):
        s = copy.deepcopy(student)
        result = gp.recover(s, teacher, feed, steps=25, seed=seed)  # 25 steps: the 11 batches go round twice
        runs[key] = _state(s)
        assert result.steps == 25 and result.batches == (11, 1)
    assert _same(runs["a"], runs["b"])
    assert not _same(runs["a"], runs["c"])  # another seed, another batch order
    assert _same(runs["a"], runs["gen"])  # a one-shot generator is cached and replayed like the list
    assert not _same(runs["a"], _state(student))


@pytest.mark.parametrize("kw, match", [
    (dict(callback=3), "callback=3 is not callable"),  # failed at the first evaluation, after training started
    (dict(lr="fast"), "lr='fast' is out of range"),  # a bare TypeError
    (dict(lr=-1.0), "lr=-1.0 is out of range"),  # torch's ValueError
    (dict(time_s="10"), "time_s='10' is out of range"),
])
def test_bad_arguments_are_refused_before_training(kw, match):
    teacher = _mlp()
    student = _pruned(teacher, torch.randn(4, 16))
    before = _state(student)
    with pytest.raises(RecoverError, match=re.escape(match)):
        gp.recover(student, teacher, _batches(6, 16), steps=5, **kw)
    assert _same(_state(student), before)


@pytest.mark.parametrize("data, match", [
    ([], "data holds no batches"),
    ("images.npz", "data is one str"),
    (torch.randn(4, 16), "data is one Tensor"),
    (42, "cannot be iterated"),
    ([1, 2], "batch 0 is a int holding no tensor"),
    ([torch.randn(4, 5)] * 3, "batch 0 cannot run through the teacher: RuntimeError"),
])
def test_bad_data_is_a_clear_error(data, match):
    teacher = _mlp()
    student = _pruned(teacher, torch.randn(4, 16))
    before = _state(student)
    with pytest.raises(RecoverError, match=re.escape(match)) as err:
        gp.recover(student, teacher, data, steps=5)
    assert isinstance(err.value, gp.PlanError) and "DataLoader or a list of batches" in str(err.value)
    assert _same(_state(student), before) and not student.training


def test_bad_options_are_clear_errors():
    teacher = _mlp()
    data = _batches(4, 16)
    student = _pruned(teacher, data[0])
    with pytest.raises(RecoverError, match="share weights"):
        gp.recover(teacher, teacher, data)
    with pytest.raises(RecoverError, match="holdout=1.0 is out of range"):
        gp.recover(student, teacher, data, holdout=1.0)
    with pytest.raises(RecoverError, match=r"features \['nope'\] name no module"):
        gp.recover(student, teacher, data, steps=2, features=["nope"])
    with pytest.raises(RecoverError, match="none of features"):
        gp.recover(student, teacher, data, steps=2, features=["0"])  # a pruned layer: 16 outputs against 64


def test_features_are_matched_where_the_shapes_agree():
    torch.manual_seed(0)
    teacher, data = ResMLP().eval(), _batches(10, 16)
    student = _pruned(teacher, data[0], ratio=0.5, ignore=["stem"])  # the blocks shrink, the residual stream stays
    assert student.blocks[0][0].out_features == 48 and student.stem.out_features == 32
    result = gp.recover(copy.deepcopy(student), teacher, data, steps=30, features=True)
    assert {"blocks.0", "blocks.1", "blocks.0.2"} <= set(result.features_matched)
    assert "blocks.0.0" not in result.features_matched  # 48 units against 96
    assert result.heldout_best < result.heldout_before and "features matched: blocks.0" in str(result)
    named = gp.recover(student, teacher, data, steps=30, features=["blocks.1", "blocks.0.0"])
    assert named.features_matched == ["blocks.1"]


def test_output_kinds_logits_by_kl_the_rest_by_mse():
    from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutput

    hidden, logits, image = torch.randn(2, 5, 8), torch.randn(2, 5, 32), torch.randn(2, 3, 4, 4)
    lm = CausalLMOutput(logits=logits, hidden_states=(hidden,))
    enc = BaseModelOutputWithPooling(last_hidden_state=hidden, pooler_output=hidden[:, 0])
    picked = lambda out: [(n, _kind(n, t, "auto")) for n, t in _leaves(out)]
    assert picked(lm) == [("logits", "kl")]
    assert picked(enc) == [("last_hidden_state", "mse")]
    assert picked((logits[:, 0], image)) == [("output[0]", "kl"), ("output[1]", "mse")]
    assert picked({"embedding": hidden[:, 0], "start_logits": logits[..., 0]}) == [
        ("embedding", "mse"), ("start_logits", "kl")]
    assert picked(torch.randn(4, 1)) == [("output", "mse")]  # one regression value is not a distribution


def test_transformers_model_with_dict_batches():
    from graphprune.zoo.hf import build

    torch.manual_seed(0)
    teacher = build("llama-gqa").eval()
    g = torch.Generator().manual_seed(2)
    data = []
    for _ in range(6):
        mask = torch.ones(4, 12, dtype=torch.long)
        mask[:, 9:] = 0  # padding the loss must not count
        data.append({"input_ids": torch.randint(0, 128, (4, 12), generator=g), "attention_mask": mask})
    student, _ = gp.hf.prune(copy.deepcopy(teacher), data[0], ratio=0.5, targets=("heads", "ffn"), round_to=1)
    assert student.config.intermediate_size < teacher.config.intermediate_size
    result = gp.recover(student, teacher, data, steps=12, eval_every=4, lr=1e-3)
    assert result.batches == (5, 1) and result.heldout_best < result.heldout_before, result
    assert gp.recover(copy.deepcopy(student), teacher, data, steps=1).lr == 1e-4  # transformers' default


def test_prune_iterative_recovers_from_the_original_between_steps(monkeypatch):
    model, data = _mlp(), _batches(10, 16)
    original = _state(model)
    module = importlib.import_module("graphprune.api.schedule")  # where prune_iterative calls recover
    real, teachers = module.distill, []
    monkeypatch.setattr(module, "distill", lambda m, t, **kw: teachers.append(t) or real(m, t, **kw))
    model, reports = gp.prune_iterative(model, (data[0],), ratio=0.75, steps=2, round_to=1,
                                        recover=dict(data=data, steps=40))
    assert len(teachers) == 2 and teachers[0] is teachers[1] and _same(_state(teachers[0]), original)
    assert model[0].out_features == 16
    for report in reports:
        assert report.recovery.steps == 40 and report.recovery.heldout_best < report.recovery.heldout_before
        assert report.notes[-1].startswith("recovered by distillation: 40 steps, held-out loss")
    with pytest.raises(gp.PlanError, match="recover= trains on data"):
        gp.prune_iterative(_mlp(), (data[0],), ratio=0.5, steps=2, recover=True)


def _cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphprune", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_recover_steps(tmp_path):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_0=np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32))
    out = tmp_path / "slim.pt"
    r = _cli("prune", "resnet18", "-o", str(out), "--calib", str(calib), "--ratio", "0.5", "--round-to", "1",
             "--importance", "l2", "--allocation", "uniform", "--no-compensate", "--no-verify", "--no-latency",
             "--recover-steps", "6", "--recover-lr", "3e-4", "--recover-time", "120", "--json")
    assert r.returncode == 0, r.stderr
    assert "[3/4] recovering: 6 steps" in r.stderr and out.exists()
    note = next(n for n in json.loads(r.stdout)["notes"] if n.startswith("recovered by distillation: 6 steps"))
    assert "(lr 0.0003;" in note, note  # the rate given, not the default
    assert json.loads(r.stdout)["recovery"]["steps"] == 6  # in report.json as data, not only as a note
    before, after = map(float, re.search(r"held-out loss (\S+) -> (\S+) ", note).groups())
    assert after <= before

    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"")  # refused before it is read
    r = _cli("prune", str(onnx), "-o", str(tmp_path / "slim.onnx"), "--recover-steps", "5")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and not (tmp_path / "slim.onnx").exists()
    assert "--recover-steps trains a PyTorch model" in r.stderr
    r = _cli("prune", "resnet18", "-o", str(tmp_path / "x.pt"), "--recover-steps", "5")
    assert r.returncode == 2 and "give --calib" in r.stderr
    r = _cli("prune", "resnet18", "-o", str(tmp_path / "x.pt"), "--recover-lr", "1e-4")
    assert r.returncode == 2 and "apply with --recover-steps N" in r.stderr


def test_cli_recover_blockwise(tmp_path):
    """--recover-blockwise trains ResNet-18's residual blocks alone first (the outermost blocks: not the
    downsampling Sequential inside three of them); report.json says what each block gained."""
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_0=np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32))
    r = _cli("prune", "resnet18", "-o", str(tmp_path / "slim.pt"), "--calib", str(calib), "--ratio", "0.5",
             "--round-to", "1", "--no-verify", "--no-latency", "--recover-steps", "8", "--recover-blockwise", "--json")
    assert r.returncode == 0, r.stderr
    blocks = json.loads(r.stdout)["recovery"]["blocks"]
    assert [b["block"] for b in blocks["trained"]] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert all(b["steps"] == 4 and b["lr"] in (1e-3, 1e-4) for b in blocks["trained"])  # half of 8 each, rate probed
    assert blocks["tail"]["steps"] == 2  # the classifier after layer4: a quarter
    rec = json.loads(r.stdout)["recovery"]  # the rest, end to end (all 8 where the stage was undone)
    assert rec["steps"] == (8 if blocks["undone"] else 2) or (rec["reason"] == "patience" and rec["steps"] < 8)
