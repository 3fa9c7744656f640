"""The Program layer: one run/capture/mask/apply interface that torch and ONNX share, so the
pipeline, the oracle and the report are written once."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import graphprune as gp
from graphprune.calib.sites import find_sites
from graphprune.options import PruneOptions
from graphprune.oracle import OracleReport
from graphprune.pipeline import plan_program
from graphprune.planning.plan import keep_masks
from graphprune.program.onnx_program import OnnxProgram
from graphprune.program.torch_program import TorchProgram
from graphprune.report.prune_report import PruneReport


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = torch.nn.Linear(8, 16), torch.nn.Linear(16, 12), torch.nn.Linear(12, 4)

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


@pytest.fixture(scope="module")
def programs(tmp_path_factory):
    torch.manual_seed(0)
    model = MLP().eval()
    args = (torch.randn(3, 8),)
    path = tmp_path_factory.mktemp("program") / "mlp.onnx"
    gp.export_onnx(model, args, path)
    return {"torch": TorchProgram(model, args), "onnx": OnnxProgram.load(str(path))}, model, args


def _batch(program, x: np.ndarray):
    return ((torch.from_numpy(x),), {}) if program.framework != "ONNX" else {program.model.graph.input[0].name: x}


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_capture_hands_over_the_site_input_and_can_stop_early(kind, programs):
    progs, model, _ = programs
    program = progs[kind]
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    # fc3's input, as the module itself computes it
    want = torch.relu(model.fc2(torch.relu(model.fc1(torch.from_numpy(x))))).detach().numpy()
    site = next(s for s in find_sites(program.graph()) if _width(program, s) == 12)
    got = {}
    out = program.run(_batch(program, x), capture=[site.x], on_capture=lambda n, t: got.__setitem__(n, t),
                      outputs=False)
    assert not out  # stopped after the capture, no outputs computed
    captured = got[site.x]
    captured = captured.detach().numpy() if hasattr(captured, "detach") else np.asarray(captured)
    np.testing.assert_allclose(captured, want, atol=1e-5)


def _width(program, site) -> int:
    return program.graph().ir.values[site.x].shape[site.x_dim]


@pytest.mark.parametrize("kind", ["torch", "onnx"])
def test_masked_run_is_what_the_pruned_program_computes(kind, programs):
    progs, _, _ = programs
    program = progs[kind]
    dg = program.graph()
    p = plan_program(program, PruneOptions(ratio=0.5, importance="l2")).plan
    assert any(p.pruned.values())
    x = np.random.default_rng(2).standard_normal((3, 8)).astype(np.float32)
    pruned = program.apply(p)
    masked = program.run(_batch(program, x), masks=keep_masks(dg, p))
    plain = program.run(_batch(program, x))
    np.testing.assert_allclose(pruned.run(_batch(program, x))[0], masked[0], atol=1e-5)
    assert np.abs(masked[0] - plain[0]).max() > 1e-3  # the masks do cut something


def test_both_front_ends_share_the_report_and_the_oracle(programs, tmp_path):
    progs, model, args = programs
    _, report_t = gp.prune(MLP().eval(), args, ratio=0.5, importance="l2", verify=True)
    src = tmp_path / "src.onnx"
    progs["onnx"].save(src)
    report_o = gp.prune_onnx(src, tmp_path / "out.onnx", ratio=0.5, importance="l2", round_to=1,
                             measure_latency=False)
    for r in (report_t, report_o):
        assert type(r) is PruneReport and type(r.oracle) is OracleReport and r.oracle.passed
        assert r.params_after < r.params_before
    assert report_o.oracle.runtime == "onnxruntime" and report_o.path.endswith("out.onnx")
    # the same plan on the same weights prunes the same number of weights on both front-ends
    assert report_t.params_after == report_o.params_after


class _Caches(torch.nn.Module):
    """Keeps what its forward computes for the next call (rotary-embedding-torch's table and its length)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin, self.cached = torch.nn.Linear(4, 4), 0

    def forward(self, x):
        self.cached = x.shape[0]
        return self.lin(x)


def test_runs_of_the_model_leave_its_state_as_it_was():
    """The oracle's and the timer's forwards on the user's model set rotary-embedding-torch's cache length, and the
    rewrite's proof, traced after them, took the cached path: its heads were kept whole on a fresh model and cut on
    one that had run (the same weights)."""
    from graphprune.program.torch_program import TorchProgram

    model, x = _Caches().eval(), torch.randn(3, 4)
    program = TorchProgram(model, (x,))
    program.run(((x,), {}))
    with program.timing("torch"):
        program.runner("torch")()
    assert model.cached == 0


def test_runs_of_a_model_in_training_mode_leave_its_batch_norm_statistics():
    """The oracle's and the timer's forwards of a model left in training mode updated BatchNorm's running
    statistics in the user's model (review)."""
    from graphprune.program.torch_program import TorchProgram

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 5, 5)
    program = TorchProgram(model, (x,))
    program.run(((x,), {}))
    with program.timing("torch"):
        program.runner("torch")()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


_SEEN: list = []


class _HooksOnFirstForward(torch.nn.Module):
    """transformers 5 installs its output-capturing hooks on the first forward and marks the model so; its heads
    read what the hooks caught (SegFormer's decode head reads every stage's output)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.Conv2d(16, 32, 3, padding=1)])
        self.heads = torch.nn.ModuleList([torch.nn.Linear(16, 8), torch.nn.Linear(32, 8)])

    def forward(self, x):
        if not getattr(self, "_hooked", False):
            for b in self.blocks:
                b.register_forward_hook(lambda m, i, o: _SEEN.append(o))
            self._hooked = True
        _SEEN.clear()
        for b in self.blocks:
            x = torch.relu(b(x))
        return sum(h(f.mean((2, 3))) for h, f in zip(self.heads, list(_SEEN)))


def test_hooks_a_forward_installs_go_with_the_mark_it_sets():
    """Traced before it ever ran, the model got its hooks during graphprune's forwards, and the mark that says so was
    put back: the next forward installed them again, every stage was caught twice, and the timing of candidate
    widths raised a raw RuntimeError (SegFormer, a cold model). Hooks added by those forwards now go too."""
    torch.manual_seed(0)
    model, x = _HooksOnFirstForward().eval(), torch.randn(2, 3, 8, 8)
    model, report = gp.prune(model, (x,), ratio=0.5, verify=True)
    assert report.oracle.verdict == "PASS" and report.params_after < report.params_before
    assert all(len(b._forward_hooks) == 0 for b in model.blocks) and not hasattr(model, "_hooked")
    assert model(x).shape == (2, 8)
    assert all(len(b._forward_hooks) == 1 for b in model.blocks)
