"""What writing a Split of a convolution's output as one convolution per piece gains in onnxruntime
(graphprune/frontends/onnx_split_conv.py; docs/runtime.md, "Splits written as convolutions").

For each corpus model with such a Split, times the file rewritten as the default call rewrites it
against the same rewrites without this one, nothing pruned, at batch 1 and 8 and one and two
threads (the median of three fresh sessions, as tools/bench_runtime.py times).

    .venv/bin/python tools/diag_split.py [--models nudenet_320n layout_cdla] [--json docs/data/split_conv.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_runtime as br  # noqa: E402

import graphprune.frontends.onnx_runtime_rewrites as rewrites  # noqa: E402
from graphprune.frontends.onnx_lower import load_model  # noqa: E402


def both(src: Path, tmp: Path) -> tuple[Path, Path, int]:
    """(rewritten without the split pass, rewritten with it, Splits it rewrote)."""
    given = load_model(str(src))
    with_split = copy.deepcopy(given)
    n = len(rewrites.rewrite_for_onnxruntime(with_split).split_conv)
    real = rewrites.split_conv_pieces
    rewrites.split_conv_pieces = lambda model: []  # the same passes, this one left out
    try:
        without = copy.deepcopy(given)
        rewrites.rewrite_for_onnxruntime(without)
    finally:
        rewrites.split_conv_pieces = real
    paths = tmp / f"{src.stem}-without.onnx", tmp / f"{src.stem}-with.onnx"
    onnx.save(without, str(paths[0]))
    onnx.save(with_split, str(paths[1]))
    return paths[0], paths[1], n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="*", default=None)
    p.add_argument("--json", type=Path, default=None)
    ns = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for name, (src, shapes) in br.corpus_models().items():
            if ns.models and name not in ns.models:
                continue
            without, with_split, n = both(src, Path(tmpdir))
            if not n:
                continue
            row = {"model": name, "splits": n}
            for batch in (1, 8):
                feeds = br.feeds_for(without, batch, shapes)
                for threads in (1, 2):
                    if feeds is None:
                        continue
                    ms = br.timed([without, with_split], feeds, threads)
                    row[f"b{batch} t{threads}"] = {"without_ms": ms[0], "with_ms": ms[1], "speedup": ms[0] / ms[1]}
            rows.append(row)
            print(json.dumps(row), flush=True)
    if ns.json:
        ns.json.write_text(json.dumps(rows, indent=1))
    cells = ("b1 t1", "b1 t2", "b8 t1", "b8 t2")
    print("| model | Splits rewritten | " + " | ".join(cells) + " |\n|---|---|" + "---|" * len(cells))
    for r in rows:
        print(f"| {r['model']} | {r['splits']} | " + " | ".join(
            f"{r[c]['without_ms']:.2f} -> {r[c]['with_ms']:.2f} ms ({r[c]['speedup']:.2f}x)" if c in r else "static batch"
            for c in cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
