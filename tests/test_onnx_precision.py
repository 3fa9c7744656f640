"""The oracle's tolerance follows an ONNX model's float precision (graphprune/program/onnx_precision.py),
and the CLI's --no-verify skips it for ONNX models as for PyTorch ones."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import tiny_onnx_model
from onnx import TensorProto, helper, numpy_helper

import graphprune as gp
from graphprune.program.onnx_precision import FLOAT32_ATOL, HALF_ATOL, half_precision

ROOT = Path(__file__).resolve().parents[1]


def _cnn(elem: int = TensorProto.FLOAT16) -> onnx.ModelProto:
    """Three 3x3 convolutions (4 -> 32 -> 32 -> 4) with ReLUs, weights and inputs in ``elem``: float16
    rounding of the inner values moves the outputs (all under 1) by more than 1e-4."""
    rng = np.random.default_rng(0)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
    widths = [4, 32, 32, 4]
    inits, nodes, x = [], [], "x"
    for k, (cin, cout) in enumerate(zip(widths, widths[1:])):
        gain = 3.0 if k < 2 else 0.1  # inner values reach ~10, outputs stay under 1: as slovorez's, judged absolutely
        w = rng.standard_normal((cout, cin, 3, 3)) * gain / np.sqrt(cin * 9)
        inits.append(numpy_helper.from_array(w.astype(dtype), f"w{k}"))
        nodes.append(helper.make_node("Conv", [x, f"w{k}"], [f"c{k}"], name=f"conv{k}", pads=[1, 1, 1, 1]))
        x = f"c{k}"
        if k < 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{k}"], name=f"relu{k}"))
            x = f"r{k}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, [1, 4, 16, 16])],
                              [helper.make_tensor_value_info("y", elem, [1, 4, 16, 16])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_half_precision_is_read_from_weights_and_outputs():
    assert half_precision(_cnn()) == "float16"
    assert half_precision(_cnn(TensorProto.FLOAT)) == ""
    assert half_precision(tiny_onnx_model()) == ""
    assert HALF_ATOL["float16"] > FLOAT32_ATOL and HALF_ATOL["bfloat16"] > HALF_ATOL["float16"]


def test_a_float16_model_is_held_to_a_float16_tolerance(tmp_path):
    """slovorez's float16 1-D CNN was refused by every call: its pruned outputs differ from the masked
    original's by one float16 step (2.44e-4), against the float32 tolerance of 1e-4."""
    onnx.save(_cnn(), str(tmp_path / "m.onnx"))
    rep = gp.prune_onnx(tmp_path / "m.onnx", tmp_path / "p.onnx", ratio=0.5, round_to=1, runtime=None)
    assert rep.oracle.verdict == "PASS" and rep.oracle.precision == "float16"
    assert rep.oracle.atol == HALF_ATOL["float16"] and "for a float16 model" in str(rep.oracle)
    assert rep.oracle.scaled_diff > FLOAT32_ATOL  # what the float32 tolerance refused
    assert (tmp_path / "p.onnx").exists() and rep.params_after < rep.params_before


def test_a_float32_model_keeps_the_float32_tolerance(tmp_path):
    onnx.save(_cnn(TensorProto.FLOAT), str(tmp_path / "m.onnx"))
    rep = gp.prune_onnx(tmp_path / "m.onnx", tmp_path / "p.onnx", ratio=0.5, round_to=1, runtime=None)
    assert rep.oracle.passed and rep.oracle.atol == FLOAT32_ATOL and rep.oracle.precision == ""
    assert "float16" not in str(rep.oracle)


@pytest.mark.parametrize("flag", [[], ["--no-verify"]])
def test_cli_no_verify_skips_the_oracle_for_an_onnx_model(flag, tmp_path):
    """--no-verify was accepted with an ONNX model and ignored: the oracle ran (and refused) anyway."""
    onnx.save(_cnn(TensorProto.FLOAT), str(tmp_path / "m.onnx"))
    r = subprocess.run([sys.executable, "-m", "graphprune", "prune", str(tmp_path / "m.onnx"), "-o",
                        str(tmp_path / "p.onnx"), "--ratio", "0.5", "--runtime", "none", "--json", *flag],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert bool(doc.get("oracle")) == (not flag), doc.get("oracle")
