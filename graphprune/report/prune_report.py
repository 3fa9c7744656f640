"""The before/after report of a prune (PruneReport) and its text."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..planning.memory import gib
from ..util.tables import human, table

if TYPE_CHECKING:  # the records a report holds; their modules import this one's callers
    from ..calib.compensate import Compensation
    from ..hf.sync import ConfigSync
    from ..oracle import OracleReport
    from ..planning.allocate import Allocation
    from ..planning.budget import BudgetResult
    from ..planning.depth import DepthChoice
    from ..planning.memory import MemoryEstimate
    from ..planning.plan import PrunePlan

RUNTIME_NAMES = {"onnxruntime": "onnxruntime, 1 thread", "torch": "PyTorch eager, 1 thread"}


@dataclass(frozen=True)
class Latency:
    """The model timed before and after on ``runtime`` (best of clean runs, one thread, the
    example inputs' shapes); ``slower`` when the pruned model lost beyond timing noise.
    ``given_ms``: the file as given, where loading fused its activations (``before_ms`` is then
    the fused original, so ``speedup`` is what pruning alone gained)."""

    runtime: str
    before_ms: float
    after_ms: float
    slower: bool = False
    given_ms: float | None = None
    inputs: str = ""  # the inputs timed, "x 1x3x224x224" (Program.timed_shapes)

    @property
    def speedup(self) -> float:
        return self.before_ms / max(self.after_ms, 1e-9)


@dataclass(frozen=True)
class MemoryUsage:
    """The prune's memory: the estimate made before calibration (planning/memory.py) and the
    peak resident set measured, since the prune started (``since="prune"``, where Linux let the
    peak be reset) or since the process started."""

    estimate: MemoryEstimate | None
    peak_rss: int  # bytes
    start_rss: int  # bytes resident when the prune started
    since: str = "prune"

    def __str__(self) -> str:
        est = f"estimated peak {gib(self.estimate.total)} ({self.estimate.largest.name} the largest part); " \
            if self.estimate is not None else ""
        return (f"memory: {est}measured peak RSS {gib(self.peak_rss)} since the {self.since} started "
                f"({gib(self.start_rss)} at the start)")

    def to_dict(self) -> dict:
        return {"estimate": self.estimate.to_dict() if self.estimate is not None else None,
                "peak_rss": self.peak_rss, "start_rss": self.start_rss, "since": self.since}


@dataclass
class PruneReport:
    """What a prune did: sizes before/after and the plan applied."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    kept: dict[int, tuple[int, int]] = field(default_factory=dict)  # group id -> (kept, size)
    plan: PrunePlan | None = None
    oracle: OracleReport | None = None
    sync: ConfigSync | None = None  # for transformers models (graphprune.hf)
    importance: str = ""  # the criterion that ranked the channels ("auto" resolved)
    fell_back: dict = field(default_factory=dict)  # criterion -> groups it ranked where ``importance`` could not
    compensation: Compensation | None = None
    notes: list[str] = field(default_factory=list)  # fallbacks and warnings, in words
    seconds: float | None = None  # wall time of the whole prune call
    latency: Latency | None = None  # measured before/after on the target runtime
    path: str = ""  # the file written, where the caller wrote one
    allocation: Allocation | None = None  # where ratios were chosen from data
    budget: BudgetResult | None = None  # where a budget chose the ratios
    # every weight matrix/kernel: (name, shape before, shape after), for the per-layer allocation
    layers: list[tuple[str, tuple, tuple]] = field(default_factory=list)
    blocks: tuple[int, int] | None = None  # depth pruning: (residual blocks removed, candidates)
    depth: DepthChoice | None = None  # each block's score, the trials
    scores: dict = field(default_factory=dict)  # group id -> importance per unit (the planner's ranking)
    kinds: dict = field(default_factory=dict)  # group id -> kind (head, ffn, hidden, channel, ...)
    names: dict = field(default_factory=dict)  # group id -> its first member, "layer1.0.conv1.weight[0]": for people
    memory: MemoryUsage | None = None  # estimated and measured peak memory
    recovery: object | None = None  # graphprune.recover's RecoverResult, where the prune distilled after
    frozen: list = field(default_factory=list)  # (Reason, groups, channels) an op kept whole, commonest first
    inexact: list = field(default_factory=list)  # (Reason, groups) cut though not oracle-exact, commonest first

    def importance_text(self) -> str:
        """The criterion, and the ones that ranked the groups it could not (the notes say why)."""
        if not self.fell_back:
            return self.importance
        n, rest = len(self.kept), sum(self.fell_back.values())
        parts = ([f"{self.importance} for {n - rest}"] if n > rest else []) + [
            f"{by} for {k}" for by, k in sorted(self.fell_back.items())]
        return f"{', '.join(parts)} of {n} group(s) ({self.importance} asked; the notes say why it could not rank the rest)"

    @property
    def latency_before_ms(self) -> float | None:
        return self.latency.before_ms if self.latency is not None else None

    @property
    def latency_after_ms(self) -> float | None:
        return self.latency.after_ms if self.latency is not None else None

    @property
    def runtime(self) -> str | None:
        """Where latency was measured: "onnxruntime" (one thread) or "torch" (eager)."""
        return self.latency.runtime if self.latency is not None else None

    def layer_table(self, limit: int | None = None) -> str:
        """Kept fraction per layer: output and input width of every weight, before and after."""
        rows = []
        for name, before, after in self.layers[:limit]:
            kept = [f"{a}/{b}" for a, b in zip(after[:2], before[:2])]
            rows.append([name, " x ".join(map(str, before)), " x ".join(map(str, after)),
                         f"{after[0] / before[0]:.0%}" if before[0] else "", kept[1] if len(kept) > 1 else ""])
        text = table(["weight", "before", "after", "out kept", "in kept"], rows)
        if limit is not None and len(self.layers) > limit:
            text += f"\n... {len(self.layers) - limit} more"
        return text

    def plot_layers(self, path, title: str = ""):
        """Save a PNG of the kept width per layer (graphprune/report/plots.py; needs matplotlib)."""
        from .plots import layer_plot

        return layer_plot(self, path, title)

    def to_dict(self) -> dict:
        """Everything above as plain JSON data (the CLI's --json and report.json)."""
        d = {"params": {"before": self.params_before, "after": self.params_after},
             "macs": {"before": self.macs_before, "after": self.macs_after},
             "groups": {str(g): {"kept": k, "size": n, "kind": self.kinds.get(g), "first_member": self.names.get(g)}
                        for g, (k, n) in sorted(self.kept.items())},
             "groups_pruned": self.groups_pruned, "importance": self.importance, "importance_fell_back": self.fell_back,
             "notes": list(self.notes),
             "seconds": self.seconds, "path": self.path,
             "latency_ms": {"before": self.latency_before_ms, "after": self.latency_after_ms,
                            "given": self.latency.given_ms if self.latency is not None else None,
                            "runtime": self.runtime,
                            "inputs": self.latency.inputs if self.latency is not None else None},
             "layers": [{"name": n, "before": list(b), "after": list(a)} for n, b, a in self.layers],
             "frozen": [{"reason": r.to_json(), "groups": n, "channels": c} for r, n, c in self.frozen],
             "inexact": [{"reason": r.to_json(), "groups": n} for r, n in self.inexact]}
        if self.blocks is not None:
            d["blocks"] = {"removed": self.blocks[0], "candidates": self.blocks[1],
                           "ids": list(self.plan.blocks) if self.plan is not None else []}
            if self.depth is not None:
                d["blocks"]["scores"] = dict(self.depth.scores)
                d["blocks"]["trials"] = [list(t) for t in self.depth.trials]
        if self.budget is not None:
            b = self.budget
            d["budget"] = {"allocation": b.allocation, "targets": b.targets, "original": b.original,
                           "achieved": b.achieved, "latency_ms": list(b.latency) if b.latency else None}
        if self.oracle is not None:
            o = self.oracle
            d["oracle"] = {"verdict": o.verdict, "passed": o.passed, "max_abs_diff": o.max_abs_diff, "scaled_diff": o.scaled_diff,
                           "atol": o.atol, "checked_groups": len(o.checked_groups),
                           "checked_blocks": len(o.checked_blocks), "inexact_groups": len(o.inexact_groups),
                           "logits": list(o.logits)}
        if self.compensation is not None:
            d["compensation"] = [{"layer": s.weight, "action": s.action, "error_before": s.error_before,
                                  "error_after": s.error_after} for s in self.compensation.sites]
            if self.compensation.heldout is not None:
                d["heldout"] = self.compensation.heldout.to_dict()
        if self.memory is not None:
            d["memory"] = self.memory.to_dict()
        if self.recovery is not None:
            r = self.recovery
            d["recovery"] = {"steps": r.steps, "seconds": r.seconds, "best_step": r.best_step, "reason": r.reason,
                             "lr": r.lr, "heldout_before": r.heldout_before, "heldout_best": r.heldout_best,
                             **({"blocks": r.blocks.to_dict()} if getattr(r, "blocks", None) is not None else {})}
        if self.sync is not None:
            d["config"] = {"loadable_with_from_pretrained": self.sync.loadable, "text": str(self.sync)}
        return d

    @property
    def groups_pruned(self) -> int:
        return sum(1 for k, n in self.kept.values() if k < n)

    def _groups_cell(self) -> str:
        """Pruned of the prunable groups, and the frozen ones beside them: "52/52" read as every group where 25
        more were kept whole (SLANet's Loop decoder)."""
        frozen = sum(n for _, n, _ in self.frozen)
        return f"{self.groups_pruned}/{len(self.kept)}" + (f" (+{frozen} frozen)" if frozen else "")

    def __str__(self) -> str:
        def pct(a: int, b: int) -> str:
            return f"{100.0 * (b - a) / a:+.1f}%" if a else "n/a"

        rows = [["params", human(self.params_before), human(self.params_after),
                 pct(self.params_before, self.params_after)],
                ["MACs", human(self.macs_before), human(self.macs_after), pct(self.macs_before, self.macs_after)],
                ["groups pruned", "", self._groups_cell(), ""]]
        if self.blocks is not None:
            removed, total = self.blocks
            rows.append(["residual blocks", str(total), str(total - removed), pct(total, total - removed)])
        text = table(["metric", "before", "after", "change"], rows)
        if self.frozen:
            groups, channels = sum(n for _, n, _ in self.frozen), sum(c for _, _, c in self.frozen)
            text += (f"\nfrozen: {channels} channel(s) in {groups} group(s) kept whole: "
                     + "; ".join(f"{r} ({n} group(s))" for r, n, _ in self.frozen[:3])
                     + (f"; {len(self.frozen) - 3} more reason(s)" if len(self.frozen) > 3 else "")
                     + " (graph.summary() lists every group)")
        if self.importance:
            text += f"\nimportance: {self.importance_text()}"
        if self.allocation is not None and self.kept:
            shares = [1 - k / n for k, n in self.kept.values()]
            lo, hi = round(100 * min(shares)), round(100 * max(shares))
            text += (f"\nallocation: sensitivity; every group loses {lo}% of its channels" if lo == hi else
                     f"\nallocation: sensitivity; groups lose {lo}% to {hi}% of their channels (uniform would be one "
                     "share for all)")
        if self.budget is not None:
            text += f"\n{self.budget}"
        # the share of each weight's entries kept: which dim is a layer's output differs (an embedding's is its last)
        changed = [math.prod(a) / math.prod(b) for _, b, a in self.layers if b != a and b[0] and a[0]]
        gone = sum(1 for _, b, a in self.layers if b[0] and not a[0])
        if changed:
            text += (f"\nlayers: {len(changed)} of {len(self.layers)} weights shrink, keeping {min(changed):.0%} to "
                     f"{max(changed):.0%} of their weights (report.layer_table())")
        if gone:
            text += f"\nlayers: {gone} of {len(self.layers)} weights removed with their residual blocks"
        if self.compensation is not None:
            text += "\n" + compensation_text(self.compensation)
        for note in self.notes:
            text += f"\nnote: {note}"
        if self.latency is not None:
            lat = self.latency
            at = f"at {lat.inputs}" if lat.inputs else "at the example shape"
            rows = [[f"best of runs {at}" if lat.given_ms is None else f"the original, rewritten for onnxruntime, {at}",
                     f"{lat.before_ms:.3f} ms", f"{lat.after_ms:.3f} ms", f"{lat.speedup:.2f}x"]]
            if lat.given_ms is not None:
                rows.append(["the original file as given", f"{lat.given_ms:.3f} ms", f"{lat.after_ms:.3f} ms",
                             f"{lat.given_ms / max(lat.after_ms, 1e-9):.2f}x"])
            text += "\n" + table([f"latency ({RUNTIME_NAMES.get(lat.runtime, lat.runtime)})", "before", "after",
                                  "speedup"], rows) + self._retimed()
        if self.seconds is not None:
            text += f"\ntime: {self.seconds:.1f} s"
        if self.memory is not None:
            text += f"\n{self.memory}"
        if self.oracle is not None:
            text += f"\n{self.oracle}"
        elif self.inexact:  # the oracle's own line names them where it ran
            text += (f"\nnot oracle-exact: {sum(n for _, n in self.inexact)} pruned group(s) cross ops that mix "
                     "channels, so the model moves by more than the removed channels: "
                     + "; ".join(f"{r} ({n} group(s))" for r, n in self.inexact[:2])
                     + " (verify=True checks the exact rest; targets= leaves such kinds whole)")
        if self.sync is not None:
            text += f"\n{self.sync}"
        return text


    def _retimed(self) -> str:
        """Where a latency budget was met when planned but the final timing above misses it by more than
        run-to-run noise: both figures are measurements, and the reader must not find one contradicting
        the other unexplained."""
        planned = self.budget.latency if self.budget is not None else None
        if planned is None or self.latency is None:
            return ""
        target, before, after = planned
        speedup = self.latency.speedup
        if speedup >= (before / target) * 0.9:
            return ""
        return (f"\nnote: timed again here at {speedup:.2f}x, short of the {before / target:.2f}x target the plan met "
                f"when planned ({before:.3f} -> {after:.3f} ms): timings on a busy machine vary from run to run; "
                "time both again with graphprune bench")


def compensation_text(comp, limit: int = 8) -> str:
    """The layers compensation changed, with the calibration error before/after."""
    sites = comp.sites
    if not sites and comp.skipped:  # layers that lost inputs but could not be refit: say which, not "none needed it"
        return (f"compensation: no layer refit; {len(comp.skipped)} lost input channels but were not refit: "
                + "; ".join(comp.skipped[:3]) + (" ..." if len(comp.skipped) > 3 else ""))
    if not sites:
        return "compensation: no linear or convolution lost input channels (the layers a refit repairs)"
    before = sum(s.error_before for s in sites) / len(sites)
    after = sum(s.error_after for s in sites) / len(sites)
    rows = [[s.weight, s.action, f"{s.error_before:.4f}", f"{s.error_after:.4f}"] for s in sites[:limit]]
    text = (f"compensation: {len(sites)} layer(s) changed; mean relative calibration error {before:.4f} -> "
            f"{after:.4f} (each layer's, on the data it was refit to: not a measure of the model on other inputs)\n"
            + table(["layer", "action", "error before", "error after"], rows))
    if len(sites) > limit:
        text += f"\n... {len(sites) - limit} more layers"
    if comp.bias_modules:
        text += (f"\nnew biases: {len(comp.bias_modules)} layer(s) had none and were given one: "
                 + ", ".join(comp.bias_modules[:4]) + (" ..." if len(comp.bias_modules) > 4 else ""))
    if getattr(comp, "thin", ""):
        text += f"\ncompensation: {comp.thin}"
    if getattr(comp, "heldout", None) is not None:
        text += f"\n{comp.heldout.text()}"
    for s in comp.skipped[:3]:
        text += f"\nnot compensated: {s}"
    return text
