"""ONNX in, ONNX out: prune_onnx, and the oracle run in onnxruntime."""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from .backends.onnx import apply_plan_onnx
from .errors import PlanError, RewriteError
from .graph import DependencyGraph
from .metrics import count_macs, count_params
from .planner import PrunePlan, check_ratio, keep_masks, make_plan, select_groups
from .report import PruneReport, table


@dataclass
class OnnxOracleReport:
    max_abs_diff: float
    atol: float
    checked_groups: list[int]
    inexact_groups: dict[int, list[str]]

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def __str__(self) -> str:
        s = (f"oracle {'PASS' if self.passed else 'FAIL'} (onnxruntime): max |pruned - masked original| = "
             f"{self.max_abs_diff:.3g} (atol {self.atol:g}) over {len(self.checked_groups)} exact group(s)")
        if self.inexact_groups:
            s += f"; {len(self.inexact_groups)} pruned group(s) not oracle-exact, not checked"
        return s


@dataclass
class OnnxPruneReport(PruneReport):
    latency_before_ms: float | None = None
    latency_after_ms: float | None = None
    path: str = ""

    def __str__(self) -> str:
        text = super().__str__()
        if self.latency_before_ms is not None:
            text += "\n" + table(["onnxruntime latency", "before", "after", "change"], [[
                "median per run", f"{self.latency_before_ms:.3f} ms", f"{self.latency_after_ms:.3f} ms",
                f"{100 * (self.latency_after_ms - self.latency_before_ms) / self.latency_before_ms:+.1f}%"]])
        return text


def probe_inputs(model: onnx.ModelProto, dynamic: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic example inputs: symbolic dims set to ``dynamic``, ints in [0, 2)."""
    rng = np.random.default_rng(seed)
    inits = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else dynamic for d in tt.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        feeds[vi.name] = (rng.integers(0, 2, shape).astype(dtype) if np.issubdtype(dtype, np.integer)
                          else rng.standard_normal(shape).astype(dtype))
    return feeds


def _session(model: onnx.ModelProto):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return _session(model).run(None, feeds)


def masked_onnx(model: onnx.ModelProto, dg: DependencyGraph, plan: PrunePlan) -> onnx.ModelProto:
    """The original graph with pruned positions zeroed (a Where) after every value the plan prunes."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    masks: dict[str, list] = {}
    for (value, d), keep in keep_masks(dg, plan).items():
        v = dg.ir.values[value]
        if v.kind in ("act", "input") and v.dtype.startswith("float") and value not in dg.ir.outputs:
            masks.setdefault(value, []).append((d, keep))
    users = {}
    for n in g.node:
        for k, i in enumerate(n.input):
            users.setdefault(i, []).append((n, k))
    new_nodes = []
    for value, dims in sorted(masks.items()):
        rank = dg.ir.values[value].rank
        mask = np.ones([1] * rank, dtype=np.float32)
        for d, keep in dims:
            shape = [1] * rank
            shape[d] = keep.size
            mask = mask * keep.astype(np.float32).reshape(shape)
        dtype = np.dtype(dg.ir.values[value].dtype)  # the IR knows it: no shape inference per value
        # Where, not Mul: a masked -inf (attention masks) must become 0, and 0 * -inf is nan
        g.initializer.append(numpy_helper.from_array(mask.astype(bool), f"{value}__gp_mask"))
        g.initializer.append(numpy_helper.from_array(np.zeros((), dtype=dtype), f"{value}__gp_zero"))
        for n, k in users.get(value, []):
            n.input[k] = f"{value}__gp_masked"
        new_nodes.append((value, onnx.helper.make_node(
            "Where", [f"{value}__gp_mask", value, f"{value}__gp_zero"], [f"{value}__gp_masked"],
            name=f"{value}__gp_mask_where")))
    # Insert each Mul right after its producer to keep the graph topologically sorted.
    after = {}
    for value, node in new_nodes:
        after.setdefault(value, []).append(node)
    ordered = [node for value, node in new_nodes if value in {i.name for i in g.input}]
    for n in list(g.node):
        ordered.append(n)
        for o in n.output:
            ordered.extend(after.get(o, []))
    del g.node[:]
    g.node.extend(ordered)
    del g.value_info[:]
    return out


def verify_onnx(model: onnx.ModelProto, dg: DependencyGraph, plan: PrunePlan, atol: float = 1e-4,
                feeds: dict | None = None) -> OnnxOracleReport:
    """Pruned (exact groups) vs masked original, both run in onnxruntime."""
    inexact = {gid: dg.group(gid).inexact for gid, idx in plan.pruned.items() if idx and dg.group(gid).inexact}
    exact = plan.restricted(g for g in plan.pruned if g not in inexact)
    # Masks follow the analysis shapes, taken with dynamic dims at 1 (frontends/onnx.concretize):
    # a dim merging batch and heads is heads alone there, so the oracle runs at those sizes.
    feeds = feeds or probe_inputs(model, dynamic=1)
    want = _run(masked_onnx(model, dg, exact), feeds)
    got = _run(apply_plan_onnx(model, dg, exact), feeds)
    diff = max((float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.shape == b.shape
                else float("inf") for a, b in zip(got, want) if a.size), default=0.0)
    return OnnxOracleReport(diff, atol, [g for g, i in exact.pruned.items() if i], inexact)


def latency_ms(model: onnx.ModelProto, feeds: dict, repeat: int = 30) -> float:
    sess = _session(model)
    sess.run(None, feeds)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def plan_onnx(dg: DependencyGraph, ratio: float = 0.3, importance: str = "auto", round_to: int = 1,
              ignore: Iterable[str] = (), roles: Iterable[str] | None = None,
              targets: Iterable[str] | str | None = None, calib=None, compensate: bool | str | None = None,
              notes: list[str] | None = None, _ctx: list | None = None) -> PrunePlan:
    """Rank and plan like :func:`graphprune.plan`, for a model loaded with :func:`graphprune.load_onnx`;
    data-aware criteria run the calibration batches in onnxruntime."""
    from .api import resolve_importance
    from .calib.onnx_calib import collect_onnx, initializer_tensors, onnx_batches
    from .importance import CRITERIA, ScoreContext, attach_stats, score_groups

    check_ratio(ratio)
    name = resolve_importance(importance, calib, compensate)
    groups = select_groups(dg, roles, ignore, targets)
    ctx = ScoreContext(dg, initializer_tensors(dg))
    crit = CRITERIA.get(name)
    if crit is not None and crit.needs == "grad":
        raise PlanError(f"importance '{name}' needs gradients, which an ONNX model does not give; use obs, "
                        "activation or fluctuation with calib=, or a weight criterion")
    if crit is not None and crit.needs == "calib" and calib is not None:
        batches = onnx_batches(dg.extra["onnx"], calib)
        attach_stats(ctx, groups, name, lambda sites, gram: collect_onnx(dg.extra["onnx"], batches, sites, gram))
    plan = make_plan(groups, score_groups(name, ctx, groups), ratio, round_to)
    if notes is not None:
        notes.extend(ctx.notes)
    if _ctx is not None:
        _ctx.append((name, ctx))
    return plan


def compensate_onnx(dg: DependencyGraph, plan: PrunePlan, calib, mode: str, stats=None):
    """Refit every layer that loses input channels (Grams of the original model, from onnxruntime)."""
    from .calib.compensate import Compensation, affected_sites, refit_from_stats
    from .calib.onnx_calib import collect_onnx, initializer_tensors, onnx_batches
    from .calib.sites import find_sites

    result = Compensation()
    todo = affected_sites(dg, plan, find_sites(dg), result)
    have = dict(stats or {})
    missing = [s for s, _ in todo if have.get(s.node) is None or have[s.node].gram is None]
    if missing:
        have.update(collect_onnx(dg.extra["onnx"], onnx_batches(dg.extra["onnx"], calib), missing,
                                 {s.node for s in missing}))
    refit_from_stats(dg, todo, initializer_tensors(dg), have, mode, set(), result)
    return result


def prune_onnx(src: str | os.PathLike, dst: str | os.PathLike, ratio: float = 0.3, importance: str = "auto",
               round_to: int = 8, ignore: Iterable[str] = (), roles: Iterable[str] | None = None,
               verify: bool = True, atol: float = 1e-4, measure_latency: bool = True,
               targets: Iterable[str] | str | None = None, calib=None,
               compensate: bool | str | None = None) -> OnnxPruneReport:
    """Prune an ONNX file into a smaller one. Nothing is written unless every check passes.

    ``round_to`` defaults to 8: onnxruntime's CPU convolutions run channel counts that
    are not multiples of 8 far slower (docs/benchmarks.md), which can erase the savings.
    ``calib``: batches of inputs (dicts by input name, or tuples in input order) run in
    onnxruntime: channels are ranked from data and, unless ``compensate=False``, the layers
    that lose inputs are refit (their initializers change; the oracle checks the plan
    without compensation).

    Example:
        >>> report = graphprune.prune_onnx("model.onnx", "slim.onnx", ratio=0.3)   # doctest: +SKIP
        >>> print(report)                                                         # doctest: +SKIP
    """
    from .api import _compensation_mode, load_onnx

    check_ratio(ratio)
    mode = _compensation_mode(compensate, calib)
    if mode == "sequential":
        raise PlanError("compensate='sequential' runs the traced torch program; ONNX models take 'refit' or 'bias'")
    dst = Path(dst)
    dg = load_onnx(src)
    model = dg.extra["onnx"]
    notes: list[str] = []
    got: list = []
    plan = plan_onnx(dg, ratio, importance, round_to, ignore, roles, targets, calib, compensate, notes, got)
    name, ctx = got[0]
    comp = None
    if mode is not None and not plan.empty:
        comp = compensate_onnx(dg, plan, calib, mode, ctx.stats)
    updates = {k: v.numpy() for k, v in comp.updates.items()} if comp is not None else None
    pruned = apply_plan_onnx(model, dg, plan, updates)
    try:
        onnx.checker.check_model(pruned, full_check=True)
    except Exception as exc:
        raise RewriteError(f"the pruned model fails onnx.checker: {exc}") from exc
    feeds = probe_inputs(model)
    before, after = _run(model, feeds), _run(pruned, feeds)
    if [a.shape for a in before] != [a.shape for a in after]:
        raise RewriteError(f"pruned outputs have shapes {[a.shape for a in after]}, not {[a.shape for a in before]}")
    oracle = verify_onnx(model, dg, plan, atol) if verify else None
    if oracle is not None and not oracle.passed:
        raise RewriteError(f"{oracle}; nothing was written to {dst}")
    from .api import shape_fn

    shape_after = shape_fn(dg, plan)
    report = OnnxPruneReport(count_params(dg.ir), count_params(dg.ir, shape_after), count_macs(dg.ir),
                             count_macs(dg.ir, shape_after),
                             {gid: (size - len(plan.pruned.get(gid, [])), size) for gid, size in plan.sizes.items()},
                             plan, oracle, importance=name, compensation=comp, notes=notes, path=str(dst))
    if measure_latency:
        report.latency_before_ms, report.latency_after_ms = latency_ms(model, feeds), latency_ms(pruned, feeds)
    write_atomic(pruned, dst)
    return report


def write_atomic(model: onnx.ModelProto, dst: Path) -> None:
    """Deterministic bytes, renamed into place only when complete."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".onnx.tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString(deterministic=True))
        os.replace(tmp, dst)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

