"""graphprune.util.torch_compat: the one module that touches torch's private internals."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from graphprune.util import torch_compat as tc

PACKAGE = Path(__file__).resolve().parents[1] / "graphprune"
# private attributes read off objects that are not a torch module path (a module, an op)
PRIVATE_ATTRS = {"_parameters", "_buffers", "_overloadpacket", "_schema", "_init_flat_weights"}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.AST) -> list[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id] + parts[::-1] if isinstance(node, ast.Name) else []


def private_torch_uses(source: str) -> list[int]:
    """Lines that import or read a private torch internal (string literals, such as logger
    names, are not code and are not counted)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            if any(_private(p) for p in node.module.split(".")) or any(_private(a.name) for a in node.names):
                found.append(node.lineno)
        elif isinstance(node, ast.Import):
            if any(a.name.split(".")[0] == "torch" and any(_private(p) for p in a.name.split("."))
                   for a in node.names):
                found.append(node.lineno)
        elif isinstance(node, ast.Attribute):
            chain = _dotted(node)
            if node.attr in PRIVATE_ATTRS or (chain[:1] in (["torch"], ["nn"]) and any(map(_private, chain))):
                found.append(node.lineno)
    return sorted(set(found))


def test_the_scan_finds_each_kind_of_private_use():
    src = ("import torch.utils._pytree\n"
           "from torch.fx._pytree import tree_flatten_spec\n"
           "from torch.nn.utils.stateless import _reparametrize_module\n"
           "x = m._parameters\n"
           "y = nn.modules.conv._ConvNd\n"
           "z = torch.__version__\n"
           "w = logging.getLogger('torch._export')\n")
    assert private_torch_uses(src) == [1, 2, 3, 4, 5]


def test_no_private_torch_internal_outside_torch_compat():
    offenders = {str(p.relative_to(PACKAGE)): lines for p in sorted(PACKAGE.rglob("*.py"))
                 if p.name != "torch_compat.py" and (lines := private_torch_uses(p.read_text()))}
    assert offenders == {}


def test_export_flags_set_and_restore_what_torch_export_sets():
    assert not torch.compiler.is_compiling()
    with tc.export_flags():
        assert torch.compiler.is_compiling()
        if hasattr(torch.compiler, "is_exporting"):
            assert torch.compiler.is_exporting()
    assert not torch.compiler.is_compiling()


def test_export_flags_skip_a_flag_the_running_torch_lacks(monkeypatch):
    # torch 2.4 and 2.5 have no _is_exporting_flag (it came in 2.6)
    monkeypatch.delattr(torch.compiler, "_is_exporting_flag", raising=False)
    with tc.export_flags():
        assert torch.compiler.is_compiling()
    assert not torch.compiler.is_compiling()
    assert not hasattr(torch.compiler, "_is_exporting_flag")


def test_module_registries_are_read_and_written_in_place():
    m = nn.BatchNorm1d(4)
    assert set(tc.own_params(m)) == {"weight", "bias"}
    assert set(tc.own_buffers(m)) == {"running_mean", "running_var", "num_batches_tracked"}
    saved = dict(tc.own_params(m)), dict(tc.own_buffers(m))

    tc.set_tensor(m, "weight", nn.Parameter(torch.ones(2)))  # a parameter stays registered as one
    tc.set_tensor(m, "running_mean", torch.zeros(2))
    tc.set_tensor(m, "momentum", 0.5)  # neither: a plain attribute
    assert dict(m.named_parameters())["weight"].shape == (2,)
    assert dict(m.named_buffers())["running_mean"].shape == (2,)
    assert m.momentum == 0.5

    taken = tc.pop_tensor(m, "running_var")
    assert taken.shape == (4,) and "running_var" not in dict(m.named_buffers())
    assert tc.pop_tensor(m, "bias").shape == (4,) and "bias" not in dict(m.named_parameters())

    tc.restore_tensors(m, *saved)
    assert {k: v.shape for k, v in m.named_parameters()} == {"weight": (4,), "bias": (4,)}
    assert dict(m.named_buffers())["running_var"] is saved[1]["running_var"]


def test_a_refreshed_rnn_runs_on_its_replaced_weights():
    rnn = nn.RNN(3, 2, batch_first=True)
    zero = {name: nn.Parameter(torch.zeros_like(p)) for name, p in rnn.named_parameters()}
    for name, p in zero.items():
        tc.set_tensor(rnn, name, p)
    tc.refresh_rnn_weights(rnn)
    out, _ = rnn(torch.randn(1, 5, 3))
    assert torch.equal(out, torch.zeros(1, 5, 2))  # tanh(0) everywhere: the zero weights were used


@pytest.mark.parametrize("layer, base", [(nn.Conv2d(2, 2, 1), "ConvNd"), (nn.ConvTranspose1d(2, 2, 1), "ConvNd"),
                                         (nn.BatchNorm2d(2), "NormBase"), (nn.InstanceNorm1d(2), "NormBase")])
def test_layer_base_classes(layer, base):
    assert isinstance(layer, getattr(tc, base))
    assert not isinstance(nn.Linear(2, 2), getattr(tc, base))


def test_op_names():
    conv = torch.ops.aten.conv2d.default
    assert tc.is_op_overload(conv) and not tc.is_op_packet(conv)
    assert tc.is_op_packet(torch.ops.aten.conv2d) and not tc.is_op_overload(torch.ops.aten.conv2d)
    assert tc.op_qualname(conv) == "aten::conv2d"
    assert tc.op_qualname(torch.ops.aten.add.Tensor) == "aten::add"  # no overload in the name


def test_pytree_specs_mix_with_fx_flattening():
    batch = ((torch.ones(1), [torch.zeros(2)]), {"mask": torch.ones(3)})
    leaves, spec = tc.tree_flatten(batch)
    assert [t.shape for t in tc.fx_flatten_spec(batch, spec)] == [t.shape for t in leaves] == [(1,), (2,), (3,)]
    assert [t.shape for t in tc.tree_leaves(tc.tree_map(lambda t: t[:1], batch))] == [(1,), (1,), (1,)]
