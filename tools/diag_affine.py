"""Upper bound of what PP-OCRv4 det's scalar affine ops cost in onnxruntime (docs/runtime.md, fourteenth pass).

Times the corpus file rewritten as the default call rewrites it *without* the scalar fold
(activations fused, subnormals zeroed) against the same file with Mul/Add-by-a-scalar ops simply
removed: ``--which all`` removes every such op (an upper bound, not the same function),
``--which conv`` only those reading a convolution's output directly or through another removed
one (what frontends/onnx_affine.py folds exactly).

    .venv/bin/python tools/diag_affine.py --which all
    .venv/bin/python tools/diag_affine.py --which conv
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import onnx
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_runtime as br  # noqa: E402

from graphprune.frontends.onnx_fuse import fuse_activations  # noqa: E402
from graphprune.frontends.onnx_lower import load_model  # noqa: E402
from graphprune.frontends.onnx_subnormal import flush_subnormal_weights  # noqa: E402


def _scalars(model: onnx.ModelProto) -> set[str]:
    arrays = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    arrays.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
                   if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    return {k for k, a in arrays.items() if a.size == 1}


def strip(model: onnx.ModelProto, only_after_conv: bool) -> int:
    """Remove Mul/Add ops with one scalar operand, in place (readers take the other operand); returns how many."""
    scalars, producer = _scalars(model), {o: n for n in model.graph.node for o in n.output}
    rename: dict[str, str] = {}
    keep, removed = [], 0
    for n in model.graph.node:
        n.input[:] = [rename.get(i, i) for i in n.input]
        if n.op_type in ("Mul", "Add") and len(n.input) == 2 and (n.input[0] in scalars) != (n.input[1] in scalars):
            x = n.input[1] if n.input[0] in scalars else n.input[0]
            if not only_after_conv or producer.get(x) is not None and producer[x].op_type == "Conv":
                rename[n.output[0]] = x
                producer[n.output[0]] = producer.get(x)  # a chain Conv -> Mul -> Add counts as after the conv
                removed += 1
                continue
        keep.append(n)
    assert not {o.name for o in model.graph.output} & set(rename), "a removed op gives a graph output"
    del model.graph.node[:]
    model.graph.node.extend(keep)
    return removed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="ppocr_det_v4")
    p.add_argument("--which", choices=("all", "conv"), default="all")
    ns = p.parse_args()
    src, shapes = br.corpus_models()[ns.model]
    base = load_model(src)
    fuse_activations(base)
    flush_subnormal_weights(base)
    stripped = onnx.ModelProto.FromString(base.SerializeToString())
    n = strip(stripped, ns.which == "conv")
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "base.onnx", Path(tmp) / "stripped.onnx"
        onnx.save(base, str(a))
        onnx.save(stripped, str(b))
        print(f"{ns.model}: {n} scalar Mul/Add removed ({ns.which})")
        for threads in (1, 2):
            ms = br.timed([a, b], br.feeds_for(src, 1, shapes), threads)
            print(f"b1 t{threads}: rewritten {ms[0]:.2f} ms, removed {ms[1]:.2f} ms: {ms[0] / ms[1]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
