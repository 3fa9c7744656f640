"""Graph networks from torch_geometric (the real library, random weights: models/pyg_nets.py) under the
default call: message passing's scatters carry the feature dim (graphprune/rules/scatter.py). Before,
every width of GCN and GAT was frozen and the call refused."""
from __future__ import annotations

import pytest
import torch

import graphprune as gp

pytest.importorskip("torch_geometric", reason="torch_geometric is in the test extra; this environment lacks it")
from graphprune.zoo import pyg_nets as Z  # noqa: E402


@pytest.mark.parametrize("name", ["gcn", "gat", "transformer", "models.graphsage"])
def test_a_graph_network_prunes_by_default_and_runs_on_another_graph(name):
    args = Z.inputs()
    model, report = gp.prune(Z.build(name), args, budget={"macs": 0.7}, verify=True)
    assert report.oracle.verdict == "PASS" and report.macs_after <= 0.7 * report.macs_before
    assert report.params_after < report.params_before
    other = Z.inputs(seed=3, nodes=70, edges=300)
    with torch.no_grad():
        assert model(*other).shape == Z.build(name)(*other).shape == (70, Z.CLASSES)


def test_a_pruned_gcn_exports_with_a_dynamic_edge_count(tmp_path):
    args = Z.inputs()
    model, _ = gp.prune(Z.build("gcn"), args, budget={"macs": 0.7})
    report = gp.export_onnx(model, args, tmp_path / "gcn.onnx", dynamic={1: {1: "edges"}})
    assert report.max_abs_diff < 1e-5
    import onnxruntime as ort

    x, edges = Z.inputs(seed=3, nodes=70, edges=300)
    sess = ort.InferenceSession(str(tmp_path / "gcn.onnx"))
    feeds = dict(zip([i.name for i in sess.get_inputs()], [x.numpy(), edges.numpy()]))
    got = sess.run(None, feeds)[0]
    with torch.no_grad():
        assert abs(got - model(x, edges).numpy()).max() < 1e-4
