"""``graphprune prune FOLDER -o OUT`` on a transformers checkpoint folder: streamed block by block with
--stream or when the in-memory estimate does not fit, refused before loading with --no-stream, and
``graphprune.hf.prune(folder)`` without ``out=`` in memory where it fits (graphprune/cli/stream.py,
graphprune/hf/choose.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tool

import graphprune as gp
from graphprune.cli import stream as cli_stream
from graphprune.cli.main import main
from graphprune.errors import PlanError
from graphprune.hf.choose import estimate_in_memory, meta_model

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

FAST = ["--no-latency", "--round-to", "1", "--allocation", "uniform", "--ratio", "0.5"]
SAME = dict(ratio=0.5, round_to=1, allocation="uniform", measure_latency=False)
NO_REFIT = ["--no-compensate", "--no-verify"]  # ranked by activations, no refit (tests/test_stream.py tests repair)
WORDS = [f"w{i}" for i in range(200)]


def _make_checkpoint(folder: Path) -> None:
    """tools/make_llama_checkpoint.py's ``tiny`` preset (bf16, 4 layers), with a word-level tokenizer."""
    tool("make_llama_checkpoint").write(folder, "tiny", torch.bfloat16)
    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]") \
        .save_pretrained(folder)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt") / "tiny"
    _make_checkpoint(folder)
    return folder


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("calib") / "data.txt"
    path.write_text(" ".join(rng.choice(WORDS, 8 * 24)))
    return path


def _tokens(ckpt: Path, text: Path) -> list[dict]:
    """The batches the CLI cuts from ``text`` (4 sequences of 24 tokens, 2 per batch), cut here by the tokenizer."""
    tok = transformers.AutoTokenizer.from_pretrained(str(ckpt))
    ids = tok(text.read_text())["input_ids"]
    assert len(ids) == 8 * 24  # one word, one token
    seqs = torch.tensor(ids[:4 * 24]).reshape(4, 24)
    return [{"input_ids": seqs[i:i + 2], "attention_mask": torch.ones(2, 24, dtype=torch.long)} for i in (0, 2)]


def _cli(*argv) -> int:
    return main(["prune", *map(str, argv)])


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith((name, f".{name}")))


def test_stream_flag_writes_a_folder_that_reloads_like_the_api_prune(ckpt, text, tmp_path, capsys):
    out = tmp_path / "cli"
    assert _cli(ckpt, "-o", out, "--calib", text, "--seq-len", 24, "--calib-samples", 4, "--calib-batch", 2,
                "--stream", "--no-compensate", *FAST) == 0
    printed = capsys.readouterr().out
    assert "streamed block by block: --stream given" in printed and printed.count("oracle PASS") == 4
    assert (out / "tokenizer.json").is_file()  # the original's tokenizer goes along
    report = gp.hf.prune(ckpt, out=tmp_path / "api", calib=_tokens(ckpt, text), compensate=False, **SAME)
    cli_model, api_model = gp.hf.load_pruned(out), gp.hf.load_pruned(tmp_path / "api")
    assert sum(p.numel() for p in cli_model.parameters()) == report.params_after < report.params_before
    x = torch.randint(0, 202, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.equal(cli_model(x).logits, api_model(x).logits)
    assert _leftovers(tmp_path, "cli") == ["cli"]


def test_streams_when_the_in_memory_estimate_exceeds_max_memory(ckpt, tmp_path, capsys):
    calib = tmp_path / "calib.npz"
    np.savez(calib, input_ids=np.random.default_rng(1).integers(0, 512, (4, 16)))
    opts = gp.PruneOptions.of(calib=[{"input_ids": torch.zeros(2, 16, dtype=torch.long)}], compensate=False, **SAME)
    need = estimate_in_memory(meta_model(ckpt), opts).total
    weights = 820_352 * 2  # the tiny preset's parameters, bf16 (make_llama_checkpoint.py)
    assert need > 3 * weights  # fp32 copies, statistics and solver buffers on top of the weights
    out = tmp_path / "auto"
    assert _cli(ckpt, "-o", out, "--calib", calib, "--calib-batch", 2, "--max-memory", need - 1, "--json",
                *FAST, *NO_REFIT) == 0
    captured = capsys.readouterr()
    doc = json.loads(captured.out)
    assert doc["streamed"] and "more than --max-memory" in doc["why"] and "block by block" in captured.err
    assert doc["estimate_in_memory"]["total"] == need and len(doc["layers"]) == 4
    assert gp.hf.load_pruned(out).model.layers[0].mlp.up_proj.out_features == 192  # half of 384


def test_no_stream_with_too_little_memory_is_refused_before_loading(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained",
                        classmethod(lambda *a, **k: pytest.fail("loaded before refusing")))
    out = tmp_path / "never"
    assert _cli(ckpt, "-o", out, "--max-memory", "1MiB", "--no-stream", *FAST) == 2
    err = capsys.readouterr().err
    assert "more than --max-memory (1.00 MiB)" in err and "drop --no-stream" in err and "Nothing was loaded" in err
    assert _leftovers(tmp_path, "never") == []


@pytest.mark.parametrize("extra, says", [
    (["--budget", "params=0.5", "--allocation", "global"], "--allocation global ranks channels by every block"),
    (["--ratio", "0.3", "--allocation", "global"], "--allocation global ranks channels by every block"),
    (["--recover-steps", "2"], "--recover-steps distils"),
    (["--report", "REP"], "--report reports one whole model"),
])
def test_what_streaming_cannot_do_is_refused_naming_no_stream(ckpt, text, tmp_path, capsys, extra, says):
    extra = [tmp_path / "rep" if a == "REP" else a for a in extra]
    argv = [ckpt, "-o", tmp_path / "out", "--calib", text, "--seq-len", 24, "--no-latency"]
    assert _cli(*argv, "--stream", *extra) == 2
    err = capsys.readouterr().err
    assert says in err and "--no-stream" in err
    assert _cli(*argv, "--max-memory", "1MiB", *extra) == 2  # too big in memory, and cannot stream: both said
    err = capsys.readouterr().err
    assert says in err and "more than --max-memory" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "rep").exists()


def test_stream_meets_a_params_budget(ckpt, text, tmp_path, capsys):
    out = tmp_path / "budget"
    assert _cli(ckpt, "-o", out, "--calib", text, "--seq-len", 24, "--calib-samples", 4, "--calib-batch", 2,
                "--stream", "--budget", "params=0.7", "--json", "--no-latency", "--round-to", "1", "--allocation",
                "uniform", *NO_REFIT) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["params_before"] == 820_352  # the tiny preset's parameters (make_llama_checkpoint.py)
    assert 0.69 * 820_352 < doc["params_after"] <= round(0.7 * 820_352)  # the blocks carry the embeddings' share
    assert any(n.startswith("budget: params 574,246 of 820,352") for n in doc["notes"]), doc["notes"]
    assert sum(p.numel() for p in gp.hf.load_pruned(out).parameters()) == doc["params_after"]
    assert _leftovers(tmp_path, "budget") == ["budget"]


def test_streaming_without_calib_or_to_a_file_is_refused(ckpt, text, tmp_path, capsys):
    assert _cli(ckpt, "-o", tmp_path / "out", "--stream") == 2
    assert "give --calib" in capsys.readouterr().err
    assert _cli(ckpt, "-o", tmp_path / "m.onnx", "--calib", text, "--seq-len", 24, "--stream") == 2
    assert "give -o a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_torchrun_streams_with_each_rank_on_its_slice_and_rank_0_writing(ckpt, text, tmp_path):
    """``torchrun --nproc-per-node 2 -m graphprune prune FOLDER -o OUT --stream``: one folder, written
    by rank 0, with the plans one process makes (tests/test_stream_distributed.py compares weights)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRAPHPRUNE_PROGRESS": "0"}
    args = ["prune", str(ckpt), "--stream", "--calib", str(text), "--seq-len", "24", "--calib-samples", "4",
            "--calib-batch", "1", *FAST]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "graphprune", *args, "-o", str(tmp_path / "ranks")],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("streamed block by block") == 1  # one report printed: rank 0's
    assert _cli(*args[1:], "-o", tmp_path / "one") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "ranks"]
    plans = [json.loads((tmp_path / d / "graphprune.json").read_text())["layers"] for d in ("one", "ranks")]
    assert plans[0] == plans[1] and any(plans[0].values())


def test_a_failure_after_the_prune_leaves_no_partial_folder(ckpt, text, tmp_path, capsys, monkeypatch):
    def broken(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cli_stream, "copy_side_files", broken)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "graphprune.json").write_text("{}")  # an earlier output, kept when this run fails
    assert _cli(ckpt, "-o", tmp_path / "out", "--calib", text, "--seq-len", 48, "--calib-samples", 2, "--stream",
                *FAST, *NO_REFIT) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["graphprune.json"]


def test_api_folder_without_out_prunes_in_memory_where_it_fits(ckpt, text):
    calib = _tokens(ckpt, text)
    model, report = gp.hf.prune(ckpt, calib=calib, compensate=False, **SAME)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(ckpt))
    want, _ = gp.hf.prune(loaded, calib=calib, compensate=False, **SAME)
    assert report.params_after < report.params_before
    got, ref = model.state_dict(), want.state_dict()
    assert set(got) == set(ref) and all(torch.equal(got[k], ref[k]) for k in ref)
    with pytest.raises(PlanError, match=r"more than max_memory \(1.00 MiB\).*Pass out="):
        gp.hf.prune(ckpt, calib=calib, max_memory="1MiB", **SAME)
