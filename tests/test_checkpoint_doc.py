"""graphprune.json (graphprune/io/checkpoint_doc.py): a document round-trips, files in the
formats graphprune wrote before still load, a plan that no longer fits is refused by name,
and a model pruned twice reloads with the same outputs."""
from __future__ import annotations

import json
import sys

import pytest
import torch

import graphprune as gp
from graphprune.errors import PlanError
from graphprune.io.checkpoint_doc import PLAN_FILE, CheckpointDoc, PlanStep
from graphprune.io.module_checkpoint import load_pruned_module, save_pruned_module
from graphprune.planning.plan import PrunePlan

NET = '''
import torch
from torch import nn


def make():
    return nn.Sequential(nn.Linear(8, 32, bias=False), nn.ReLU(), nn.Linear(32, 32, bias=False), nn.ReLU(),
                         nn.Linear(32, 4))
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    """``ckpt_net:make`` importable, as a user's factory is, from the working folder."""
    (tmp_path / "ckpt_net.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("ckpt_net", None)
    torch.manual_seed(0)
    from ckpt_net import make

    return make().eval()


def _spec(t: torch.Tensor) -> dict:
    """An example input as graphprune has always written it (small integer tensors verbatim)."""
    item = {"shape": list(t.shape), "dtype": str(t.dtype).split(".")[-1]}
    if not t.is_floating_point():
        item["values"] = t.flatten().tolist()
    return item


def test_a_document_round_trips_through_json_unchanged():
    plans = [PrunePlan({3: [0, 5]}, {3: 16, 7: 8}), PrunePlan({7: [1]}, {3: 14, 7: 8}, ["add_1"])]
    module = CheckpointDoc([PlanStep(plans[0], ["0"]), PlanStep(plans[1])], recipe={"factory": "pkg.mod:make"},
                           args=[{"shape": [2, 8], "dtype": "float32"}], kwargs={"mask": _spec(torch.ones(2, 3))},
                           shapes={"0.weight": [14, 8], "0.bias": [14]})
    hf = CheckpointDoc([PlanStep(plans[0])], architecture="BertModel", original_config={"hidden_size": 32},
                       kwargs={"input_ids": _spec(torch.arange(6).reshape(1, 6))}, shapes={"w": [3]})
    for doc in (module, hf):
        text = json.dumps(doc.to_json())
        assert CheckpointDoc.from_json(json.loads(text)) == doc
    # the keys each kind has always had on disk; transformers documents repeat the last step
    assert set(module.to_json()) == {"format", "recipe", "args", "kwargs", "history", "shapes"}
    raw = hf.to_json()
    assert set(raw) == {"format", "architecture", "original_config", "inputs", "history", "plan", "added_biases",
                        "shapes"}
    assert raw["plan"] == plans[0].to_json() and raw["added_biases"] == []


def test_a_module_folder_written_by_hand_in_the_current_format_loads(factory, tmp_path):
    from safetensors.torch import save_model

    x = torch.randn(3, 8)
    pruned, report = gp.prune(factory, (x,), ratio=0.5, round_to=1)
    folder = tmp_path / "saved"
    folder.mkdir()
    save_model(pruned, str(folder / "model.safetensors"))
    doc = {"format": 1, "recipe": {"factory": "ckpt_net:make"}, "args": [_spec(x)], "kwargs": {},
           "history": [{"plan": report.plan.to_json(), "added_biases": []}],
           "shapes": {n: list(t.shape) for n, t in pruned.state_dict().items()}}
    (folder / PLAN_FILE).write_text(json.dumps(doc, sort_keys=True, indent=1))
    again, args, kwargs = load_pruned_module(folder)
    assert args[0].shape == (3, 8) and kwargs == {}
    with torch.no_grad():
        assert torch.equal(again(x), pruned(x))


def test_a_transformers_folder_from_before_histories_loads_as_one_step(tmp_path):
    pytest.importorskip("transformers")
    from graphprune.zoo import hf as H

    model = gp.hf.prepare(H.build("bert"))
    inputs = gp.hf.example_inputs(model)
    original = model.config.to_dict()
    model, report = gp.hf.prune(model, inputs, ratio=0.25, targets=("heads",))
    model.save_pretrained(tmp_path)
    # the document graphprune.hf.save_pruned wrote before it kept a history: one plan, no "history"
    doc = {"format": 1, "architecture": type(model).__name__, "original_config": original,
           "plan": report.plan.to_json(), "added_biases": [], "inputs": {k: _spec(v) for k, v in inputs.items()},
           "shapes": {n: list(t.shape) for n, t in model.state_dict().items()}}
    (tmp_path / PLAN_FILE).write_text(json.dumps(doc, sort_keys=True))
    assert len(CheckpointDoc.read(tmp_path).history) == 1
    loaded = gp.load_pruned(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).last_hidden_state, model(**inputs).last_hidden_state)


def test_a_plan_that_no_longer_fits_is_refused_naming_the_group(factory, tmp_path):
    x = torch.randn(3, 8)
    pruned, report = gp.prune(factory, (x,), ratio=0.5, round_to=1)
    save_pruned_module(pruned, tmp_path / "saved", {"factory": "ckpt_net:make"}, [report.plan], (x,))
    path = tmp_path / "saved" / PLAN_FILE
    doc = json.loads(path.read_text())
    plan = json.loads(doc["history"][0]["plan"])
    gid = sorted(plan["sizes"])[0]
    size = plan["sizes"][gid]
    plan["sizes"][gid] = size + 1  # the model the recipe builds now has another width there
    doc["history"][0]["plan"] = json.dumps(plan)
    path.write_text(json.dumps(doc))
    with pytest.raises(PlanError, match=f"group {gid} of size {size + 1} is missing"):
        load_pruned_module(tmp_path / "saved")


def test_a_model_pruned_twice_with_a_new_bias_reloads_with_equal_outputs(factory, tmp_path):
    x = torch.randn(4, 8)
    calib = [(torch.randn(16, 8),) for _ in range(2)]
    once, first = gp.prune(factory, (x,), ratio=0.25, round_to=1, calib=calib, add_bias=True, allocation="uniform")
    biased = sorted(first.compensation.bias_modules)
    assert biased and all(once.get_submodule(p).bias is not None for p in biased)
    twice, second = gp.prune(once, (x,), ratio=0.5, round_to=1)
    assert twice[2].out_features == 12  # 32 -> 24 -> 12: both steps cut the hidden layers
    # the first step keeps its own added biases; the last plan's (none here) come as added_biases
    save_pruned_module(twice, tmp_path / "saved", {"factory": "ckpt_net:make"},
                       [PlanStep(first.plan, biased), second.plan], (x,))
    assert [len(s.history) for s in [CheckpointDoc.read(tmp_path / "saved")]] == [2]
    again, args, _ = load_pruned_module(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(again(args[0]), twice(args[0])) and torch.equal(again(x), twice(x))
