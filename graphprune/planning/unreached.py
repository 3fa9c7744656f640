"""Groups whose sizes the rewrite's proof could not carry, frozen so that a plan can be made again.

A forward may spell a size as a number the trace records and no rewrite reaches: PixArt views its
caption projection's output at ``hidden_states.shape[-1]``, another tensor's width, and SD3 reshapes
its position table at the literal ``pos_embed_max_size``. Nothing in the graph says so before a
pruned forward fails. When it fails, the rewrite names the line and the pruned groups whose sizes
that line spells (backends/torch_guards.py ``unreached_groups``); the pipeline freezes those groups
with a reason and plans again, so the default call prunes the rest instead of refusing the model.
A plan the user gave is never changed: its failure is raised.
"""
from __future__ import annotations

from typing import Callable

from ..errors import PlanError, RewriteError, warn
from ..graph import DependencyGraph
from ..reasons import COMPUTED, Reason

MAX_ROUNDS = 4  # each round freezes at least one group; models seen need one


def freeze_unreached(dg: DependencyGraph, exc) -> str | None:
    """Freeze the groups ``exc`` (a RewriteError) names; returns the report's note, or None where it
    names none that is not frozen already (then nothing can be learnt and the error stands)."""
    todo = [dg.group(g) for g in exc.groups if dg.group(g).prunable]
    if not todo:
        return None
    cause = str(exc.__cause__ or "").split("\n")[0][:200]
    reason = Reason(COMPUTED, getattr(exc, "detail", "") or (
        f"its size is spelled at {exc.site} as a number the pruned forward did not follow (a literal, or another "
        f"tensor's size): the rewrite's proof failed there" + (f" ({cause})" if cause else "")))
    for g in todo:
        g.frozen.append(reason)
    where: dict[str, int] = {}  # a weight dim holding several groups (a layer's heads) is named once, counted
    for g in todo:
        key = f"{g.members[0].name}[{g.members[0].dim}]"
        where[key] = where.get(key, 0) + 1
    names = ", ".join(k + (f" ({n} groups)" if n > 1 else "") for k, n in list(where.items())[:3])
    more = f" and {len(where) - 3} more" if len(where) > 3 else ""
    return (f"kept {len(todo)} group(s) whole ({names}{more}) and planned again: {reason.detail}. "
            "graph.summary() lists them as frozen; ignore= or targets= choose otherwise")


def replanned(run: Callable, dg: DependencyGraph, given: bool):
    """``run()`` (a prune: plan, oracle, compensate, apply; returns (pruned, report)), again after each
    RewriteError that names groups to freeze, up to MAX_ROUNDS times; the notes go to the report and a
    PruneWarning. ``given``: the plan is the user's, which is never changed."""
    notes: list[str] = []
    frozen_before = {g.id: list(g.frozen) for g in dg.groups}
    try:
        return _rounds(run, dg, given, notes)
    finally:  # the caller's graph (graph=, reused by hf's retry) keeps no freeze of this call's plans
        for g in dg.groups:
            g.frozen[:] = frozen_before[g.id]


def _rounds(run: Callable, dg: DependencyGraph, given: bool, notes: list[str]):
    first: RewriteError | None = None
    for round_ in range(MAX_ROUNDS + 1):
        try:
            pruned, report = run()
        except RewriteError as exc:
            note = freeze_unreached(dg, exc) if not given and round_ < MAX_ROUNDS else None
            if note is None:
                raise
            warn(note)
            notes.append(note)
            first = first or exc
            continue
        except PlanError as exc:
            if first is None:
                raise
            # what is left after keeping those groups whole cannot be planned: the outcome first (a Mamba whose
            # every group the forward spells read as "the pruned model no longer runs", its end "nothing can be
            # pruned"), then the rewrite's error, which is the cause
            raise RewriteError(f"planning again failed after keeping whole the groups whose sizes the forward "
                               f"spells: {exc}. Why they were kept whole: {first}",
                               reasons=first.reasons, modules=first.modules) from exc
        report.notes += notes
        return pruned, report
    raise AssertionError("unreachable: the last round raises")
