"""The command line: the demo job and its errors."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert "latency (onnxruntime, 1 thread)" in r.stdout  # measured before/after on the runtime it exports for
    assert "best of runs at x 1x3x" in r.stdout  # at what input, named as ResNet.forward(x) names it


def test_installed_command_runs():
    """The ``graphprune`` command pip installs (README: ``G=.venv/bin/graphprune``) points at the
    CLI's main function, not at the package of the same name: every other test runs ``-m graphprune``."""
    from importlib.metadata import entry_points

    from graphprune.cli.main import main

    (script,) = entry_points(group="console_scripts", name="graphprune")
    assert script.load() is main
    exe = Path(sys.executable).with_name("graphprune")
    assert exe.is_file(), f"no {exe}: graphprune is not installed in this environment (make venv)"
    r = subprocess.run([str(exe), "zoo", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '"resnet18"' in r.stdout


def test_a_reader_that_leaves_early_gets_no_error(monkeypatch, capsys):
    """`graphprune zoo | head -1`: the pipe closing is the reader's choice, not a failure to report
    ("Broken pipe; nothing was written" was printed, which was also untrue)."""
    from graphprune.cli.main import main

    class Closed(io.StringIO):  # a stream without a file descriptor, as pytest's capture is
        def write(self, _):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", Closed())
    assert main(["zoo"]) == 1
    assert capsys.readouterr().err == ""


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
    assert "outer" in r.stdout and "rows looked up by index" in r.stdout
    # Llama small: 11 spaces, all but the vocabulary prunable (derived in tests/test_zoo.py)
    assert "\n11 groups, 10 prunable" in r.stdout


def test_tables_are_rich_on_a_terminal_and_plain_in_a_pipe():
    # A pipe gets plain text (what scripts parse); GRAPHPRUNE_RICH=1 stands in for a terminal here.
    plain = _run("zoo")
    assert plain.returncode == 0 and "-----" in plain.stdout and "\x1b[" not in plain.stdout
    env = {**os.environ, "GRAPHPRUNE_RICH": "1", "GRAPHPRUNE_PROGRESS": "0"}
    fancy = subprocess.run([sys.executable, "-m", "graphprune", "zoo"], cwd=ROOT, capture_output=True, text=True,
                           env=env, timeout=600)
    assert fancy.returncode == 0 and "━" in fancy.stdout and "\x1b[1;36m" in fancy.stdout  # bold cyan header
    assert {"resnet50", "vit"} <= {line.split()[0] for line in fancy.stdout.splitlines()[2:] if line.split()}
    as_json = subprocess.run([sys.executable, "-m", "graphprune", "zoo", "--json"], cwd=ROOT, capture_output=True,
                             text=True, env=env, timeout=600)
    assert as_json.stdout.lstrip().startswith("[")  # --json never gets a rich table


def test_progress_bars_only_where_someone_watches(monkeypatch, capsys):
    """Bars are drawn on a terminal; in a pipe or a log (pytest's capture is one) only when
    GRAPHPRUNE_PROGRESS=1 asks, and never with GRAPHPRUNE_PROGRESS=0."""
    from graphprune.util.progress import progress

    for setting, drawn in (("", False), ("1", True), ("0", False)):
        monkeypatch.setenv("GRAPHPRUNE_PROGRESS", setting)
        assert list(progress(range(3), "calibrating", total=3)) == [0, 1, 2]
        err = capsys.readouterr().err
        assert ("calibrating" in err) == drawn, (setting, err)


def test_round_to_and_runtime_flags(tmp_path):
    import json

    r = _run("prune", "mobilenetv2", "-o", str(tmp_path / "m.onnx"), "--ratio", "0.5", "--round-to", "8", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["latency_ms"]["runtime"] == "onnxruntime" and doc["latency_ms"]["before"] > 0
    r = _run("prune", "mobilenetv2", "-o", str(tmp_path / "m.pt"), "--ratio", "0.5", "--runtime", "none", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["latency_ms"]["before"] is None
    for bad in ("0", "fast"):
        r = _run("prune", "mobilenetv2", "-o", str(tmp_path / "x.pt"), "--round-to", bad)
        assert r.returncode == 2 and "--round-to" in r.stderr and not (tmp_path / "x.pt").exists()


def test_cli_messages_name_flags_not_api_arguments():
    """The CLI printed the library's advice verbatim: "pass calib= ...", "see graph.summary()",
    "round_to=1 allows any width" - arguments a command-line user cannot pass."""
    from graphprune.cli.common import cli_words

    assert cli_words("pass calib= (a few batches of real inputs)") == "pass --calib (a few batches of real inputs)"
    assert cli_words("any width (round_to=1, --round-to 1), or other kinds (targets=)") == \
        "any width (--round-to 1), or other kinds (--targets)"
    assert cli_words("Select more kinds (targets=('heads', 'ffn')), raise max_ratio; see graph.summary()") == \
        "Select more kinds (--targets heads ffn), raise --max-ratio; see graphprune inspect MODEL"
    assert cli_words("(calib=..., allocation='sensitivity'); budget={\"macs\": 0.5}") == \
        "(--calib ..., --allocation sensitivity); --budget macs=0.5"


def test_a_clone_folder_in_the_current_folder_is_named_not_a_raw_attribute_error(tmp_path):
    """Run beside a clone of graphprune (its root folder named graphprune, no __init__.py), Python imports that
    folder as the package: every command died with "module 'graphprune' has no attribute 'prune_onnx'"."""
    (tmp_path / "graphprune").mkdir()
    r = subprocess.run([sys.executable, "-m", "graphprune", "prune", "m.onnx", "-o", "slim.onnx"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 2 and "No module named graphprune.__main__" in r.stderr:
        pytest.skip("this install resolves graphprune past the folder (not an editable install): nothing shadows it")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"the folder {tmp_path / 'graphprune'}" in r.stderr and "run from another folder" in r.stderr
