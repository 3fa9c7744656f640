"""Time ``Transpose(perm) -> Softmax(axis)`` against the softmax moved ahead of the transpose,
for every permutation and axis (ranks 2 to 5) where frontends/onnx_softmax.py moves it (the axis
class gets cheaper) and, as a check on the rule, where it does not. One thread, onnxruntime, best of 5x10 runs.

    .venv/bin/python tools/bench_softmax.py --json docs/data/softmax.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from graphprune.planning.measure import ort_session  # noqa: E402

SHAPES = [(1, 4, 16, 2100), (8, 4, 16, 2100), (1, 64, 80, 80), (1, 21, 128, 128), (2, 8, 128, 64), (1, 16, 32, 32),
          (64, 16, 2100), (12, 197, 64), (4, 1000), (2, 4, 8, 16, 32)]


def _model(nodes, shape) -> bytes:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def _time(model: bytes, x: np.ndarray) -> tuple[float, np.ndarray]:
    sess = ort_session(model, 1)
    for _ in range(5):
        y = sess.run(None, {"x": x})[0]
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(10):
            sess.run(None, {"x": x})
        best = min(best, (time.perf_counter() - t) / 10)
    return best * 1e3, y


def _class(axis: int, rank: int) -> int:
    return 0 if axis == rank - 1 else 1 if axis == rank - 2 else 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--shapes", type=int, default=len(SHAPES), help="how many of the shapes to time")
    args = ap.parse_args(argv)
    rows = []
    print("| shape | perm | axis | moved to | rule moves it | as is (ms) | moved (ms) | speedup | identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for shape in SHAPES[:args.shapes]:
        x = rng.standard_normal(shape).astype(np.float32)
        rank = len(shape)
        for perm in itertools.permutations(range(rank)):
            if perm == tuple(range(rank)):
                continue
            for k in range(rank):
                if _class(perm[k], rank) == _class(k, rank):
                    continue  # the same class either way: nothing to learn
                a = _model([helper.make_node("Transpose", ["x"], ["t"], perm=list(perm)),
                            helper.make_node("Softmax", ["t"], ["y"], axis=k)], shape)
                b = _model([helper.make_node("Softmax", ["x"], ["s"], axis=perm[k]),
                            helper.make_node("Transpose", ["s"], ["y"], perm=list(perm))], shape)
                (ta, ya), (tb, yb) = _time(a, x), _time(b, x)
                row = dict(shape=list(shape), perm=list(perm), axis=k, to=perm[k],
                           moved_by_rule=_class(perm[k], rank) < _class(k, rank), as_is_ms=ta, moved_ms=tb,
                           speedup=ta / tb, identical=bool(np.array_equal(ya, yb)))
                rows.append(row)
                print(f"| {shape} | {perm} | {k} | {perm[k]} | {'yes' if row['moved_by_rule'] else 'no'} | "
                      f"{ta:.3f} | {tb:.3f} | {ta / tb:.2f}x | {row['identical']} |", flush=True)
    moved = [r["speedup"] for r in rows if r["moved_by_rule"]]
    kept = [r["speedup"] for r in rows if not r["moved_by_rule"]]
    print(f"\nmoved by the rule: {len(moved)} cases, {min(moved):.2f}x to {max(moved):.2f}x; "
          f"left by it: {len(kept)} cases, moving would give {min(kept):.2f}x to {max(kept):.2f}x; "
          f"all identical: {all(r['identical'] for r in rows)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
