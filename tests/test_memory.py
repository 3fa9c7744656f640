"""The prune's memory: estimated from the IR before calibration (planning/memory.py), refused
above max_memory, and the measured peak in the report."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import graphprune as gp
from graphprune.cli.main import main as cli_main
from graphprune.errors import PlanError
from graphprune.ir import Graph, Node, Ref, Value
from graphprune.options import PruneOptions
from graphprune.planning.memory import live_peak


class Net(nn.Module):
    """Known widths: conv 3->4 (3x3), conv 4->6 (3x3), mean over space, linear 6->8, linear 8->2."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 6, 3, padding=1)
        self.l1, self.l2 = nn.Linear(6, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.c2(torch.relu(self.c1(x)))).mean((2, 3))
        return self.l2(torch.relu(self.l1(h)))


def _prune(images: int = 2, **kw):
    torch.manual_seed(0)
    model = Net().eval()
    x = torch.randn(1, 3, 8, 8)
    calib = [(torch.randn(images, 3, 8, 8),) for _ in range(2)]
    kw = {"ratio": 0.25, "calib": calib, "importance": "obs", "allocation": "uniform", "round_to": 1,
          "measure_latency": False, **kw}
    return gp.prune(model, (x,), **kw)


def test_gram_part_is_features_squared_per_fold():
    _, report = _prune()
    est = report.memory.estimate
    # the prunable groups are c1's 4 and c2's 6 output channels and l1's 8 outputs; the sites reading them
    # are c2 (4 channels x a 3x3 window), l1 (6) and l2 (8): each keeps two float64 folds of its
    # (features + 1)^2 Gram, and a float64 sum and sum of squares per input channel
    features = [4 * 9, 6, 8]
    grams = sum(2 * 8 * (f + 1) ** 2 for f in features)
    channel_sums = 2 * 8 * (4 + 6 + 8)
    assert est.part("calibration statistics") == grams + channel_sums


def test_row_space_sites_count_their_samples_not_grams(monkeypatch):
    from graphprune.calib import sites

    monkeypatch.setattr(sites, "ROUTE", "rows")  # every site keeps its samples (calib/rowspace.py)
    _, report = _prune()
    est = report.memory.estimate
    # two batches of 2 images: c2 sees 2 x 2 x 8 x 8 = 256 positions of 4 x 9 + 1 features; l1 and l2
    # one row per image (after the spatial mean), 4 rows of 6 + 1 and 8 + 1; float32 samples
    samples = 4 * (256 * 37 + 4 * 7 + 4 * 9)
    assert est.part("calibration statistics") == samples + 2 * 8 * (4 + 6 + 8)
    assert "as their float32 samples" in str(est)


def test_too_small_max_memory_is_refused_naming_the_largest_part():
    # 512 images of 8x8: c2's unfolded 3x3 patches (512*64 rows of 37 features, three float32 copies) dwarf
    # the model's weights (a few KiB) and its Grams (24 KiB)
    with pytest.raises(PlanError) as exc:
        _prune(images=512, max_memory="100KB")
    text = str(exc.value)
    assert "largest part is activations" in text and "calibration batch" in text
    assert "more than max_memory (97.66 KiB)" in text  # 100 KB = 100 000 bytes


def test_report_carries_the_measured_peak():
    _, report = _prune(max_memory="4GiB")
    mem = report.memory
    assert mem.peak_rss > 0 and mem.peak_rss >= mem.start_rss > 0
    d = report.to_dict()["memory"]
    assert d["peak_rss"] == mem.peak_rss and d["estimate"]["total"] == mem.estimate.total
    assert "measured peak RSS" in str(report)


@pytest.mark.parametrize("given, expected", [("8GB", 8 * 10**9), ("512MiB", 512 * 2**20), ("16G", 16 * 2**30),
                                             ("1.5 GB", 1_500_000_000), (1234, 1234), ("2e9", 2 * 10**9)])
def test_max_memory_spellings(given, expected):
    assert PruneOptions.of(max_memory=given).max_memory == expected


@pytest.mark.parametrize("bad", ["eight", "8XB", "-1GB", "", 0, -5, True, [8], "GB"])
def test_bad_max_memory_is_refused(bad):
    with pytest.raises(PlanError, match="max_memory"):
        PruneOptions.of(max_memory=bad)


def test_cli_refuses_a_bad_max_memory_before_loading(capsys):
    with pytest.raises(SystemExit) as exc:
        cli_main(["prune", "no-such-model", "-o", "out.pt", "--max-memory", "lots"])
    assert exc.value.code == 2 and "--max-memory" in capsys.readouterr().err


def test_live_peak_on_a_hand_built_graph():
    # x -> y = relu(x) -> z = neg(y) -> out = z + x: y dies after z is made, x lives to the end.
    # Live bytes (float32, 10 elements = 40 B each): x+y = 80, x+y+z = 120, then x+z+out = 120
    g = Graph(frontend="torch")
    for name in ("x", "y", "z", "out"):
        g.add_value(Value(name, (1, 10), "float32", "input" if name == "x" else "act"))
    g.inputs, g.outputs = ["x"], ["out"]
    g.nodes = [Node("n1", "aten.relu", (Ref("x"),), {}, ["y"]), Node("n2", "aten.neg", (Ref("y"),), {}, ["z"]),
               Node("n3", "aten.add", (Ref("z"), Ref("x")), {}, ["out"])]
    assert live_peak(g) == 120


def test_weight_updates_count_the_heldout_checks_two_refits():
    # c2, l1 and l2 read pruned channels and are refit: float32 updates at their full shapes, held once by
    # the final refit and twice more while the held-out check refits each half
    model = Net()
    refit = 4 * sum(m.weight.numel() for m in (model.c2, model.l1, model.l2))
    _, checked = _prune(compensate=True)
    _, unchecked = _prune(compensate=True, heldout_check=False)
    assert unchecked.memory.estimate.part("weight updates") == refit
    assert checked.memory.estimate.part("weight updates") == 3 * refit


def test_the_solver_advice_is_one_that_fits():
    """A site of 1,500 features: its refit's float64 squares dwarf everything else. The advice named
    compensate='bias', which solves from the same Grams and was refused again (a user's CREPE full)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 1500), nn.ReLU(), nn.Linear(1500, 4)).eval()
    calib = [(torch.randn(64, 8),) for _ in range(2)]
    kw = {"ratio": 0.25, "calib": calib, "allocation": "uniform", "round_to": 1, "measure_latency": False,
          "max_memory": "80MiB"}
    with pytest.raises(PlanError) as exc:
        gp.prune(model, (torch.randn(1, 8),), **kw)
    text = str(exc.value)
    assert "largest part is solver buffers" in text and "compensate='bias'" not in text
    assert "compensate=False (with importance='activation'" in text
    with pytest.raises(PlanError, match="largest part is solver buffers"):
        gp.prune(model, (torch.randn(1, 8),), compensate="bias", **kw)
    _, report = gp.prune(model, (torch.randn(1, 8),), compensate=False, importance="activation", **kw)
    assert report.params_after < report.params_before and report.memory.estimate.total < 80 * 2**20
