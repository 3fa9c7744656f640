"""Calibration across processes (graphprune/calib/distributed.py): two gloo ranks, each on its
slice of the batches, make the plan one process makes on all of them, and the same weights.

The ranks are subprocesses running this file (``__main__`` below) that meet in a FileStore; the
one-process reference runs in the test itself."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import toy
from safetensors.torch import load_file

import graphprune as gp
from graphprune.calib import distributed

HERE = Path(__file__).resolve().parent
SIZES = (3, 3, 3)  # odd: rank 0 sees 3 items, so rank 1's calibration folds start swapped


def batches() -> list[tuple[torch.Tensor]]:
    gen = torch.Generator().manual_seed(7)
    return [(torch.randn(n, 4, generator=gen),) for n in SIZES]


def model() -> torch.nn.Module:
    """Linear(4, 8), three residual MLP branches (one scaled down: the block depth scoring finds
    cheapest), Linear(8, 2): channel, hidden and block groups."""
    return toy()


def loss_fn(out, batch):
    return out.pow(2).mean()


# runtime=None: widths neither aligned nor timed, so the one-process reference is deterministic too
CASES = {
    "default": dict(ratio=0.5, runtime=None),  # obs, sensitivity allocation, refit
    "taylor": dict(ratio=0.4, runtime=None, importance="taylor", loss_fn=loss_fn, allocation="uniform"),
    "depth": dict(budget={"params": 0.6}, targets=("ffn", "blocks"), runtime=None, compensate="sequential"),
}


def prune_all() -> dict[str, dict]:
    out = {}
    for name, opts in CASES.items():
        m, x = model(), batches()
        _, report = gp.prune(m, x[0], calib=x, **opts)
        out[name] = {"pruned": report.plan.pruned, "blocks": report.plan.blocks,
                     "weights": {k: v.detach().clone() for k, v in m.state_dict().items()}}
    return out


def test_shard_without_a_process_group_is_everything():
    assert distributed.world() == (0, 1)
    assert list(distributed.shard(3)) == [0, 1, 2]
    assert distributed.reduce_sum([None, torch.ones(2)])[1].tolist() == [1.0, 1.0]
    assert distributed.same_on_all({"a": 1}) == {"a": 1}


def test_two_gloo_ranks_plan_and_prune_as_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, str(r), "2", str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    one = prune_all()  # the reference, while the ranks run
    logs = [p.communicate(timeout=240)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for r, got in enumerate(ranks):
        # rank 0 has [1, 2] and None, rank 1 has [10, 20] and [5]: sums, and None only where both had None
        assert got["sum"][0].tolist() == [11.0, 22.0] and got["sum"][1].tolist() == [5.0] and got["sum"][2] is None
        assert got["shard"] == [[0], [1, 2]][r]
        assert got["before"] == ([[0], [4]], [[1], [4]])[r]  # items 1 on rank 0, 3 on rank 1
        assert got["rank0"] == "from rank 0"
    for name in CASES:
        ref = one[name]
        assert any(ref["pruned"].values()), name  # the case prunes something, or equality proves nothing
        for r, got in enumerate(ranks):
            assert got[name]["pruned"] == ref["pruned"], (name, r)
            assert got[name]["blocks"] == ref["blocks"], (name, r)
            assert got[name]["weights"].keys() == ref["weights"].keys(), (name, r)
            for k, w in ref["weights"].items():
                torch.testing.assert_close(got[name]["weights"][k], w, rtol=1e-5, atol=1e-6, msg=f"{name} {r} {k}")
    assert one["depth"]["blocks"], "the depth case removes a block"


@pytest.mark.slow
def test_torchrun_cli_writes_once_what_one_process_makes(tmp_path):
    """``torchrun --nproc-per-node 2 -m graphprune prune``: the ranks join the group torchrun sets
    up, rank 0 alone writes, and the model is the one a single process makes on all the batches."""
    x = torch.cat([b[0] for b in batches()])
    np.savez(tmp_path / "calib.npz", input=x.numpy())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "GRAPHPRUNE_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "graphprune", "prune", "helpers:toy", "-o", str(tmp_path / "out"), "--input-shape",
                        "input:3x4", "--calib", str(tmp_path / "calib.npz"), "--calib-batch", "3", "--no-latency",
                        "--round-to", "1", "--report", str(tmp_path / "report")],
                       capture_output=True, text=True, env=env, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("oracle PASS") == 1  # one report printed: rank 0's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npz", "out", "report"]
    m = model()
    gp.prune(m, batches()[0], calib=batches(), ratio=0.3, round_to=1, measure_latency=False)
    got = load_file(tmp_path / "out" / "model.safetensors")
    assert got.keys() == m.state_dict().keys()
    for k, w in m.state_dict().items():
        torch.testing.assert_close(got[k], w, rtol=1e-5, atol=1e-6, msg=k)


def _worker(rank: int, world: int, folder: Path) -> None:
    store = torch.distributed.FileStore(str(folder / "store"), world)
    torch.distributed.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        mine = [torch.tensor([1.0, 2.0]), None, None] if rank == 0 else [torch.tensor([10.0, 20.0]),
                                                                            torch.tensor([5.0]), None]
        out = {"sum": distributed.reduce_sum(mine), "shard": list(distributed.shard(3)),
               "before": [list(v) for v in distributed.items_before([1 + 2 * rank])],
               "rank0": distributed.same_on_all(f"from rank {rank}")}
        torch.save({**out, **prune_all()}, folder / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
