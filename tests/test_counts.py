"""graphprune.count_macs / count_params on what a user holds (graphprune/api/counts.py): a user's
`count_macs(model, args)` raised AttributeError ("'ONet' object has no attribute 'nodes'")."""
from __future__ import annotations

import onnx
import pytest
import torch
from helpers import tiny_onnx_model

import graphprune as gp
from graphprune.errors import PlanError


def test_a_module_with_its_inputs_a_graph_and_an_onnx_file_are_counted(tmp_path):
    model, x = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)), torch.randn(2, 4)
    macs, params = 2 * (4 * 8 + 8 * 3), (4 * 8 + 8) + (8 * 3 + 3)  # by hand: batch 2, two layers with biases
    assert gp.count_macs(model, (x,)) == gp.count_macs(model, x) == macs and gp.count_params(model, (x,)) == params
    g = gp.trace(model, (x,))
    assert gp.count_macs(g) == gp.count_macs(g.ir) == macs
    onnx.save(tiny_onnx_model(), tmp_path / "t.onnx")  # Gemm 4 -> 8 -> 3, no biases, analysed at batch 1
    assert gp.count_macs(tmp_path / "t.onnx") == 4 * 8 + 8 * 3 and gp.count_params(str(tmp_path / "t.onnx")) == 56
    assert gp.count_macs(tiny_onnx_model()) == 4 * 8 + 8 * 3  # a ModelProto too
    assert gp.count_macs(model, {"input": x}) == macs  # keyword inputs as a dict (hf.example_inputs' form)
    with pytest.raises(PlanError, match="pass its example inputs"):
        gp.count_macs(model)
    with pytest.raises(PlanError, match="not list"):
        gp.count_params([1, 2])
