"""Models and data that several test files share (imported as ``helpers``: pytest puts tests/ on
sys.path). Test files import from here, never from each other."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]


def tool(name: str):
    """The module tools/<name>.py (benchmark code: not a package, so loaded from its file)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def n_params(model: nn.Module) -> int:
    """Parameters as torch counts them: ``parameters()`` yields a tied tensor once."""
    return sum(p.numel() for p in model.parameters())


def measured_macs(model: torch.nn.Module, args: tuple, kwargs: dict | None = None) -> int:
    """Multiply-accumulates of one forward, counted by torch's FlopCounterMode (FLOPs / 2).

    FlopCounterMode counts the matmul-like kernels (mm, addmm, bmm, baddbmm, convolution) at
    2 FLOPs per multiply-add and nothing elementwise, as graphprune counts MACs. It has no
    formula for CPU's fused attention kernel (``_scaled_dot_product_flash_attention_for_cpu``),
    so attention runs on the math backend here, whose two bmm's it counts: the same
    L x S x (E + Ev) multiply-adds per head that graphprune charges an SDPA call. It does not see
    inside CPU recurrent kernels (LSTM/GRU), so models with those are not for this check
    (tests/test_recurrent.py counts their MACs by hand).
    """
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(*args, **(kwargs or {}))
    flops = counter.get_total_flops()
    assert flops % 2 == 0, flops
    return flops // 2


def calib_batches(n: int = 6, rows: int = 64, seed: int = 1) -> list[tuple[torch.Tensor]]:
    """``n`` calibration batches of ``rows`` standard-normal rows of 8 features."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(rows, 8, generator=g),) for _ in range(n)]


def rel_err(model, pruned, xs) -> float:
    """Squared output error of ``pruned`` relative to ``model``'s output energy on ``xs``."""
    with torch.no_grad():
        want, got = model(xs), pruned(xs)
    return float(((got - want) ** 2).sum() / (want ** 2).sum())


def tiny_onnx_model(op_type: str = "Relu", domain: str = "") -> onnx.ModelProto:
    """Gemm(4 -> 8) -> ``op_type`` -> Gemm(8 -> 3), dynamic batch: one hidden space of 8."""
    w1 = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32), "w2")
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], transB=1),
             helper.make_node(op_type, ["h"], ["a"], domain=domain),
             helper.make_node("Gemm", ["a", "w2"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w1, w2])
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


class Branch(nn.Module):
    """A pre-norm residual MLP branch, ``x + scale * down(relu(up(norm(x))))``."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.norm, self.up, self.down, self.scale = nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 8), scale

    def forward(self, x):
        return x + self.scale * self.down(torch.relu(self.up(self.norm(x))))


def toy(scales=(1.0, 0.01, 1.0)) -> nn.Module:
    """Linear(4, 8), one residual Branch per scale (a small scale: a block depth pruning removes
    first), Linear(8, 2)."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 8), *[Branch(s) for s in scales], nn.Linear(8, 2)).eval()
    with torch.no_grad():  # fresh norms are alike, and the ONNX exporter would store them once
        for b in m[1:-1]:
            b.norm.weight.add_(torch.randn(8) * 0.1)
            b.norm.bias.add_(torch.randn(8) * 0.1)
    return m


def small_llama() -> nn.Module:
    """A seeded 2-layer Llama (4 query / 2 key-value heads of 8, FFN 64, vocab 64) that can sample from BOS."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=1, eos_token_id=2, use_cache=False)
    return transformers.LlamaForCausalLM(cfg).eval()


def measured_profile(monkeypatch, cache_dir, align: int | dict) -> None:
    """Make this machine's measured profile favour ``align`` (one number for every op kind, or
    {kind: n}) without timing anything: a measured profile, unlike one GRAPHPRUNE_ALIGN pins, lets
    the prune time whole-model plans at its multiples scaled (planning/widths.py)."""
    from graphprune.planning import measure
    from graphprune.planning.placement import CPU

    kinds = dict.fromkeys(measure.KINDS, align) if isinstance(align, int) else dict.fromkeys(measure.KINDS, 1) | align
    monkeypatch.delenv("GRAPHPRUNE_ALIGN", raising=False)
    monkeypatch.setenv("GRAPHPRUNE_CACHE", str(cache_dir))
    monkeypatch.setattr(measure, "measure_profile", lambda runtime, threads=1, where=CPU: measure.Profile(
        runtime, measure.machine_id(runtime, threads, where), threads, kinds, {}, 0.1))
