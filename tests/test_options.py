"""PruneOptions: one validated record of a prune's options, shared by every entry point."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphprune as gp
from graphprune.cli.main import main
from graphprune.options import PruneOptions


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3)).eval(), (torch.randn(2, 6),)


def test_unknown_option_is_refused_with_the_closest_name():
    with pytest.raises(gp.PlanError, match=r"unknown option 'ration'; did you mean 'ratio'\?"):
        PruneOptions.of(ration=0.5)
    model, args = _mlp()
    with pytest.raises(gp.PlanError, match="unknown option 'calibration'; did you mean 'calib'"):
        gp.prune(model, args, calibration=[args])


@pytest.mark.parametrize("bad, message", [
    ({"ratio": 1.0}, r"ratio must be a number in \[0, 1\)"),
    ({"round_to": 0}, "round_to must be 'auto'"),
    ({"round_to": True}, "round_to must be 'auto'"),
    ({"importance": "nope"}, "unknown importance 'nope'"),
    ({"compensate": "yes"}, "compensate must be True, False"),
    ({"compensate": True}, "compensation needs calibration data"),
    ({"allocation": "even"}, "allocation must be one of"),
    ({"runtime": "tensorrt"}, "runtime 'tensorrt' is not one graphprune measures on"),
    ({"max_ratio": 1.5}, r"max_ratio must be in \(0, 1\)"),
    ({"budget": "macs"}, "budget item 'macs' is not KEY=VALUE"),
    ({"uniform": 1}, "uniform must be True or False"),
    ({"uniform": True, "allocation": "global"}, "allocation='global' chooses them per layer"),
    ({"uniform": True, "targets": ("blocks",)}, "depth pruning"),
])
def test_every_option_is_checked_when_the_options_are_built(bad, message):
    with pytest.raises(gp.PlanError, match=message):
        PruneOptions.of(**bad)


def test_onnx_options_are_checked_before_the_file_is_read(tmp_path):
    # the file does not exist: the option error must come first, as no model load is needed to find it
    with pytest.raises(gp.PlanError, match="unknown importance"):
        gp.prune_onnx(tmp_path / "missing.onnx", tmp_path / "out.onnx", importance="nope")


def test_normal_forms():
    o = PruneOptions.of(targets="heads", ignore="fc", roles=["channel"], budget="macs=0.5,params=2e6",
                        max_ratio=None)
    assert o.targets == ("heads",) and o.ignore == ("fc",) and o.roles == ("channel",)
    assert o.budget == {"macs": 0.5, "params": 2e6}
    assert o.max_ratio == 0.9  # None is the entry points' spelling of the default
    assert o.latency_budget is False and PruneOptions.of(budget={"speedup": 2}).latency_budget is True
    with pytest.raises(AttributeError):  # frozen: an entry point cannot change what the caller asked
        o.ratio = 0.1


def test_entry_defaults_apply_only_where_the_caller_is_silent():
    onnx = {"ratio": 0.3, "verify": True}
    assert PruneOptions.of(defaults=onnx).ratio == 0.3
    assert PruneOptions.of(defaults=onnx, ratio=0.6).ratio == 0.6
    given = PruneOptions.of(ratio=0.2)
    assert PruneOptions.of(given, defaults=onnx).ratio == 0.2 and PruneOptions.of(given, defaults=onnx).verify is False
    assert given.replace(verify=True) == PruneOptions(ratio=0.2, verify=True)


def test_options_object_and_keywords_prune_alike():
    model, args = _mlp()
    a, ra = gp.prune(copy.deepcopy(model), args, ratio=0.5, importance="l1", round_to=1, measure_latency=False)
    b, rb = gp.prune(copy.deepcopy(model), args, options=PruneOptions(ratio=0.5, importance="l1", round_to=1,
                                                                      measure_latency=False))
    assert a[0].weight.shape == b[0].weight.shape == (8, 6)
    assert torch.equal(a[0].weight, b[0].weight) and torch.equal(a(*args), b(*args))
    assert ra.plan.pruned == rb.plan.pruned


def test_cli_refuses_a_bad_option_before_loading_the_model(tmp_path, capsys):
    # the model does not exist; the budget is malformed: the option is the error reported
    code = main(["prune", str(tmp_path / "nowhere.onnx"), "-o", str(tmp_path / "o.onnx"), "--budget", "macs"])
    assert code == 2
    assert "budget item 'macs' is not KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()
