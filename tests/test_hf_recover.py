"""``graphprune.hf.prune(..., recover=)``: the pruned LLM distilled from a copy of the original."""
from __future__ import annotations

import importlib

import pytest
import torch
from helpers import small_llama

import graphprune as gp
from graphprune.errors import PlanError

transformers = pytest.importorskip("transformers")


_llama = small_llama


def _calib(n: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(5)
    return [{"input_ids": torch.randint(0, 64, (2, 12), generator=g)} for _ in range(n)]


OPTS = dict(ratio=0.5, measure_latency=False, allocation="uniform")


def test_recover_distils_from_the_unpruned_original_on_the_calibration_and_generated_batches(monkeypatch):
    calib = _calib()
    original = _llama()
    module = importlib.import_module("graphprune.hf.pretrained")  # where hf.prune calls recover
    real, seen = module.distill, []
    monkeypatch.setattr(module, "distill", lambda m, t, **kw: seen.append((t, kw)) or real(m, t, **kw))
    model, report = gp.hf.prune(_llama(), calib=calib, generated=6, recover=dict(steps=5, seed=0), **OPTS)
    (teacher, kw), = seen
    for (k, a), b in zip(teacher.state_dict().items(), original.state_dict().values()):
        assert torch.equal(a, b), k  # the teacher is the model before pruning
    assert len(kw["data"]) == len(calib) + 3  # the 4 given, then 6 sampled sequences in 3 batches of 2
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(kw["data"], calib))
    assert report.recovery.steps == 5 and report.notes[-1].startswith("recovered by distillation: 5 steps")
    assert model.model.layers[0].mlp.up_proj.out_features == 32
    plain, _ = gp.hf.prune(_llama(), calib=calib, generated=6, **OPTS)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))
    again, _ = gp.hf.prune(_llama(), calib=calib, generated=6, recover=dict(steps=5, seed=0), **OPTS)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k  # seeded: the same call, the same weights


def test_recover_true_trains_on_the_calibration_batches_and_is_refused_without_data(tmp_path):
    model, report = gp.hf.prune(_llama(), calib=_calib(6), generated=0, recover=True, **OPTS)
    assert report.recovery is not None and report.recovery.steps > 0
    with pytest.raises(PlanError, match="recover= trains on data"):
        gp.hf.prune(_llama(), generated=0, recover=True, **OPTS)
    _llama().save_pretrained(tmp_path / "src")
    with pytest.raises(PlanError, match="streamed prune"):
        gp.hf.prune(tmp_path / "src", out=tmp_path / "out", recover=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
