"""The PyG suite: the default call on small random-init torch_geometric networks, as a table.

Every model is built in models/pyg_nets.py (two message-passing layers, or one of PyG's model classes);
nothing is passed but the model and its example graph (100 nodes, 400 edges, 32 features). Per model:

  macs      MACs after / before of ``graphprune.prune(model, (x, edge_index), budget={"macs": 0.7}, verify=True)``
  oracle    the report's verdict (PASS, PARTIAL, NOT CHECKED, FAIL)
  kept      groups the rewrite could not carry, kept whole before planning again (planning/unreached.py)
  params    parameters before -> after
  other     the pruned model on another graph (70 nodes, 300 edges): output shape as the original's
  onnx      export_onnx with the edge count dynamic (``dynamic={1: {1: "edges"}}``): onnxruntime vs PyTorch
  twice     the same call on a fresh copy gives the same state dict, bit for bit

A failure is reported with its reason; the script never stops at one. torch_geometric is in the test extra.

    .venv/bin/python tools/bench_pyg.py --json docs/data/pyg.json
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from json_rows import suite_main, suite_row, twice  # noqa: E402


def run_one(name: str, tmp: Path) -> dict:
    return suite_row(name, lambda row: _fill(row, name, tmp))


def _fill(row: dict, name: str, tmp: Path) -> None:
    import graphprune as gp
    from graphprune.zoo import pyg_nets as Z

    args = Z.inputs()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        model, report = gp.prune(Z.build(name), args, budget={"macs": 0.7}, verify=True)
    row["macs"] = f"{report.macs_after / report.macs_before:.3f}"
    row["oracle"] = report.oracle.verdict
    row["kept"] = sum(n.startswith("kept ") and "planned again" in n for n in report.notes)
    row["params"] = f"{report.params_before:,} -> {report.params_after:,}"
    row["stage"] = "other graph"
    other = Z.inputs(seed=3, nodes=70, edges=300)
    row["other"] = "ok" if model(*other).shape == Z.build(name)(*other).shape else "FAIL"
    row["stage"] = "onnx"
    try:
        exported = gp.export_onnx(model, args, tmp / f"{name}.onnx", dynamic={1: {1: "edges"}})
        row["onnx"] = f"{exported.max_abs_diff:.1e}"
    except gp.errors.GraphpruneError as exc:  # the exporter's own limits, said in the table
        row["onnx"] = "edges fixed: " + str(exc).split("(the exporter: ")[-1][:60] if "came out fixed" in str(exc) \
            else f"failed: {str(exc)[:80]}"
    twice(row, model, report, lambda: gp.prune(Z.build(name), args, budget={"macs": 0.7}, verify=True)[0])


def main() -> None:
    from graphprune.zoo.pyg_nets import MODELS

    cols = ["model", "macs", "oracle", "kept", "params", "other", "onnx", "twice", "time"]
    suite_main(__doc__, MODELS, run_one, cols)


if __name__ == "__main__":
    main()
