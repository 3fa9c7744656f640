"""The rows sensitivity is measured on (allocate.sample) and how a variant's output is compared
(scoring.output_errors: squared error or KL), on a stand-in program whose outputs are known."""
from __future__ import annotations

import math

import numpy as np
import pytest

import graphprune.planning.allocate as allocate
import graphprune.planning.scoring as scoring
from graphprune.planning.allocate import sample


class Program:
    """Batches are dicts: ``kind`` (a label per item), ``logits`` (items x classes). A variant
    ``(masks, {"shift": s})`` adds ``s`` to every logit row; ``cuts`` False: batches cannot be cut."""

    def __init__(self, rows_per_item: int = 1, cuts: bool = True) -> None:
        self.per_item, self.cuts = rows_per_item, cuts

    def rows(self, batch) -> int:
        return len(batch["kind"]) * self.per_item

    def first_input(self, batch):
        return (len(batch["kind"]),), True

    def scored_outputs(self):
        return None  # every output floating

    def valid_rows(self, batch):
        return None

    def take(self, batch, items):
        if not self.cuts:
            return None
        return {"kind": [k for k, m in zip(batch["kind"], items) if m], "logits": batch["logits"][items]}

    def run_variants(self, batches, variants):
        for v, (_, over) in enumerate(variants):
            for k, b in enumerate(batches):
                yield v, k, [b["logits"] + np.asarray(over.get("shift", 0.0))]


def batches(kinds: list[str], items: int = 8, classes: int = 2) -> list[dict]:
    return [{"kind": [k] * items, "logits": np.zeros((items, classes))} for k in kinds]


def test_sample_takes_the_first_batches_by_default():
    data = batches(["user"] * 2 + ["sampled"] * 14)
    assert allocate.SPREAD is False
    used, rows = sample(Program(rows_per_item=16), data, limit=8 * 16)
    assert used == data[:1] and rows == 8 * 16


def test_sample_spreads_over_every_kind_of_batch(monkeypatch):
    # a user's text first, then text the model sampled: 2 + 14 batches of 8 items, 16 rows each
    monkeypatch.setattr(allocate, "SPREAD", True)
    data = batches(["user"] * 2 + ["sampled"] * 14)
    used, rows = sample(Program(rows_per_item=16), data, limit=8 * 16)
    kinds = [k for b in used for k in b["kind"]]
    assert rows == 8 * 16 and len(kinds) == 8
    assert set(kinds) == {"user", "sampled"}  # the first batch alone would be the user's text only
    assert used[0]["kind"] == ["user"] and used[-1]["kind"] == ["sampled"]


def test_sample_picks_the_same_items_however_they_are_batched(monkeypatch):
    monkeypatch.setattr(allocate, "SPREAD", True)
    # 64 numbered items: four batches of 16, or ragged batches of 5, 11, 16 and 32
    def cut(sizes):
        out, start = [], 0
        for n in sizes:
            out.append({"kind": list(range(start, start + n)), "logits": np.zeros((n, 2))})
            start += n
        return out

    fixed, _ = sample(Program(rows_per_item=4), cut([16, 16, 16, 16]), limit=40)
    ragged, _ = sample(Program(rows_per_item=4), cut([5, 11, 16, 32]), limit=40)
    ids = [k for b in fixed for k in b["kind"]]
    assert ids == [k for b in ragged for k in b["kind"]]
    assert len(ids) == 10 and ids[0] == 0 and ids[-1] == 63  # evenly spaced over all 64, both ends


def test_sample_takes_everything_under_the_limit_and_whole_batches_where_it_cannot_cut(monkeypatch):
    monkeypatch.setattr(allocate, "SPREAD", True)
    data = batches(["a", "b", "c"])
    used, rows = sample(Program(), data, limit=100)
    assert used == data and rows == 24
    used, rows = sample(Program(cuts=False), data, limit=10)
    assert used == data[:1] and rows == 8  # at least one whole batch, the first


def test_kl_divergence_per_row_matches_a_hand_derived_value(monkeypatch):
    # original logits (0, 0): p = (1/2, 1/2); shifted by (ln 3, 0): q = (3/4, 1/4)
    # KL(p || q) = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(4/3) per row
    data = batches(["a", "b"], items=3)
    variants = [({}, {}), ({}, {"shift": [math.log(3.0), 0.0]})]
    monkeypatch.setattr(scoring, "DIVERGENCE", "kl")
    err = scoring.output_errors(Program(), data, variants, "test")
    assert err[0] == pytest.approx(0.0, abs=1e-12)
    assert err[1] == pytest.approx(0.5 * math.log(4 / 3), rel=1e-9)


def test_default_divergence_is_squared_error_relative_to_the_output_energy():
    # logits all 1 over 2 batches x 3 items x 2 classes: energy 12; the shift adds ln(3)^2 per row
    data = [{**b, "logits": b["logits"] + 1.0} for b in batches(["a", "b"], items=3)]
    err = scoring.output_errors(Program(), data, [({}, {"shift": [math.log(3.0), 0.0]})], "test")
    assert scoring.DIVERGENCE == "mse"
    assert err[0] == pytest.approx(6 * math.log(3.0) ** 2 / 12, rel=1e-9)


def test_an_integer_output_does_not_weigh_the_errors(tmp_path):
    """A model that hands back its token ids (a MiniLM export does) put values in the thousands into
    the output energy every variant's error is divided by: block removal's errors read 1e-7 where the
    embedding lost a quarter of its cosine. Only floating outputs are scored."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from graphprune.planning.scoring import output_energy
    from graphprune.program.onnx_program import OnnxProgram

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("Identity", ["ids"], ["ids_out"], name="echo")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8]),
                     helper.make_tensor_value_info("ids", TensorProto.INT64, [4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3]),
         helper.make_tensor_value_info("ids_out", TensorProto.INT64, [4, 8])],
        [numpy_helper.from_array(rng.standard_normal((8, 3)).astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "echo.onnx"))
    feeds = {"x": rng.standard_normal((4, 8)).astype(np.float32), "ids": rng.integers(1000, 30000, (4, 8))}
    program = OnnxProgram.load(tmp_path / "echo.onnx", feeds)
    assert program.scored_outputs() == [True, False]
    y = feeds["x"].astype(np.float64) @ numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    assert output_energy(program, [feeds]) == pytest.approx(float(np.square(y).sum()), rel=1e-5)
