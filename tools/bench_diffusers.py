"""The diffusion suite: the default call on tiny random-init diffusers models, as a table.

Every model is built from a tiny config in models/diffusion.py; nothing is passed but the model and its
example inputs. Per model:

  macs      MACs after / before of ``graphprune.prune(model, args, kwargs, budget={"macs": 0.7}, verify=True)``
            (runtime "auto": PyTorch eager here)
  oracle    the report's verdict (PASS, PARTIAL, NOT CHECKED, FAIL)
  cut       the kinds of the groups the plan cut
  kept      groups the rewrite could not carry, kept whole before planning again (planning/unreached.py)
  other     the pruned model on inputs of another seed at batch 2: output shapes as the original's
  onnx      export_onnx of the pruned model: onnxruntime vs PyTorch, and whether the batch is dynamic
  twice     the same call on a fresh copy gives the same state dict, bit for bit

A failure is reported with its reason; the script never stops at one.

    .venv/bin/python tools/bench_diffusers.py                         # every model
    .venv/bin/python tools/bench_diffusers.py --only unet2d sd3 --json docs/data/diffusers.json
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from json_rows import suite_main, suite_row, twice  # noqa: E402


def _batch2(args: tuple, kwargs: dict):
    import torch

    two = lambda t: torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == 1 else t
    return tuple(two(a) for a in args), {k: two(v) for k, v in kwargs.items()}


def _leaves(out):
    import torch

    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def run_one(name: str, tmp: Path) -> dict:
    return suite_row(name, lambda row: _fill(row, name, tmp))


def _fill(row: dict, name: str, tmp: Path) -> None:
    import torch

    import graphprune as gp
    from graphprune.zoo import diffusion as Z

    args, kwargs = Z.inputs(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model, report = gp.prune(Z.build(name), args, kwargs, budget={"macs": 0.7}, verify=True)
    row["macs"] = f"{report.macs_after / report.macs_before:.3f}"
    row["oracle"] = report.oracle.verdict
    row["cut"] = " ".join(sorted(set(report.kinds.values()))) or "-"
    row["kept"] = sum(n.startswith("kept ") and "planned again" in n for n in report.notes)
    row["warnings"] = len([w for w in caught if issubclass(w.category, gp.PruneWarning)])
    row["stage"] = "other inputs"
    other = _batch2(*Z.inputs(name, seed=3))
    with torch.no_grad():
        got, ref = model(*other[0], **other[1]), Z.build(name)(*other[0], **other[1])
    row["other"] = "ok" if [t.shape for t in _leaves(got)] == [t.shape for t in _leaves(ref)] else "FAIL"
    row["stage"] = "onnx"
    exported = gp.export_onnx(model, args, tmp / f"{name}.onnx", kwargs)
    row["onnx"] = f"{exported.max_abs_diff:.1e}" + (" dynamic" if exported.dynamic_batch else " fixed batch")
    twice(row, model, report, lambda: gp.prune(Z.build(name), args, kwargs, budget={"macs": 0.7})[0])


def main() -> None:
    from graphprune.zoo.diffusion import MODELS

    cols = ["model", "macs", "oracle", "cut", "kept", "warnings", "other", "onnx", "twice", "time"]
    suite_main(__doc__, MODELS, run_one, cols)


if __name__ == "__main__":
    main()
