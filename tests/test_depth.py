"""Depth pruning: residual branches found on the graph, scored on data, removed exactly."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from helpers import n_params, toy
from torch import nn

import graphprune as gp
from graphprune.backends.torch_depth import Skip, ZeroBranch, remove_blocks
from graphprune.blocks import dead_values, find_blocks
from graphprune.errors import PlanError
from graphprune.oracle import run_oracle
from graphprune.planning.plan import PrunePlan
from graphprune.program.torch_program import TorchProgram
from graphprune.zoo import build
from graphprune.zoo import hf as zoo_hf


def test_blocks_are_the_residual_adds_with_their_own_weights():
    m = toy()
    dg = gp.trace(m, (torch.randn(3, 4),))
    blocks = find_blocks(dg.ir)
    assert len(blocks) == 3  # one per Branch; the first and last Linear are no branch
    for k, b in enumerate(blocks, start=1):
        want = sorted(f"{k}.{n}" for n, _ in m[k].named_parameters())
        assert list(b.params) == want


def test_not_blocks_broadcast_constants_shared_weights_and_escaping_branches():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos = nn.Parameter(torch.randn(1, 8))
            self.f, self.shared = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            x = x + self.pos  # a broadcast add of a constant: no branch
            b = self.f(x)
            y = x + b  # b escapes to the output as well: removing it changes more than y
            z = y + self.shared(y)
            z = z + self.shared(z)  # the same weights in two branches: neither owns them
            return z, b

    dg = gp.trace(Odd().eval(), (torch.randn(2, 8),))
    assert find_blocks(dg.ir) == []


def test_removed_block_matches_the_branch_zeroed_and_weights_go():
    m = toy()
    x = torch.randn(5, 4)
    prog = TorchProgram(copy.deepcopy(m), (x,), {})
    dg = prog.graph()
    block = dg.blocks[1]
    report = run_oracle(prog, PrunePlan(blocks=[block.id]))
    assert report.passed and report.checked_blocks == [block.id]
    pruned = prog.apply(PrunePlan(blocks=[block.id])).model
    # the reference: the original with branch 2's output zeroed by a hook
    ref = copy.deepcopy(m)
    ref[2].down.register_forward_hook(lambda mod, a, out: torch.zeros_like(out))
    with torch.no_grad():
        assert torch.equal(pruned(x), ref(x))
        assert not torch.allclose(pruned(x), m(x))
    assert n_params(pruned) == n_params(m) - n_params(m[2])


def test_ratio_removes_the_least_harmful_blocks_and_the_oracle_holds():
    m = toy()
    calib = [torch.randn(16, 4) for _ in range(3)]
    pruned, report = gp.prune(copy.deepcopy(m), (torch.randn(16, 4),), targets=("blocks",), ratio=0.34,
                              calib=calib, verify=True)
    assert report.blocks == (1, 3)
    assert report.plan.blocks == [report.depth.removed[0]]
    scores = report.depth.scores
    assert report.plan.blocks[0] == min(scores, key=scores.get)  # the 0.01-scaled branch
    assert report.oracle.passed and report.oracle.checked_blocks == report.plan.blocks
    assert n_params(pruned) == report.params_after == n_params(m) - n_params(m[2])
    assert "residual blocks" in str(report)


def test_budget_weighs_blocks_against_width():
    m = toy()
    calib = [torch.randn(16, 4) for _ in range(3)]
    pruned, report = gp.prune(copy.deepcopy(m), (torch.randn(16, 4),), targets=("blocks", "channels"),
                              budget={"params": 0.6}, calib=calib, verify=True)
    target = 0.6 * n_params(m)
    assert n_params(pruned) <= target and n_params(pruned) >= 0.9 * target
    trials = {(k, w): e for k, e, w in report.depth.trials}
    assert (0, "uniform") in trials  # width alone was a candidate
    assert trials[(len(report.plan.blocks), report.budget.allocation)] == min(trials.values())
    assert report.oracle.passed


def test_a_blocks_only_budget_says_how_far_past_it_lands():
    """Whole blocks are coarse: params=0.95 with blocks alone can only be met by removing a block that
    holds a quarter of the weights. That is allowed (the budget is a ceiling) but was silent."""
    m = toy()
    block = n_params(m[2])
    calib = [torch.randn(16, 4) for _ in range(3)]
    assert block > 0.1 * n_params(m)  # derived: one block is far more than the 5% asked
    with pytest.warns(gp.errors.PruneWarning, match=r"removing whole blocks alone keeps \d+% .* where 95% was asked"):
        pruned, report = gp.prune(copy.deepcopy(m), (torch.randn(16, 4),), targets=("blocks",),
                                  budget={"params": 0.95}, calib=calib)
    assert len(report.plan.blocks) == 1 and n_params(pruned) <= 0.95 * n_params(m)


def test_blocks_go_where_every_channel_is_frozen(monkeypatch):
    """An int8 MiniLM freezes every channel (its weights are integer constants), yet lists removable
    blocks: targets=("blocks",) was refused as "nothing can be pruned" before depth was tried. (The
    frozen channels are stood in for here: no group prunable.)"""
    from graphprune.graph import DependencyGraph

    monkeypatch.setattr(DependencyGraph, "prunable_groups", lambda self: [])
    m = toy()
    calib = [torch.randn(16, 4) for _ in range(3)]
    with pytest.raises(PlanError, match="nothing in this model can be pruned"):
        gp.prune(copy.deepcopy(m), (torch.randn(16, 4),), ratio=0.3, calib=calib)
    pruned, report = gp.prune(copy.deepcopy(m), (torch.randn(16, 4),), targets=("blocks",), ratio=0.34, calib=calib,
                              verify=True)
    assert len(report.plan.blocks) == 1 and report.oracle.passed and n_params(pruned) < n_params(m)


def test_onnx_blocks_removed_from_the_graph(tmp_path):
    import onnx
    import onnxruntime as ort

    m = toy()
    src, dst = tmp_path / "toy.onnx", tmp_path / "slim.onnx"
    x = torch.randn(16, 4)
    gp.export_onnx(copy.deepcopy(m), (x,), src)
    name = ort.InferenceSession(str(src)).get_inputs()[0].name
    calib = [{name: torch.randn(16, 4).numpy()} for _ in range(3)]
    report = gp.prune_onnx(src, dst, targets=("blocks",), ratio=0.34, calib=calib, measure_latency=False)
    assert report.oracle.passed and report.oracle.checked_blocks
    model = onnx.load(dst)
    weights = sum(int(np.prod(i.dims)) for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    assert weights == n_params(m) - n_params(m[2]) == report.params_after
    assert [n.op_type for n in model.graph.node].count("LayerNormalization") == 2
    ref = copy.deepcopy(m)
    ref[2].down.register_forward_hook(lambda mod, a, out: torch.zeros_like(out))
    got = ort.InferenceSession(str(dst)).run(None, {name: x.numpy()})[0]
    np.testing.assert_allclose(got, ref(x).detach().numpy(), atol=1e-5)


def test_depth_needs_data_and_a_block():
    m = toy()
    x = torch.randn(4, 4)
    with pytest.raises(PlanError, match="calib"):
        gp.prune(copy.deepcopy(m), (x,), targets=("blocks",), ratio=0.3)
    with pytest.raises(PlanError, match="latency"):
        gp.prune(copy.deepcopy(m), (x,), targets=("blocks",), budget={"latency_ms": 1.0}, calib=[x])
    plain = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    with pytest.raises(PlanError, match="no removable residual branch"):
        gp.prune(plain, (x,), targets=("blocks",), ratio=0.3, calib=[x])
    with pytest.raises(PlanError, match="does not have"):
        TorchProgram(copy.deepcopy(m), (x,), {}).apply(PrunePlan(blocks=["no_such_add"]))


def test_plan_json_keeps_blocks_and_old_plans_keep_their_bytes():
    p = PrunePlan({3: [1]}, {3: 8}, ["add_1"])
    assert PrunePlan.from_json(p.to_json()) == p
    assert "blocks" not in PrunePlan({3: [1]}, {3: 8}).to_json()


def test_dead_values_follow_shared_side_inputs():
    """A table only removed branches read (a rotary cache) dies with them; one a live branch
    reads stays."""
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, use_cache=False)
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(cfg).eval()
    dg = gp.trace(m, (), {"input_ids": torch.randint(0, 64, (1, 8))})
    attn = [b for b in dg.blocks if any("self_attn" in p for p in b.params)]
    assert len(attn) == 2 and len(dg.blocks) == 4
    rotary = [v.name for v in dg.ir.values.values() if (v.source or "").endswith("rotary_emb.inv_freq")]
    assert rotary and not set(rotary) & dead_values(dg.ir, attn[:1])
    assert set(rotary) <= dead_values(dg.ir, attn)


def test_hf_llama_depth_and_width_reloads(tmp_path):
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, use_cache=False)
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(cfg).eval()
    calib = [{"input_ids": torch.randint(0, 100, (2, 16))} for _ in range(3)]
    pruned, report = gp.hf.prune(copy.deepcopy(m), targets=("blocks",), ratio=0.5, calib=calib, verify=True)
    assert report.blocks == (3, 6) and report.oracle.passed
    assert not report.sync.loadable and "residual block" in report.sync.reason  # from_pretrained cannot rebuild it
    gp.hf.save_pruned(pruned, tmp_path)
    again = gp.hf.load_pruned(tmp_path)
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, pruned(input_ids=ids).logits)
    assert n_params(again) == n_params(pruned) == report.params_after


# Architectures whose branches reach the add in different ways: parallel attention + MLP
# (gpt-neox), a layer scale in the parent's forward (convnext), a tuple-returning attention
# with a shared position bias (t5), window shifts (swin), post-norm (bert), conv blocks.
@pytest.mark.parametrize("name", ["gpt-neox", "convnext", "t5-encoder", "swin", "bert"])
def test_suite_blocks_removed_exactly(name):
    m = zoo_hf.build(name)
    calib = [gp.hf.example_inputs(m, seed=s) for s in range(2)]
    pruned, report = gp.hf.prune(m, targets=("blocks",), ratio=0.5, calib=calib, verify=True)
    assert report.blocks[0] >= 1 and report.oracle.passed and report.oracle.checked_blocks
    assert n_params(pruned) == report.params_after < report.params_before


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv2"])
def test_zoo_cnn_blocks_removed_exactly(name, check_prune):
    m, args = build(name)
    calib = [torch.randn_like(args[0]) for _ in range(2)]
    # removed blocks' parameters and MACs gone from the module, and the oracle on the removal
    pruned, report = check_prune(m, args, targets=("blocks",), ratio=0.5, calib=calib)
    assert report.blocks[0] >= 1 and report.oracle.checked_blocks
    assert report.params_after < report.params_before and report.macs_after < report.macs_before


def test_layer_plot_shows_narrowed_and_removed_weights(tmp_path):
    from PIL import Image

    m = toy()
    calib = [torch.randn(16, 4) for _ in range(3)]
    _, report = gp.prune(copy.deepcopy(m), (torch.randn(16, 4),), targets=("blocks", "channels"),
                         budget={"params": 0.6}, calib=calib)
    path = report.plot_layers(tmp_path / "layers.png")
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)
    assert img.shape[0] > 300 and img.shape[1] > 400
    # matplotlib's tab:red (214, 39, 40) and tab:blue (31, 119, 180) bars are both drawn
    red = (abs(img - [214, 39, 40]).sum(-1) < 30).sum()
    blue = (abs(img - [31, 119, 180]).sum(-1) < 30).sum()
    assert red > 2000 and blue > 2000  # bars, not just the legend's swatches (a few hundred pixels)


def test_cli_removes_blocks_and_plots_layers(tmp_path, capsys):
    import onnxruntime as ort

    from graphprune.cli.main import main

    m = toy()
    src = tmp_path / "toy.onnx"
    gp.export_onnx(copy.deepcopy(m), (torch.randn(16, 4),), src)
    name = ort.InferenceSession(str(src)).get_inputs()[0].name
    np.savez(tmp_path / "calib.npz", **{name: np.random.default_rng(0).standard_normal((48, 4)).astype(np.float32)})
    args = ["prune", str(src), "-o", str(tmp_path / "slim.onnx"), "--targets", "blocks", "--ratio", "0.34",
            "--calib", str(tmp_path / "calib.npz"), "--calib-batch", "16", "--no-latency", "--layers",
            "--plot-layers", str(tmp_path / "layers.png")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "residual blocks" in out and "2.up.weight" in out and "0/16" in out  # the removed branch's width
    assert (tmp_path / "layers.png").stat().st_size > 10_000
    bad = [a if a != str(tmp_path / "slim.onnx") else str(tmp_path / "bad.onnx") for a in args[:-2]]
    assert main(bad + ["--ratio", "1.5"]) == 2  # a bad option: exit 2 and nothing written
    assert not (tmp_path / "bad.onnx").exists()


def test_causal_lm_weighs_depth_by_calibration_loss():
    """For a causal LM the candidates are compared by next-token loss on the calibration text
    (what perplexity measures), with uniform widths tried beside global ones. generated=0: the loss
    is then taken on ``calib`` alone, which the check below recomputes."""
    import transformers as T

    from graphprune.hf.pretrained import causal_lm_loss

    cfg = T.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, use_cache=False)
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(cfg).eval()
    calib = [{"input_ids": torch.randint(0, 100, (2, 16))} for _ in range(3)]
    pruned, report = gp.hf.prune(copy.deepcopy(m), targets=("blocks", "heads", "ffn"), budget={"params": 0.75},
                                 allocation="global", calib=calib, generated=0, verify=True)
    assert report.depth.measure == "calibration loss" and report.oracle.passed
    widths = {w for _, _, w in report.depth.trials}
    assert widths == {"global", "uniform"}
    best = min(report.depth.trials, key=lambda t: t[1])
    assert (best[0], best[2]) == (len(report.plan.blocks), report.budget.allocation)
    # the chosen candidate's loss is the pruned model's loss before repair changes nothing it measured
    with torch.no_grad():
        losses = [float(causal_lm_loss(pruned(**b), b)) for b in calib]
    assert abs(sum(losses) / len(losses) - best[1]) < 1e-3
    assert n_params(pruned) <= 0.75 * n_params(m)


class _AttnBlock(nn.Module):
    def __init__(self, d: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.h, self.qkv, self.o = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 64), nn.Linear(64, d)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.h, -1).permute(2, 0, 3, 1, 4)
        x = x + self.o(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1))
        return x + self.down(torch.relu(self.up(x)))


class _AttnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.blocks, self.head = nn.Linear(8, 16), nn.ModuleList(_AttnBlock() for _ in range(3)), nn.Linear(16, 4)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def test_blocks_whose_swap_breaks_the_forward_are_planned_as_kept():
    """An attention branch viewed at a fixed size (``qkv(x).view(b, n, 3, h, -1)``) cannot be removed by swapping its
    modules. Chosen, it failed the whole prune after planning; now the planner keeps it, says so, and removes
    the MLP branches that can go."""
    torch.manual_seed(0)
    model, x = _AttnNet().eval(), torch.randn(2, 8, 8)
    before = n_params(model)
    blocks = {b.id: b for b in find_blocks(TorchProgram(copy.deepcopy(model), (x,)).graph().ir)}
    with pytest.warns(gp.PruneWarning, match=r"3 of 6 residual block\(s\) kept whole, as removing them would break the "
                                             r"model \(add in blocks\.0, add_2 in blocks\.1, add_4 in blocks\.2\); the "
                                             r"first: .*\(RuntimeError: shape"):
        _, report = gp.prune(model, (x,), ratio=0.9, targets=["blocks"], measure_latency=False, verify=True,
                             calib=[torch.randn(2, 8, 8) for _ in range(3)])
    assert report.oracle.passed and len(report.plan.blocks) == 2  # floor(0.9 * 3 removable)
    assert all(b.startswith("add_") and int(b[4:]) % 2 == 1 for b in report.plan.blocks), report.plan.blocks
    assert all(any(".up." in p for p in blocks[b].params) for b in report.plan.blocks)
    assert n_params(model) == before - 2 * (16 * 64 + 64 + 64 * 16 + 16)  # two MLPs' up and down
    with torch.no_grad():
        assert model(torch.randn(3, 5, 8)).shape == (3, 5, 4)


class _AttnOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(_AttnBlock() for _ in range(2))

    def forward(self, x):
        for block in self.blocks:
            b, n, _ = x.shape
            q, k, v = block.qkv(x).view(b, n, 3, block.h, -1).permute(2, 0, 3, 1, 4)
            x = x + block.o(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1))
        return x


def test_a_model_none_of_whose_blocks_can_be_removed_is_refused_before_planning_and_left_whole():
    torch.manual_seed(0)
    model, x = _AttnOnly().eval(), torch.randn(2, 8, 16)
    before = copy.deepcopy(model.state_dict())
    with torch.no_grad():
        want = model(x)
    with pytest.raises(PlanError, match=r"no residual block can be removed from this model; the first, add in "
                                        r"blocks\.0: removing 1 block\(s\) by module swaps leaves a forward that fails"):
        gp.prune(model, (x,), ratio=0.5, targets=["blocks"], measure_latency=False,
                 calib=[torch.randn(2, 8, 16) for _ in range(3)])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), want)


def test_a_removal_whose_swap_breaks_the_forward_is_undone_with_a_rewrite_error():
    """The final removal checks again (blocks that each go alone may not go together): the swapped forward's raw
    RuntimeError escaped (review); a RewriteError says so and the model is as it was."""
    torch.manual_seed(0)
    model, x = _AttnNet().eval(), torch.randn(2, 8, 8)
    dg = TorchProgram(model, (x,)).graph()
    with torch.no_grad():
        want = model(x)
    with pytest.raises(gp.RewriteError, match=r"by module swaps leaves a forward that fails on the example inputs "
                                              r"\(RuntimeError: shape"):
        remove_blocks(model, dg, find_blocks(dg.ir)[:1], (x,))
    assert not any(isinstance(m, (Skip, ZeroBranch)) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), want)


class _MaskedPolicy(nn.Module):
    """A policy head whose illegal actions are -inf logits: the swap check subtracted -inf from -inf (review)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.head = nn.Linear(8, 16), nn.Linear(16, 6)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16)) for _ in range(3))
        self.register_buffer("illegal", torch.tensor([False, True, False, False, True, False]))

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.head(h).masked_fill(self.illegal, float("-inf"))


def test_outputs_with_infinities_the_original_has_too_do_not_refuse_blocks():
    torch.manual_seed(0)
    model, x = _MaskedPolicy().eval(), torch.randn(4, 8)
    _, report = gp.prune(model, (x,), ratio=0.5, targets=["blocks"], measure_latency=False,
                         calib=[torch.randn(4, 8) for _ in range(3)])
    assert len(report.plan.blocks) == 1  # floor(0.5 * 3)
    with torch.no_grad():
        assert torch.isinf(model(x)[:, 1]).all() and torch.isfinite(model(x)[:, 0]).all()
