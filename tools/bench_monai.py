"""The MONAI suite: the default call on small random-init MONAI networks, as a table.

Every model is built at a small size in models/monai_nets.py; nothing is passed but the model and its
example input. Per model:

  macs      MACs after / before of ``graphprune.prune(model, (x,), budget={"macs": 0.7}, verify=True)``
            (runtime "auto": PyTorch eager here)
  oracle    the report's verdict (PASS, PARTIAL, NOT CHECKED, FAIL)
  kept      groups the rewrite could not carry, kept whole before planning again (planning/unreached.py)
  eager     the report's latency before -> after (ms, PyTorch eager at the example's shape) and the speedup
  other     the pruned model at batch 2 on another input: output shapes as the original's
  onnx      export_onnx of the pruned model: onnxruntime vs PyTorch, and whether the batch is dynamic
  twice     the same call on a fresh copy gives the same state dict, bit for bit

A failure is reported with its reason; the script never stops at one. MONAI (and einops, for its
attention) are in the test extra.

    .venv/bin/python tools/bench_monai.py                            # every model
    .venv/bin/python tools/bench_monai.py --only dynunet3d vit3d --json docs/data/monai.json
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
    import torch

    import graphprune as gp
    from graphprune.zoo import monai_nets as Z

    x = Z.inputs(name)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        model, report = gp.prune(Z.build(name), (x,), budget={"macs": 0.7}, verify=True)
    row["macs"] = f"{report.macs_after / report.macs_before:.3f}"
    row["oracle"] = report.oracle.verdict
    row["kept"] = sum(n.startswith("kept ") and "planned again" in n for n in report.notes)
    before, after = report.latency_before_ms, report.latency_after_ms
    row["eager"] = f"{before:.1f} -> {after:.1f} ({before / after:.2f}x)" if before and after else "-"
    row["stage"] = "other inputs"
    other = Z.inputs(name, seed=3, batch=2)
    with torch.no_grad():
        got, ref = model(other), Z.build(name)(other)
    shapes = lambda out: [t.shape for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    row["other"] = "ok" if shapes(got) == shapes(ref) else "FAIL"
    row["stage"] = "onnx"
    exported = gp.export_onnx(model, (x,), tmp / f"{name}.onnx")
    row["onnx"] = f"{exported.max_abs_diff:.1e}" + (" dynamic" if exported.dynamic_batch else " fixed batch")
    twice(row, model, report, lambda: gp.prune(Z.build(name), (x,), budget={"macs": 0.7}, verify=True)[0])


def main() -> None:
    from graphprune.zoo.monai_nets import MODELS

    cols = ["model", "macs", "oracle", "kept", "eager", "other", "onnx", "twice", "time"]
    suite_main(__doc__, MODELS, run_one, cols)


if __name__ == "__main__":
    main()
