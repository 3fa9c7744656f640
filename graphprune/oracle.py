"""The exactness oracle, for any Program: a pruned model must equal the *masked original*.

The masked original is the original model run with the planned channels forced to zero
at every value they reach. Where every op on a group's path treats channels
independently, removing the channels and zeroing them are the same computation, so the
two must agree to float tolerance. Groups that cross a normalisation or a mean over the
channel dim (``Group.inexact``) cannot agree by nature; the oracle checks the exact part
of the plan and names the rest.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import RewriteError, TraceError, warn
from .planning.plan import PrunePlan, block_masks, keep_masks
from .reasons import Reason
from .util.compare import gaps


@dataclass
class OracleReport:
    """Outcome of an oracle run."""

    max_abs_diff: float
    atol: float
    checked_groups: list[int]
    inexact_groups: dict[int, list[Reason]] = field(default_factory=dict)  # str(reason): the sentence
    runtime: str = ""  # what ran both models, where it is not PyTorch ("onnxruntime")
    # the error relative to each output's magnitude: max |diff| / max(1, max |output|), worst output
    scaled_diff: float | None = None
    checked_blocks: list[str] = field(default_factory=list)  # residual branches removed whole
    logits: list[str] = field(default_factory=list)  # softmax/sigmoid outputs compared at these inputs (Program.oracle_views)
    precision: str = ""  # "float16" / "bfloat16" where the model computes in it (the atol is then its own)
    # after a FAIL: the traced graph, nothing masked, against the model itself on the example inputs. Above
    # atol the trace took another path than the model runs (PaliGemma under transformers' tracing branch):
    # the masked original is then no reference, and the FAIL says nothing of the plan
    trace_gap: float | None = None
    # the largest |output| of the masked original over the oracle inputs: 0 where every output is zero
    # (a fresh ControlNet's zero-initialised output convolutions), and then nothing was compared; at or
    # under atol (a randomly initialised MONAI EfficientNet's 1e-13 logits) no difference could fail
    signal: float | None = None
    # after a FAIL, the model's own float32 rounding (its outputs against a float64 twin's, scaled as the gap): a
    # gap within NOISE_MARGIN times it is rounding, not the plan (SKNet-50: 1.3e-5 against an atol of 1e-5)
    float_noise: float | None = None
    # after a FAIL: the forward samples (two runs at other seeds differ, VITS's noise). Every oracle run draws from
    # one seed, which matches the draws only where they are made at shapes the plan leaves alone
    random: bool = False
    # after a FAIL: a number the pruned forward computes from a pruned size (Program.moved_values), as the
    # RewriteError naming the groups to keep whole; prune raises it (and plans again), verify() reports it
    moved: Exception | None = field(default=None, repr=False, compare=False)
    nonfinite: bool = False  # the masked original gave NaN or inf somewhere on the oracle inputs
    # after a FAIL: where computed floats meet a step (sign, a comparison, rounding, arg-max): a value that float
    # rounding moves across the step flips there, by a whole step, however small the rounding (afis' minutiae net)
    steps: list[str] = field(default_factory=list)

    @property
    def vacuous(self) -> bool:
        """Something was checked, but every output is too small for any difference to fail."""
        return self.signal is not None and self.signal <= self.atol and bool(self.checked_groups or self.checked_blocks)

    @property
    def tolerance(self) -> float:
        return max(self.atol, NOISE_MARGIN * (self.float_noise or 0.0))

    @property
    def passed(self) -> bool:
        return (self.max_abs_diff if self.scaled_diff is None else self.scaled_diff) <= self.tolerance

    @property
    def verdict(self) -> str:
        """PASS (every pruned group and block checked), FAIL, PARTIAL where some pruned groups were checked
        and others are not oracle-exact (a Data2Vec-audio said PASS over 2 checked groups of 19 cut), or
        NOT CHECKED where none was: a PASS would be over nothing."""
        if not self.passed:
            return "FAIL"
        if self.vacuous:
            return "NOT CHECKED"
        if not self.inexact_groups:
            return "PASS"
        return "PARTIAL" if self.checked_groups or self.checked_blocks else "NOT CHECKED"

    def __str__(self) -> str:
        verdict = self.verdict
        where = f" ({self.runtime})" if self.runtime else ""
        scaled = ""
        if self.scaled_diff is not None and self.scaled_diff < self.max_abs_diff:
            # float error grows with the values summed: outputs beyond 1 (box coordinates) are judged relatively
            scaled = f", {self.scaled_diff:.3g} relative to the output's magnitude"
        noise = (f"; within {NOISE_MARGIN:g}x the model's own float32 rounding, {self.float_noise:.3g} against a float64 "
                 "copy" if self.tolerance > self.atol else "")
        s = (f"oracle {verdict}{where}: max |pruned - masked original| = {self.max_abs_diff:.3g}{scaled} "
             f"(atol {self.atol:g}{' for a ' + self.precision + ' model' if self.precision else ''}{noise}) "
             f"over {len(self.checked_groups)} exact group(s)")
        if self.checked_blocks:
            s += f" and {len(self.checked_blocks)} removed block(s)"
        if self.logits:
            s += f", softmax/sigmoid output(s) compared at their logits ({', '.join(self.logits[:2])})"
        if self.vacuous and self.signal == 0 and self.nonfinite:
            s += (" - but every output is zero, NaN or inf on the oracle inputs (a log or a division of an input "
                  "the oracle drew at random, times zero-initialised output layers), so the comparison says nothing: "
                  "verify once the outputs depend on the input, at inputs where they are finite")
        elif self.vacuous and self.signal == 0:
            s += (" - but every output is zero on the oracle inputs (zero-initialised output layers, as a fresh "
                  "ControlNet's, or a last ReLU that no input passes at random weights), so the comparison says "
                  "nothing: verify once the outputs depend on the input")
        elif self.vacuous:
            s += (f" - but no output exceeds {self.signal:.3g} on the oracle inputs, under the atol, so no difference "
                  "could fail (activations that vanish with depth, as in a randomly initialised deep net): verify "
                  "with trained weights")
        if not self.checked_groups and not self.inexact_groups and not self.checked_blocks:
            s += " - nothing was pruned, so there was nothing to check"
        if self.inexact_groups:
            s += f"; {len(self.inexact_groups)} pruned group(s) not oracle-exact, not checked: " + "; ".join(
                f"group {g}: {r[0]}" for g, r in list(self.inexact_groups.items())[:3])
        if self.moved is not None and not self.passed:
            s += f". Why: {str(self.moved).splitlines()[0][:400]}"
        if self.random and not self.passed:
            s += (". The forward draws random numbers (two runs at other seeds differ): both models draw from one seed, "
                  "alike only where they draw at shapes the plan leaves alone, so this FAIL may be the draws', not the "
                  "plan's. Verify with sampling off (a noise scale of 0), or prune with verify=False and check the "
                  "result on your own data")
        if self.steps and not self.passed:
            s += (f". The model has steps on computed values ({'; '.join(self.steps[:2])}"
                  f"{f' and {len(self.steps) - 2} more' if len(self.steps) > 2 else ''}): the pruned model sums its "
                  "channels in another order, and a value that rounding moves across a step flips by the whole step, "
                  "so this FAIL may be rounding at a few elements, not the plan. Keep the layers before them whole "
                  "(ignore=), or prune with verify=False and check the result on your own data")
        if self.trace_gap is not None and self.trace_gap > self.atol:
            s += (f". The traced graph itself, nothing pruned, is {self.trace_gap:.3g} apart from the model on the "
                  "example inputs: the forward takes another path while traced (a library's branch for tracing, "
                  "or a path the inputs' values choose), so the oracle has no reference and this FAIL does not "
                  "judge the plan; calibrated repairs, fitted on the trace, are suspect too. Prune with "
                  "verify=False and no calib=, and check the result on your own data")
        return s


def max_abs_diff(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """Largest elementwise difference over matching outputs; inf where the outputs differ in
    number or shape, or in where they are NaN or infinite."""
    return gaps(got, want)[0]


def scaled_diff(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """Worst output's max |got - want| / max(1, max |want|): float32 rounding is relative, so an
    output that reaches 300 (a detector's boxes) cannot be held to an absolute 1e-4. NaN and inf
    are compared as :func:`max_abs_diff` does."""
    return gaps(got, want)[1]


def run_oracle(program, plan: PrunePlan, atol: float | None = None, trials: int = 2) -> OracleReport:
    """Prune a copy of ``program`` with the plan's exact groups and compare it with the masked
    original on the program's oracle inputs (its example inputs and ``trials`` more); inexact
    pruned groups are listed, not silently passed. ``program`` is not changed."""
    dg = program.graph()
    # a plan's group ids are its trace's: a forward unrolled per token (Mamba's scan) traced at another length
    # has others, which dg.group named without saying why
    dg.check_plan(plan, lambda gid, size: f"the plan does not fit this trace: group {gid} (size {size}) is not in it. "
                                          "A plan holds the group ids of the trace it was made on: verify it at the "
                                          "inputs it was planned at, or trace and plan again at these")
    inexact = {gid: dg.group(gid).inexact for gid, idx in plan.pruned.items() if idx and dg.group(gid).inexact}
    exact = plan.restricted(g for g in plan.pruned if g not in inexact)
    masks = {**keep_masks(dg, exact), **block_masks(dg, exact)}
    pruned = program.apply(exact)
    masked = {key[0] for key in masks}
    views = {k: v for k, v in program.oracle_views().items() if v[0] not in masked}  # a masked value differs by design
    worst = scaled = signal = 0.0
    nonfinite = False
    for seed, batch in enumerate(program.oracle_inputs(trials)):
        try:
            with program.seeded(seed):
                got = _viewed(pruned, batch, views)
        except Exception as exc:  # noqa: BLE001 - a pruned copy that cannot run is a refused plan, said plainly
            why = (str(exc).strip().splitlines() or [""])[0][:300]
            raise RewriteError(f"the pruned model fails on the oracle's inputs: {type(exc).__name__}: {why}; the model "
                               "was not changed and nothing was written") from exc
        with program.seeded(seed):
            want = _viewed(program, batch, views, masks)
        gap, rel = gaps(got, want)
        worst, scaled = max(worst, gap), max(scaled, rel)
        # finite values only: matching NaNs compare nothing (k-diffusion's log of a negative sigma the oracle drew,
        # times its zero-initialised output layer, was all NaN and passed); a NaN on one side only fails in gaps
        finite = [np.abs(w[np.isfinite(w)]) for w in map(np.asarray, want) if np.size(w)]
        signal = max([signal] + [float(f.max()) for f in finite if f.size])
        nonfinite = nonfinite or any(f.size < np.size(w) for f, w in zip(finite, [w for w in want if np.size(w)]))
    checked = [g for g, idx in exact.pruned.items() if idx]
    runtime = "onnxruntime" if program.framework == "ONNX" else ""
    report = OracleReport(worst, program.default_atol if atol is None else atol, checked, inexact, runtime, scaled,
                          list(exact.blocks), sorted(v[0] for v in views.values()), program.precision)
    report.signal, report.nonfinite = signal, nonfinite
    if inexact and not checked and not exact.blocks:  # verify=True asked for a proof that covers nothing cut
        first = next(iter(inexact.values()))[0]
        warn(f"the oracle checked none of the {len(inexact)} cut group(s): each crosses a normalisation over its "
             f"channels ({first.detail}), so the pruned model is not proven equal to the masked original. Check "
             "it on your own data, or prune kinds that cut exactly (targets=, graph.summary() marks them)")
    try:  # the forward turned a pruned size into a number: those groups are kept whole instead
        report.moved = None if report.passed else program.moved_values(pruned, exact)
    except RewriteError as exc:  # the re-trace failed where a pruned size is spelled: that names groups too
        report.moved = exc
    except TraceError:  # the pruned copy cannot be traced again: the FAIL stands as measured
        report.moved = None
    report.random = not report.passed and program.draws_random(program.oracle_inputs(0)[0])
    if not report.passed and not report.precision and not report.random:  # (a float64 twin draws other numbers)
        report.float_noise = program.float_noise(program.oracle_inputs(0)[0])  # rounding, or the plan?
    if not report.passed:  # is the reference itself sound? (the trace run unmasked against the model)
        report.trace_gap = program.trace_gap(program.oracle_inputs(0)[0])
        report.steps = step_sites(dg)
    return report


# ops whose output jumps where a float input crosses a threshold
STEPS = frozenset({"sign", "eq", "ne", "gt", "lt", "ge", "le", "floor", "ceil", "round", "argmax", "argmin", "topk",
                   "sort", "argsort", "heaviside", "bucketize", "searchsorted", "Sign", "Equal", "Greater", "Less",
                   "GreaterOrEqual", "LessOrEqual", "Floor", "Ceil", "Round", "ArgMax", "ArgMin", "TopK",
                   "NonMaxSuppression"})


def step_sites(dg) -> list[str]:
    """Where a step op reads a computed float (not a weight, not an integer): :attr:`OracleReport.steps`."""
    values = dg.ir.values
    out = []
    for node in dg.ir.nodes:
        op = node.op.split(".")[1] if node.op.count(".") >= 1 else node.op
        if op not in STEPS:
            continue
        floats = [values[n] for n in node.inputs if n in values and values[n].kind == "act"
                  and ("float" in values[n].dtype or "half" in values[n].dtype)]
        if floats:
            out.append(f"{op} at {node.where()}")
    return out


NOISE_MARGIN = 10.0  # a gap this many times the model's own float32 rounding is rounding too
SOFTMAX_FLOOR = -80.0  # logits this far below their row's largest give probabilities float32 flushes to 0


def softmax_logits(z: np.ndarray, axis: int | None, flattened: bool) -> np.ndarray:
    """Logits as a softmax sees them: shifted so each row's largest is 0 (a softmax ignores a
    shift) and floored at :data:`SOFTMAX_FLOOR` (a -1e9 or float-min mask is a zero probability
    however large), so their error is judged on a scale the probabilities feel, at most 80.
    ``axis=None``: a sigmoid's logits, each clipped to +-80 (beyond it float32 gives 0 or 1)."""
    z = np.asarray(z, dtype=np.float64)
    if axis is None:
        return np.clip(z, SOFTMAX_FLOOR, -SOFTMAX_FLOOR)
    axis %= max(z.ndim, 1)
    if flattened:  # before opset 13 a softmax normalises all axes from ``axis`` on together
        z = z.reshape(z.shape[:axis] + (-1,))
    with np.errstate(invalid="ignore"):  # a row of infinities
        return np.maximum(z - z.max(axis=axis, keepdims=True), SOFTMAX_FLOOR)


def _viewed(program, batch, views: dict[int, tuple[str, int, bool]], masks=None) -> list[np.ndarray]:
    """The program's outputs on ``batch``, those in ``views`` replaced by their softmax's (sigmoid's) logits."""
    seen: dict[str, np.ndarray] = {}
    outs = program.run(batch, masks=masks, capture=[v[0] for v in views.values()],
                       on_capture=lambda name, t: seen.__setitem__(name, t.detach().double().cpu().numpy()))
    return [softmax_logits(seen[views[k][0]], *views[k][1:]) if k in views else out for k, out in enumerate(outs)]
