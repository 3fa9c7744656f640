"""Widths for the runtime: each channel group kept at the multiples its kernels favour (measured),
then the whole model timed at those multiples scaled x1/x2/x4 and the fastest kept."""
from __future__ import annotations

from typing import Callable

from ..errors import PlanError
from .measure import TOLERANCE, alignments, load_profile, time_in_turns


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


def auto_rounding(dg, groups, runtime: str | None, notes: list[str]):
    """round_to="auto": each channel group's measured alignment on ``runtime`` (1 without one)."""
    if runtime is None or not any(g.role == "channel" for g in groups):
        return 1

    profile = load_profile(runtime)
    steps = alignments(dg, groups, profile)
    used = sorted({a for a in steps.values() if a > 1})
    if not used:
        notes.append(f"widths: any channel count runs at full speed on {runtime} here (measured profile)")
        return 1
    kinds = ", ".join(f"{k} x{a}" for k, a in sorted(profile.align.items()) if a > 1)
    notes.append(f"widths: channel counts kept at multiples the {runtime} kernels favour on this machine ({kinds}; "
                 "measured profile; round_to=1 allows any width)")
    return steps


def fastest_alignment(program, runtime: str, steps: dict[int, int], remake: Callable, first, notes: list[str]):
    """The profile times blocks alone; across a whole network a coarser multiple can run faster
    still (a blocked layout kept from layer to layer instead of converted back and forth), so
    the plan is also made with the profile's steps doubled and quadrupled (up to 32) and each is
    timed on ``runtime``, twice taking turns: the fastest is kept, the finer within 3% (finer keeps
    more choice). Returns the kept plan and the multiples it was made at."""
    candidates: list[tuple[int, tuple]] = []
    seen = []
    for factor in (1, 2, 4):
        scaled = {g: min(32, s * factor) if s > 1 else s for g, s in steps.items()}
        if scaled in seen:
            continue
        seen.append(scaled)
        made = first if factor == 1 else remake(scaled)
        if made is None:  # no plan at these multiples (a measured allocation cannot meet the budget with them)
            continue
        candidates.append((max(scaled.values()), made))
    times = time_in_turns(program, [made[0] for _, made in candidates], runtime)
    trials = [(t, step, made) for t, (step, made) in zip(times, candidates)]
    best = min(t[0] for t in trials)
    ms, step, made = next(t for t in trials if t[0] <= best * (1 + TOLERANCE))
    notes.append(f"widths: tried the measured multiples scaled x1/x2/x4 on {runtime}: " +
                 ", ".join(f"up to {s}: {t:.3f} ms" for t, s, _ in trials) + f"; kept up to {step}")
    return made, next(sc for sc in seen if max(sc.values()) == step)
