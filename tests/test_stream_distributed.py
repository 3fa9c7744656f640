"""The streamed prune across processes (graphprune/hf/stream.py with calib/distributed.py): two gloo
ranks, each calibrating its slice of the batches block by block and sharing its slice's block outputs,
write (rank 0 alone) the checkpoint one process writes from all the batches: the same plans, the same
weights within float tolerance.

The ranks are subprocesses running this file (``__main__`` below) that meet in a FileStore; the
one-process reference runs in the test itself, while they work."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import graphprune as gp
from graphprune.calib import distributed

transformers = pytest.importorskip("transformers")

HERE = Path(__file__).resolve().parent
SIZES = (3, 3, 3)  # rank 0 gets one batch (3 items, odd): rank 1's calibration folds start swapped
# the default call's refit and per-block sensitivity allocation, both decided from statistics summed over ranks
OPTIONS = dict(ratio=0.5, measure_latency=False)


def llama() -> transformers.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    cfg.architectures = ["LlamaForCausalLM"]
    return transformers.LlamaForCausalLM(cfg).eval()


def calib() -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": torch.randint(0, 256, (n, 16), generator=g)} for n in SIZES]


def weights(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def test_two_gloo_ranks_stream_the_checkpoint_one_process_streams(tmp_path):
    llama().save_pretrained(tmp_path / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "GRAPHPRUNE_PROGRESS": "0"}
    procs = [subprocess.Popen([sys.executable, __file__, str(r), "2", str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    one = gp.hf.prune(tmp_path / "src", out=tmp_path / "one", calib=calib(), **OPTIONS)
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    # rank 0 alone wrote, and nothing else was left beside it (no other rank's temporary folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["one", "ranks", "rank0.json", "rank1.json", "src", "store"])
    plans = [json.loads((tmp_path / d / "graphprune.json").read_text())["layers"] for d in ("one", "ranks")]
    assert plans[0] == plans[1]
    kept = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert kept[0] == kept[1] == {k: {str(g): list(v) for g, v in r.kept.items()} for k, r in one.layers.items()}
    assert any(k < n for r in one.layers.values() for k, n in r.kept.values())  # it pruned: equality proves something
    assert any(r.compensation is not None and r.compensation.sites for r in one.layers.values())  # and refit
    got, want = weights(tmp_path / "ranks"), weights(tmp_path / "one")
    assert got.keys() == want.keys()
    for k, w in want.items():
        torch.testing.assert_close(got[k], w, rtol=1e-4, atol=1e-5, msg=k)


def test_share_without_a_process_group_computes_every_batch():
    assert distributed.share(3, lambda k: torch.full((2,), float(k)), None)[2].tolist() == [2.0, 2.0]


def _worker(rank: int, world: int, folder: Path) -> None:
    store = torch.distributed.FileStore(str(folder / "store"), world)
    torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        report = gp.hf.prune(folder / "src", out=folder / "ranks", calib=calib(), **OPTIONS)
        kept = {k: {g: list(v) for g, v in r.kept.items()} for k, r in report.layers.items()}
        (folder / f"rank{rank}.json").write_text(json.dumps(kept))
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
