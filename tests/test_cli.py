"""The command line: the demo job and its errors."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphprune", *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_demo_prunes_exports_and_prints_table(tmp_path):
    out = tmp_path / "slim.onnx"
    r = _run("demo", "--model", "resnet18", "--config", "small", "--ratio", "0.5", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert out.exists() and out.stat().st_size > 0
    assert "params" in r.stdout and "MACs" in r.stdout and "oracle PASS" in r.stdout
    assert "[5/5]" in r.stdout  # progress is shown


def test_bad_ratio_exits_nonzero_without_output(tmp_path):
    out = tmp_path / "slim.onnx"
    r = _run("demo", "--config", "small", "--ratio", "1.5", "-o", str(out))
    assert r.returncode == 2
    assert "ratio must be a number in [0, 1)" in r.stderr
    assert not out.exists()


def test_unknown_model_is_a_clear_error():
    r = _run("inspect", "resnet9000")
    assert r.returncode == 2 and "MODEL 'resnet9000' is not an .onnx file" in r.stderr and "resnet18" in r.stderr


def test_inspect_prints_groups():
    r = _run("inspect", "llama")
    assert r.returncode == 0, r.stderr
    assert "outer" in r.stdout and "prunable" in r.stdout and "rows looked up by index" in r.stdout
