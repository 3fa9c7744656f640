"""The exactness oracle: a pruned model must equal the *masked original*.

The masked original is the original exported program run with the planned
channels forced to zero at every value they reach. Where every op on a group's
path treats channels independently, removing the channels and zeroing them are
the same computation, so the two must agree to float tolerance. Groups that
cross a normalisation or a mean over the channel dim (``Group.inexact``) cannot
agree by nature; the oracle checks the exact part of the plan and names the rest.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any

import torch

from .backends.torch_module import rewrite
from .frontends.torch_export import _WRAPPERS, op_id, wrapped_body_index
from .graph import DependencyGraph
from .planner import PrunePlan, keep_masks


@dataclass
class OracleReport:
    """Outcome of :func:`verify`."""

    max_abs_diff: float
    atol: float
    checked_groups: list[int]
    inexact_groups: dict[int, list[str]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def __str__(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        s = (f"oracle {verdict}: max |pruned - masked original| = {self.max_abs_diff:.3g} (atol {self.atol:g}) "
             f"over {len(self.checked_groups)} exact group(s)")
        if self.inexact_groups:
            s += f"; {len(self.inexact_groups)} pruned group(s) not oracle-exact, not checked: " + "; ".join(
                f"group {g}: {r[0]}" for g, r in list(self.inexact_groups.items())[:3])
        return s


class _MaskedInterpreter(torch.fx.Interpreter):
    def __init__(self, gm: torch.fx.GraphModule, masks: dict[str, list[tuple[int, torch.Tensor]]],
                 prefix: str = "") -> None:
        super().__init__(gm)
        self.masks = masks
        self.prefix = prefix  # inlined subgraphs' values are named "<wrapper node>/<node>" in the IR

    def run_node(self, n: torch.fx.Node) -> Any:
        if n.op == "call_function" and op_id(n.target) in _WRAPPERS:
            return self._run_wrapper(n)
        out = super().run_node(n)
        if n.op != "call_function" or n.target is operator.getitem:
            return out
        if isinstance(out, (tuple, list)):
            return type(out)(self._mask(f"{self.prefix}{n.name}.{i}", o) for i, o in enumerate(out))
        return self._mask(self.prefix + n.name, out)

    def _run_wrapper(self, n: torch.fx.Node) -> Any:
        """Run a context-wrapping higher-order op's body with masks inside it too."""
        args, _ = self.fetch_args_kwargs_from_env(n)
        at = wrapped_body_index(n)
        sub = args[at]
        ctx = (torch.set_grad_enabled(bool(args[0])) if op_id(n.target) == "python.wrap_with_set_grad_enabled"
               else torch.autocast(*args[:at]))
        with ctx:
            return _MaskedInterpreter(sub, self.masks, f"{self.prefix}{n.name}/").run(*args[at + 1:])

    def _mask(self, name: str, t: Any) -> Any:
        if name not in self.masks or not isinstance(t, torch.Tensor) or not t.is_floating_point():
            return t
        for d, m in self.masks[name]:
            shape = [1] * t.dim()
            shape[d] = -1
            t = torch.where(m.to(t.device).view(shape), t, torch.zeros((), dtype=t.dtype, device=t.device))
        return t


def masked_original(dg: DependencyGraph, plan: PrunePlan, args: tuple, kwargs: dict | None = None) -> Any:
    """Run the original exported program with the plan's channels zeroed everywhere."""
    ep = dg.extra["ep"]
    per_value: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for (value, d), mask in keep_masks(dg, plan).items():
        if dg.ir.values[value].kind == "act":
            per_value.setdefault(value, []).append((d, torch.as_tensor(mask)))
    gm = ep.module()
    flat = torch.utils._pytree.tree_leaves((tuple(args), dict(kwargs or {})))
    with torch.no_grad():
        return _MaskedInterpreter(gm, per_value).run(*flat)


def max_abs_diff(a: Any, b: Any) -> float:
    la = [t for t in torch.utils._pytree.tree_leaves(a) if isinstance(t, torch.Tensor)]
    lb = [t for t in torch.utils._pytree.tree_leaves(b) if isinstance(t, torch.Tensor)]
    if len(la) != len(lb):
        return float("inf")
    worst = 0.0
    for x, y in zip(la, lb):
        if x.shape != y.shape:
            return float("inf")
        if x.numel():
            worst = max(worst, float((x.detach().double() - y.detach().double()).abs().max()))
    return worst


def _variants(args: tuple, kwargs: dict | None, trials: int) -> list[tuple[tuple, dict]]:
    """The example inputs, plus ``trials`` random inputs of the same shapes and dtypes (keyword
    inputs too: Hugging Face models take input_ids=...): one example can hide a wrong rewrite
    behind a dead ReLU or a tiny activation. Integer inputs stay within their observed range
    (token ids, masks), so they stay valid."""
    out = [(args, dict(kwargs or {}))]
    gen = torch.Generator().manual_seed(1234)

    def fresh(a: Any) -> Any:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            scale = float(a.float().std()) if a.numel() > 1 else 1.0
            return (torch.randn(a.shape, generator=gen) * (scale or 1.0)).to(a.dtype)
        if isinstance(a, torch.Tensor) and a.dtype in (torch.int64, torch.int32) and a.numel():
            return torch.randint(int(a.min()), int(a.max()) + 1, a.shape, generator=gen).to(a.dtype)
        return a

    for _ in range(trials):
        out.append((tuple(fresh(a) for a in args), {k: fresh(v) for k, v in (kwargs or {}).items()}))
    return out


def verify(model: torch.nn.Module, args: tuple, plan: PrunePlan, graph: DependencyGraph | None = None,
           kwargs: dict | None = None, atol: float = 1e-5, trials: int = 2) -> OracleReport:
    """Hold a plan to the oracle without touching ``model``.

    A copy of the (unpruned) model is pruned with the plan's exact groups and
    compared with the masked original, on the example inputs and ``trials``
    random inputs of the same shapes; inexact pruned groups are listed, not
    silently passed.

    Example:
        >>> import torch, graphprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)).eval()
        >>> x = (torch.randn(3, 4),)
        >>> g = graphprune.trace(m, x)
        >>> plan = graphprune.plan(g, m, ratio=0.5)
        >>> graphprune.verify(m, x, plan, g).passed
        True
    """
    from .api import trace

    args = args if isinstance(args, tuple) else (args,)
    dg = graph or trace(model, args, kwargs)
    inexact = {gid: dg.group(gid).inexact for gid, idx in plan.pruned.items() if idx and dg.group(gid).inexact}
    exact_plan = plan.restricted(g for g in plan.pruned if g not in inexact)
    pruned = copy.deepcopy(model)
    rewrite(pruned, dg, exact_plan, args, kwargs)
    worst = 0.0
    for inputs, kw in _variants(args, kwargs, trials):
        expected = masked_original(dg, exact_plan, inputs, kw)
        with torch.no_grad():
            got = pruned(*inputs, **kw)
        worst = max(worst, max_abs_diff(got, expected))
    checked = [g for g, idx in exact_plan.pruned.items() if idx]
    return OracleReport(worst, atol, checked, inexact)
