"""Widths for the runtime: each channel group kept at the multiples its kernels favour (measured),
then the whole model timed at those multiples scaled x1/x2/x4 and the fastest kept."""
from __future__ import annotations

from typing import Callable

from ..calib.sites import find_sites
from ..errors import PlanError
from .budget import BUDGET_SLACK, shortfall
from .measure import alignments, load_profile
from .placement import CPU, Placement
from .turns import time_in_turns

# Of the whole-model plans, one within 1% of the fastest keeps finer multiples and less tilt: a tie-break for
# plans the timing cannot tell apart. At 3% (before 2026-12-05) it gave up measured speed for a preference no
# measurement supported (ResNet-50 at 80% of the MACs kept multiples of 8 at 82.9 ms over 16 at 80.6).
PLAN_TOLERANCE = 0.01
# Where the profile favours no multiple for a model with convolutions (eager PyTorch's float32 kernels here: a conv
# block costs the same from 33 to 48 channels, then steps), the whole model is still timed at these: MobileNetV2 at
# 80% of the MACs ran 0.90x as fast as the original at two threads at any width, 1.11x so (docs/runtime.md, "Eager
# PyTorch").
FLAT_MULTIPLES = (1, 8, 16)


def resolve_runtime(runtime: str | None, program) -> str | None:
    """The runtime a prune targets: ``"auto"`` is the program's own (onnxruntime for an ONNX model,
    torch eager for a PyTorch one); None measures nothing."""
    if runtime is None:
        return None
    if runtime == "auto":
        return program.runtimes[0] if program.runtimes else None
    if runtime not in program.runtimes:
        raise PlanError(f"runtime {runtime!r} is not one a {program.framework} model is measured on; choose one of "
                        f"{list(program.runtimes)}, 'auto' or None")
    return runtime


def auto_rounding(dg, groups, runtime: str | None, notes: list[str], where: Placement = CPU):
    """round_to="auto": each channel group's measured alignment on ``runtime`` (1 without one), for a
    PyTorch model on its device in its dtype (``where``)."""
    if runtime is None or not any(g.role == "channel" or g.kind == "group_channel" for g in groups):
        return 1

    profile = load_profile(runtime, where=where)
    on = "" if where.default or runtime != "torch" else f" {where.device} {where.dtype}"
    steps = alignments(dg, groups, profile)
    used = sorted({a for a in steps.values() if a > 1})
    if not used and (not profile.measured or not any(s.kind == "conv" for s in find_sites(dg))):
        how = "measured" if profile.measured else "pinned"
        notes.append(f"widths: any channel count runs at full speed on {runtime}{on} here ({how} profile)")
        return 1
    if not used:  # conv blocks alone ran alike at every width; a whole model still may not (fastest_alignment)
        notes.append(f"widths: blocks alone run as fast at any width on {runtime}{on} here (measured profile); the "
                     f"whole model is timed at multiples of {', '.join(map(str, FLAT_MULTIPLES))} (widths note)")
        return steps
    kinds = ", ".join(f"{k} x{a}" for k, a in sorted(profile.align.items()) if a > 1)
    if profile.measured:
        notes.append(f"widths: channel counts kept at multiples the {runtime}{on} kernels favour on this machine "
                     f"({kinds}; measured profile; round_to=1 allows any width)")
    else:
        notes.append(f"widths: channel counts kept at the multiples GRAPHPRUNE_ALIGN pins ({kinds}; not timed, so the "
                     "same widths on any machine; round_to=1 allows any width)")
    return steps


def pin_for(align: dict[str, int], factor: int) -> str:
    """The ``GRAPHPRUNE_ALIGN`` value that gives the widths of a measured profile's ``align`` scaled by
    ``factor`` on any machine (a pinned profile is not scaled by timing: the same widths everywhere)."""
    return ",".join(f"{k}={min(32, a * factor) if a > 1 else 1}" for k, a in sorted(align.items()))


def fastest_alignment(program, runtime: str, steps: dict[int, int], remake: Callable, first, notes: list[str],
                      tilts: list | None = None, align: dict[str, int] | None = None, chosen: dict | None = None):
    """The profile times blocks alone; across a whole network a coarser multiple can run faster
    still (a blocked layout kept from layer to layer instead of converted back and forth), so
    the plan is also made with the profile's steps doubled and quadrupled (up to 32; groups with no
    step at each of :data:`FLAT_MULTIPLES`, in eager PyTorch or where no group has one), with each of
    ``tilts`` (``[(beta, exponents)]``, time_tilt.py; None: the budget as solved), and each is
    timed on ``runtime`` against the others, run by run (turns.py; one by one where they do not fit
    in memory together). The first within 1% of the fastest is kept, finer
    multiples before coarser (finer keeps more choice), less tilt before more. ``remake(steps,
    exponents)`` makes a plan, or None where there is none. Returns the kept plan; the note says
    which multiples and tilt it was made with, and with the profile's ``align`` the GRAPHPRUNE_ALIGN
    that makes the same widths on any machine without timing (where the scaled steps are the profile's).
    ``chosen``, where given, receives the kept plan's step per group (what the report's notes cite)."""
    candidates: list[tuple[int, int, tuple | None, tuple, dict]] = []
    seen, repeats = [], []
    # Groups with no measured step try FLAT_MULTIPLES beside the others' x1/x2/x4: in eager PyTorch (oneDNN pads
    # channels to its blocks inside, so blocks alone time alike at every width) and wherever nothing has a step.
    widen = runtime == "torch" or all(s == 1 for s in steps.values())
    for k, factor in enumerate((1, 2, 4)):
        scaled = {g: min(32, s * factor) if s > 1 else FLAT_MULTIPLES[k] if widen else 1 for g, s in steps.items()}
        if scaled in seen:  # multiples capped at 32 (or all 1): the same plans as a smaller factor's; said below
            repeats.append(f"x{factor}: the multiples of x{(1, 2, 4)[seen.index(scaled)]}")
            continue
        seen.append(scaled)
        for tilt in tilts or [None]:
            given = factor == 1 and (tilt is None or not tilt[1])
            try:
                made = first if given else remake(scaled, tilt[1] if tilt else None)
            except PlanError:
                if given:
                    raise
                made = None  # unreachable at these multiples with this tilt
            if made is not None:  # None: a measured allocation cannot meet the budget at these multiples
                candidates.append((factor, max(scaled.values()), tilt, made, scaled))
            else:
                repeats.append(f"x{factor} (up to {max(scaled.values())}){'' if tilt is None else f' tilt {tilt[0]:g}'}"
                               ": cannot meet the budget at these multiples")
    candidates, far = _near_budget(candidates)
    times = time_in_turns(program, [c[3][0] for c in candidates], runtime)
    best = min(times)
    factor, step, tilt, made, scaled = next(c for t, c in zip(times, candidates) if t <= best * (1 + PLAN_TOLERANCE))
    if chosen is not None:
        chosen.update(scaled)
    tried = ", ".join([f"x{f} (up to {s}){'' if tl is None else f' tilt {tl[0]:g}'}: {ms:.3f} ms"
                       for ms, (f, s, tl, *_) in zip(times, candidates)] + far + repeats)
    kept = f"x{factor} (up to {step})" + ("" if tilt is None else f", tilt {tilt[0]:g}")
    if align and not widen:  # these multiples without timing, on any machine: the same bytes everywhere
        kept += (f"; GRAPHPRUNE_ALIGN={pin_for(align, factor)} gives " + ("this plan" if tilt is None else
                 "these multiples (the budget then spent untilted)") + " on any machine, untimed")
    which = "the measured multiples scaled x1/x2/x4" + (
        f" (groups without one at {', '.join(map(str, FLAT_MULTIPLES))})" if widen else "")
    how = getattr(times, "how", None)  # stand-in timers in tests give a plain list
    notes.append(f"widths: tried {which} on {runtime}{f', timed {how}' if how else ''}: {tried}; kept {kept}")
    return made


def _near_budget(candidates: list[tuple]) -> tuple[list[tuple], list[str]]:
    """The candidates that land within :data:`~.budget.BUDGET_SLACK` of the budget (where none does,
    the closest), and a line for each left out: a plan that prunes more than was asked runs faster
    for that alone, so it is not timed against the others."""
    gaps = [shortfall(made[1] if isinstance(made, tuple) and len(made) > 1 else None) for _, _, _, made, _ in candidates]
    near = max(BUDGET_SLACK, min(gaps)) + 1e-12
    far = [f"x{f} (up to {s}){'' if tl is None else f' tilt {tl[0]:g}'}: not timed, {gap:.1%} under the budget"
           for gap, (f, s, tl, *_) in zip(gaps, candidates) if gap > near]
    return [c for gap, c in zip(gaps, candidates) if gap <= near], far
