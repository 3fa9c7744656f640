"""``graphprune.hf.prune(..., recover=)``: the pruned LLM distilled from a copy of the original."""
from __future__ import annotations

import importlib

import pytest
import torch
from helpers import small_llama

import graphprune as gp
from graphprune.errors import PlanError
from graphprune.hf.choose import DISTIL_COPIES

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
    ask = dict(steps=5, seed=0, holdout=0)  # nothing held out: the weights of step 5, never step 0's restored
    model, report = gp.hf.prune(_llama(), calib=calib, generated=6, recover=ask, **OPTS)
    (teacher, kw), = seen
    for (k, a), b in zip(teacher.state_dict().items(), original.state_dict().values()):
        assert torch.equal(a, b), k  # the teacher is the model before pruning
    assert len(kw["data"]) == len(calib) + 3  # the 4 given, then 6 sampled sequences in 3 batches of 2
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(kw["data"], calib))
    assert report.recovery.steps == 5 and report.notes[-1].startswith("recovered by distillation: 5 steps")
    weights = report.memory.estimate.part("weights")  # the teacher and AdamW's buffers counted, as the CLI does
    assert report.memory.estimate.part("teacher copy") == weights > 0
    assert report.memory.estimate.part("distillation") == DISTIL_COPIES * weights
    assert model.model.layers[0].mlp.up_proj.out_features == 32
    plain, _ = gp.hf.prune(_llama(), calib=calib, generated=6, **OPTS)
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values()))
    again, _ = gp.hf.prune(_llama(), calib=calib, generated=6, recover=ask, **OPTS)
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k  # seeded: the same call, the same weights


def test_recover_true_or_empty_trains_and_false_or_none_does_not(monkeypatch):
    module = importlib.import_module("graphprune.hf.pretrained")
    real, calls = module.distill, []
    monkeypatch.setattr(module, "distill", lambda m, t, **kw: calls.append(kw) or real(m, t, **kw))
    calib = _calib(6)
    for arg in (True, {}):
        _, report = gp.hf.prune(_llama(), calib=calib, generated=0, recover=arg, **OPTS)
        assert report.recovery is not None and calls.pop()["data"] == calib
    for arg in (False, None):
        _, report = gp.hf.prune(_llama(), calib=calib, generated=0, recover=arg, **OPTS)
        assert report.recovery is None
    assert not calls


@pytest.mark.parametrize("arg, match", [(dict(time=600), "unexpected keyword argument 'time'"),
                                        (dict(steps=0), "steps=0 is out of range"), ("yes", "takes True or a dict")])
def test_a_bad_recover_is_refused_before_the_model_is_touched(arg, match):
    model, original = _llama(), _llama()
    with pytest.raises(PlanError, match=match):
        gp.hf.prune(model, calib=_calib(), generated=2, recover=arg, **OPTS)
    for (k, a), b in zip(model.state_dict().items(), original.state_dict().values()):
        assert torch.equal(a, b), k  # not pruned, nothing sampled into it


def test_half_precision_weights_are_refused_and_data_is_needed(tmp_path):
    model = _llama().to(torch.bfloat16)
    with pytest.raises(PlanError, match="float32"):
        gp.hf.prune(model, calib=_calib(), generated=0, recover=True, **OPTS)
    assert model.model.layers[0].mlp.up_proj.out_features == 64
    with pytest.raises(PlanError, match="recover= trains on data"):
        gp.hf.prune(_llama(), generated=0, recover=True, **OPTS)
    _llama().save_pretrained(tmp_path / "src")
    with pytest.raises(PlanError, match="streamed prune"):
        gp.hf.prune(tmp_path / "src", out=tmp_path / "out", recover=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_the_memory_estimate_counts_the_teacher_and_the_training_buffers():
    from graphprune.hf.choose import DISTIL_COPIES, estimate_in_memory
    from graphprune.options import PruneOptions

    model = _llama()
    opts = PruneOptions.of(None, ratio=0.5, calib=_calib())
    plain, distil = estimate_in_memory(model, opts), estimate_in_memory(model, opts, copies=1)
    weights = plain.part("weights")
    assert weights >= sum(p.numel() * 4 for p in model.parameters())  # float32, tied embeddings counted once
    # the teacher lives through the prune; the gradients, AdamW's two moments and the best weights after it
    assert distil.phase_bytes("calibrate") - plain.phase_bytes("calibrate") == weights
    assert distil.phase_bytes("apply") - plain.phase_bytes("apply") == (1 + DISTIL_COPIES) * weights


def test_recover_that_would_not_fit_is_refused_before_the_teacher_is_copied():
    from graphprune.hf.choose import DISTIL_COPIES

    model = _llama()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with pytest.raises(PlanError, match="recover= needs about"):  # the model, the teacher and the buffers
        gp.hf.prune(model, calib=_calib(), generated=0, recover=True, max_memory=(2 + DISTIL_COPIES) * weights - 1,
                    **OPTS)
    assert model.model.layers[0].mlp.up_proj.out_features == 64
