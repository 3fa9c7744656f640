"""docs/benchmarks.md shows the figures stored in docs/data/, as tools/bench_docs.py renders them."""
import json
from pathlib import Path

import pytest
from helpers import tool

ROOT = Path(__file__).resolve().parents[1]


def _bench_docs():
    return tool("bench_docs")


def test_benchmark_tables_are_the_stored_measurements():
    bd = _bench_docs()
    doc = (ROOT / "docs" / "benchmarks.md").read_text()
    dates = json.loads((ROOT / "docs" / "data" / "dates.json").read_text())
    rendered = doc
    for name in bd.SECTIONS:
        rendered = bd.render(rendered, name, dates[name])
    assert rendered == doc, "docs/benchmarks.md differs from docs/data/: run tools/bench_docs.py --from-json"
    # a row of the speed table, derived by hand from the stored medians
    speed = json.loads((ROOT / "docs" / "data" / "speed.json").read_text())["resnet50"]
    g, t = speed["graphprune"]["seconds"], speed["torch-pruning"]["seconds"]
    assert f"| ResNet-50 | {g:.2f} s | {t:.2f} s | {g / t:.2f}x |" in doc


def test_render_needs_the_markers_once():
    bd = _bench_docs()
    with pytest.raises(SystemExit, match="table:speed"):
        bd.render("# no markers here\n", "speed", "2026-01-01")
