"""The PruneReport of a prune: counts before and after, the plan's groups and layers, what the planner noted."""
from __future__ import annotations

from collections import Counter

from ..graph import DependencyGraph
from ..metrics import count_macs, count_params
from ..planning.plan import frozen_channels, inexact_pruned, shape_fn
from .prune_report import PruneReport


def build_report(program, dg: DependencyGraph, planned, oracle, comp) -> PruneReport:
    """``planned``: graphprune.pipeline.Planned (the plan and what its making measured)."""
    p = planned.plan
    after = shape_fn(dg, p)
    blocks = ((len(p.blocks), len(planned.depth.scores)) if planned.depth is not None else
              (len(p.blocks), len(dg.blocks)) if p.blocks else None)
    return PruneReport(count_params(dg.ir), count_params(dg.ir, after), count_macs(dg.ir), count_macs(dg.ir, after),
                       {gid: (size - len(p.pruned.get(gid, [])), size) for gid, size in p.sizes.items()}, p, oracle,
                       importance=planned.importance, compensation=comp,
                       notes=[*program.notes, *planned.notes, *uncounted_note(dg), *opaque_note(dg), *buffer_note(dg, p),
                              *fixed_note(dg, p, program.fixed_weights())],
                       fell_back=dict(Counter(planned.ctx.fell_back[g] for g in p.sizes if g in planned.ctx.fell_back))
                       if planned.ctx is not None else {},
                       allocation=planned.allocation, budget=planned.budget,
                       layers=[(v.source or v.name, tuple(v.shape), after(v.name)) for v in dg.ir.params()
                               if v.kind == "param" and v.rank >= 2],
                       path=getattr(program, "path", ""), blocks=blocks, depth=planned.depth,
                       scores=planned.scores, kinds={g: dg.group(g).kind or "channel" for g in p.sizes},
                       names={g: f"{dg.group(g).members[0].name}[{dg.group(g).members[0].dim}]" for g in p.sizes},
                       frozen=frozen_channels(dg.groups), inexact=inexact_pruned(dg, p))


def uncounted_note(dg: DependencyGraph) -> list[str]:
    """A line where the model does work the MAC count leaves out (FFTs: a neural operator's spectral
    layers), so that "MACs after / before" is not read as the speedup ([] where there is none)."""
    spectral = ("aten.stft", "aten.istft", "onnx.DFT", "onnx.STFT")
    ops = sorted({n.op for n in dg.ir.nodes if "fft" in n.op.lower() or n.op in spectral})
    if not ops:
        return []
    count = sum(n.op in ops for n in dg.ir.nodes)
    return [f"MACs count convolutions, linears, matmuls and attention; the {count} FFT op(s) here ({', '.join(ops[:3])}) "
            "are not counted, so MACs after / before can promise more than the model gains: the latency line "
            "measures it"]


def buffer_note(dg: DependencyGraph, plan) -> list[str]:
    """A line where a cut group holds no parameter, only buffers (Performer's random-feature projection): the
    model runs as proved, but code that rebuilds such a buffer at its old size (a redraw while training) will
    not fit it ([] where none)."""
    kind = dg.ir.values
    only = [g for g, idx in plan.pruned.items() if len(idx) and all(kind[m.value].kind == "buffer" for m in dg.group(g).members)]
    if not only:
        return []
    names = sorted({m.name for g in only for m in dg.group(g).members})
    return [f"{len(only)} cut group(s) hold only buffers, no parameters ({', '.join(names[:3])}"
            f"{' ...' if len(names) > 3 else ''}): code that rebuilds them at their old size (a random-feature "
            "redraw) will not fit; ignore= keeps them whole"]


def fixed_note(dg: DependencyGraph, plan, fixed: set[str]) -> list[str]:
    """A line where a cut group's every weight has requires_grad=False while others train (torchlibrosa's STFT and
    mel filterbank: fixed DSP front ends, ranked and cut like learnt layers). [] where none, or where every weight is
    fixed (a model frozen whole for inference says nothing by it)."""
    values = dg.ir.values
    params = {v.source for v in values.values() if v.kind == "param"}
    if not fixed or params <= fixed:
        return []
    cut = [g for g, idx in plan.pruned.items() if len(idx)]
    only = [g for g in cut if (ws := {values[m.value].source for m in dg.group(g).members
                                       if values[m.value].kind == "param"}) and ws <= fixed]
    if not only:
        return []
    names = ", ".join(f"{dg.group(g).members[0].name}[{dg.group(g).members[0].dim}]" for g in only[:3])
    paths = sorted({values[m.value].source.rpartition(".")[0] for g in only for m in dg.group(g).members
                    if values[m.value].kind == "param"})
    return [f"{len(only)} cut group(s) hold only weights with requires_grad=False ({names}{' ...' if len(only) > 3 else ''}): "
            f"fixed weights, such as an STFT's or a filterbank's, are ranked and cut like learnt ones; "
            f"ignore={paths[:4]} keeps them"]


def opaque_note(dg: DependencyGraph) -> list[str]:
    """A line where modules that read tensor data were recorded as one call each (frontends/torch_opaque.py): what
    they are, that they stay whole, and that their work is not in the MACs count ([] where none)."""
    calls = [n for n in dg.ir.nodes if n.op == "python.opaque_call"]
    if not calls:
        return []
    paths = list(dict.fromkeys(n.meta.module for n in calls))
    return [f"{len(paths)} module(s) read tensor data in their forward and were recorded as one call each "
            f"({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}): their channels and weights are kept whole, "
            "and their work is not in the MACs count"]
