"""Modules whose forward reads tensor data are recorded as one call each (graphprune/frontends/torch_opaque.py): the
per-expert loop of DBRX (and of Mixtral before transformers 5) made the whole model untraceable; now its experts
stay whole, said in the report, and the rest of the model is pruned and proven."""
from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import graphprune as gp
from graphprune.reasons import OPAQUE


class _LoopedExperts(nn.Module):
    """The classic MoE loop: ``for e in mask.sum(...).nonzero(): idx, tok = torch.where(mask[e]); ...``."""

    def __init__(self, d: int = 32, hidden: int = 64, experts: int = 4, k: int = 2) -> None:
        super().__init__()
        self.k, self.experts = k, experts
        self.router = nn.Linear(d, experts, bias=False)
        self.w1 = nn.Parameter(torch.randn(experts, hidden, d) * 0.1)
        self.w2 = nn.Parameter(torch.randn(experts, d, hidden) * 0.1)

    def forward(self, x):
        b, n, d = x.shape
        x = x.reshape(-1, d)
        weights, top = torch.topk(self.router(x).softmax(-1), self.k, -1)
        out = torch.zeros_like(x)
        mask = F.one_hot(top, self.experts).permute(2, 1, 0)
        for e in torch.greater(mask.sum((-1, -2)), 0).nonzero():
            idx, tok = torch.where(mask[e[0]])
            y = F.linear(F.relu(F.linear(x[tok], self.w1[e[0]])), self.w2[e[0]]) * weights[tok, idx, None]
            out.index_add_(0, tok, y)
        return out.reshape(b, n, d)


class _Block(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.h, self.qkv, self.o = heads, nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.moe, self.up, self.down = _LoopedExperts(d), nn.Linear(d, 96), nn.Linear(96, d)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.h, -1).permute(2, 0, 3, 1, 4)
        x = x + self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1))
        x = x + self.moe(x)
        return x + self.down(torch.relu(self.up(x)))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.blocks, self.head = nn.Linear(16, 32), nn.ModuleList(_Block() for _ in range(2)), nn.Linear(32, 8)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


def test_a_module_that_reads_data_runs_whole_and_the_rest_is_pruned_and_proven():
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 8, 16)
    experts = [b.moe.w1.detach().clone() for b in model.blocks]
    graph = gp.trace(model, (x,))
    frozen = [g for g in graph.groups if not g.prunable and g.frozen[0].kind == OPAQUE]
    assert frozen and "module 'blocks.0.moe' (_LoopedExperts), whose forward reads tensor data" in str(frozen[0].frozen[0])
    # the reason names the read and its line, which the user rewrites to prune inside the module
    lines, first = inspect.getsourcelines(_LoopedExperts.forward)
    read = first + next(i for i, line in enumerate(lines) if ".nonzero()" in line)
    assert f"(aten.nonzero.default) at File \"{__file__}\", line {read}, in forward" in str(frozen[0].frozen[0])
    pruned, report = gp.prune(model, (x,), ratio=0.5, verify=True, measure_latency=False,
                              calib=[torch.randn(4, 8, 16), torch.randn(3, 8, 16)])
    assert report.oracle.verdict in ("PASS", "PARTIAL") and report.oracle.checked_groups
    assert all(torch.equal(b.moe.w1, w) for b, w in zip(pruned.blocks, experts))  # the experts as they were
    assert pruned.blocks[0].up.out_features < 96 and pruned.blocks[0].qkv.out_features < 96
    assert any("recorded as one call" in n for n in report.notes)
    assert pruned(torch.randn(5, 8, 16)).shape == (5, 8, 8)


class _ReadsAtTheTop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 2)

    def forward(self, x):
        h = self.a(x)
        return self.b(h[h[:, 0] > 0]) if bool((h[:, 0] > 0).any()) else self.b(h)


def test_a_read_in_the_models_own_forward_is_still_refused_naming_the_line():
    with pytest.raises(gp.TraceError, match=r"reads tensor data"):
        gp.prune(_ReadsAtTheTop().eval(), (torch.randn(4, 8),), measure_latency=False)


class _Gate(nn.Module):
    """Reads data (``nonzero``), and takes one of its inputs inside a dict."""

    def __init__(self, shared: nn.Linear | None = None) -> None:
        super().__init__()
        self.proj = shared or nn.Linear(16, 16)

    def forward(self, x, extra):
        out = x.clone() if getattr(self, "seen", None) is None else x + self.seen[:, :1]
        for i in (x[:, 0] > 0).nonzero().flatten().tolist():  # a Python loop over the data: export cannot take it
            out[i] = out[i] + self.proj(x[i]) + extra["bias"][i]
        return out


class _AroundGate(nn.Module):
    def __init__(self, tied: bool = False, stash: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)
        self.stash, self.gate = stash, _Gate(self.b if tied else None)

    def forward(self, x):
        h = self.a(x)
        if self.stash:
            self.gate.seen = h + 1  # read inside the gate's forward through an attribute: no argument of the call
        return self.c(torch.relu(self.gate(torch.relu(self.b(h)), {"bias": h})))


def test_what_crosses_the_call_keeps_its_channels_or_is_refused():
    """Review: a tensor inside a dict argument, and a weight the module shares with a layer outside, crossed the call
    unfrozen (a silently wrong model with verify=False); a tensor stashed on an attribute was recorded as a constant."""
    x = torch.randn(6, 8)
    graph = gp.trace(_AroundGate().eval(), (x,))
    a = next(g for g in graph.groups if any(m.name == "a.weight" and m.dim == 0 for m in g.members))
    assert not a.prunable and OPAQUE in {r.kind for r in a.frozen}  # 'a' reaches the call through the dict
    tied = gp.trace(_AroundGate(tied=True).eval(), (x,))
    assert not any(m.name.startswith("b.") for g in tied.groups if g.prunable for m in g.members)
    with pytest.raises(gp.TraceError, match=r"module 'gate' reads tensor data, and a tensor the model computed that is "
                                            r"no argument of it"):
        gp.trace(_AroundGate(stash=True).eval(), (x,))


class _Counts(nn.Module):
    def forward(self, x):
        return x * 2, int((x[:, 0] > 0).sum())


class _UsesCount(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.a2, self.count, self.b = nn.Linear(8, 32), nn.Linear(32, 16), _Counts(), nn.Linear(16, 4)

    def forward(self, x):
        h, n = self.count(self.a2(torch.relu(self.a(x))))
        return self.b(h) * n


def test_a_module_whose_returned_values_follow_the_data_is_refused_not_replayed_stale():
    """Review: an int the module returns was replayed as the example's; now a replay that returns other values
    raises a TraceError saying so."""
    torch.manual_seed(0)
    x = torch.randn(6, 8)
    with pytest.raises(gp.TraceError, match=r"module 'count' \(_Counts\), recorded as one call.*returned another structure "
                                            r"or other values than when traced"):
        gp.prune(_UsesCount().eval(), (x,), ratio=0.5, verify=True, measure_latency=False)


def test_hooks_run_once_and_the_modules_own_forward_attribute_is_left_alone():
    """Review: the replay called the module, so its hooks ran twice (once recorded around the call); and an instance
    ``forward`` (accelerate's hooks) was deleted by tracing."""
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 8, 16)
    model.blocks[0].moe.register_forward_hook(lambda m, i, o: o * 2)
    patched = model.blocks[1].moe.forward
    model.blocks[1].moe.forward = patched
    graph = gp.trace(model, (x,))
    assert vars(model.blocks[1].moe)["forward"] is patched and graph.groups
    pruned, report = gp.prune(model, (x,), ratio=0.5, verify=True, measure_latency=False)
    assert report.oracle.verdict in ("PASS", "PARTIAL")


def test_every_module_of_the_class_that_reads_is_recorded_whole_at_once():
    """Review: one module per recording, at most 8: a 9-layer DBRX was refused."""
    model = _Net().eval()
    model.blocks = nn.ModuleList(_Block() for _ in range(9))
    graph = gp.trace(model, (torch.randn(2, 8, 16),))
    assert sum(n.op == "python.opaque_call" for n in graph.ir.nodes) == 9


def _dbrx():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.DbrxConfig(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=100, use_cache=False,
                                  attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                                  ffn_config=dict(ffn_hidden_size=64, moe_num_experts=4, moe_top_k=2))
    torch.manual_seed(0)
    return transformers.DbrxForCausalLM(cfg).eval()


def test_a_checkpoint_whose_forward_reads_data_is_pruned_in_memory_from_its_folder(tmp_path):
    """``hf.prune(folder)`` estimates the in-memory prune on the meta device, where DBRX's expert loop cannot run
    (``.item()`` of a meta tensor): the whole call failed. Now the weights alone must fit; the estimate is made
    on the loaded model and the prune goes on."""
    _dbrx().save_pretrained(tmp_path / "src")
    model, report = gp.hf.prune(tmp_path / "src", ratio=0.5, measure_latency=False, verify=True)
    assert report.oracle.passed
    assert report.params_after < report.params_before
    assert model.transformer.blocks[0].norm_attn_norm.attn.Wqkv.out_features < 32 + 2 * 16  # KV groups 2 -> 1
    with pytest.raises(gp.PlanError, match=r"holds .* of weights, more than max_memory .* its forward cannot be "
                                           r"estimated on the meta device \(.*\)\. Pass out='pruned/'"):
        gp.hf.prune(tmp_path / "src", ratio=0.5, max_memory="64KiB")
