"""A prune's peak memory, estimated from the IR before any heavy work, and the peak measured.

Sizes come from the IR's shapes and dtypes (no framework is imported): the weights, the
float32 copy of them that scoring reads, the per-site calibration statistics
(``calib/stats.py``: channel sums and squares in float64, and where OBS or compensation needs
them the input Gram of every refittable site, (features + 1)^2 float64 per fold, two folds),
the live activations of one calibration batch, the solver's buffers (OBS scoring and the
refit of ``calib/refit.py``), the weight updates compensation hands the rewrite, and the
rewritten weights. Parts are live in different phases (calibrate, solve, apply); the
estimate is the largest phase's sum. :func:`check_memory` refuses a prune whose estimate
exceeds ``max_memory`` before calibration starts, naming the part that takes the memory.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Iterable

from ..calib import distributed
from ..calib.sites import FP64_MAX, find_sites, rows_route, sites_by_group
from ..errors import PlanError
from ..util.proc import status_bytes
from ..util.tables import table

DTYPE_BYTES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2, "int64": 8, "int32": 4, "int16": 2,
               "int8": 1, "uint8": 1, "bool": 1, "complex64": 8, "complex128": 16, "float8_e4m3fn": 1,
               "float8_e5m2": 1}
PHASES = ("calibrate", "solve", "apply")
FEATURE_COPIES = 3  # a Gram site's features: the unfold (or input), the cat with a 1 column, the fold split
CHANNEL_COPY = 4 + 8 + 8 + 8  # per input element, ChannelStats.add: channel-major float32, float64, square, sum
HELDOUT_BYTES = 1 << 30  # the held-out check's two extra refits hold this much at most (planning/heldout.py)
SOLVE_SQUARES = 9  # (features+1)^2 float64 matrices a refit holds at once: Gram sum, H_SS, 2 per fold, solve
SOLVE_ROWS = 7  # (out, features+1) float64 matrices: w, wa, wh, R, A0, A, the new weight
UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
         "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
         "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40}
ADVICE = {
    "activations": "fewer items per calibration batch or shorter sequences (the batches of calib=)",
    "calibration statistics": "compensate=False with importance='activation' (no Grams), or a smaller model part "
                              "via targets= / ignore=",
    # not compensate='bias': it solves from the same Grams as the refit (a user's CREPE full was refused again)
    "solver buffers": "compensate=False (with importance='activation' where importance='obs' was asked), or a smaller "
                      "model part via targets= / ignore=",
    "weight updates": "compensate=False, or a smaller model part via targets= / ignore=",
    "float32 copies": "a model part via targets= / ignore=, or a machine with more memory: scoring reads the "
                      "weights in float32",
    "gradients": "a criterion without a backward (importance='obs' or 'activation' with calib=)",
    "weights": "a machine with more memory: the weights alone do not fit",
    "rewritten weights": "a larger max_memory if swap is available, or a machine with more memory",
}


def gram_bytes(features: int) -> int:
    """Bytes per element of a site's Gram and solve (calib/stats.py: float32 above FP64_MAX inputs)."""
    return 8 if features <= FP64_MAX + 1 else 4


def gib(n: float) -> str:
    """Bytes in the largest binary unit that keeps a digit before the point (KiB to GiB)."""
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


@dataclass(frozen=True)
class MemoryPart:
    """One part of the estimate: its bytes, what it is, and the phases it is live in."""

    name: str
    bytes: int
    detail: str
    phases: tuple[str, ...]


@dataclass(frozen=True)
class MemoryEstimate:
    """A prune's memory by part; ``total`` is the largest phase's sum (the estimated peak)."""

    parts: tuple[MemoryPart, ...]

    def phase_bytes(self, phase: str) -> int:
        return sum(p.bytes for p in self.parts if phase in p.phases)

    @property
    def peak_phase(self) -> str:
        return max(PHASES, key=self.phase_bytes)

    @property
    def total(self) -> int:
        return self.phase_bytes(self.peak_phase)

    @property
    def largest(self) -> MemoryPart:
        return max(self.parts, key=lambda p: p.bytes)

    def part(self, name: str) -> int:
        return sum(p.bytes for p in self.parts if p.name == name)

    def __str__(self) -> str:
        rows = [[p.name, gib(p.bytes), ", ".join(p.phases), p.detail] for p in self.parts if p.bytes]
        rows.append(["peak", gib(self.total), self.peak_phase, "the largest phase's sum"])
        return table(["memory", "size", "live in", "what"], rows)

    def to_dict(self) -> dict:
        return {"total": self.total, "peak_phase": self.peak_phase,
                "parts": {p.name: {"bytes": p.bytes, "detail": p.detail, "phases": list(p.phases)}
                          for p in self.parts}}


def numel(shape) -> int:
    """Elements of a shape; a symbolic dim counts 1 (the ONNX front-end fixes dynamic dims to 1 too)."""
    n = 1
    for d in shape:
        n *= d if isinstance(d, int) else 1
    return n


def nbytes(value) -> int:
    """Bytes of an IR value."""
    return DTYPE_BYTES.get(value.dtype, 4) * numel(value.shape)


def weight_parts(ir) -> list[MemoryPart]:
    """The weights by dtype, their float32 copy for scoring (``Program.tensors()``: torch copies
    what is not float32 already; the ONNX front-end copies every float initializer) and the
    rewritten weights the apply step allocates (bounded by the original's size)."""
    by_dtype: dict[str, int] = {}
    copy = 0
    for v in ir.params():
        by_dtype[v.dtype] = by_dtype.get(v.dtype, 0) + nbytes(v)
        if v.dtype.startswith(("float", "bfloat")) and (ir.frontend == "onnx" or v.dtype != "float32"):
            copy += 4 * numel(v.shape)
    total = sum(by_dtype.values())
    detail = ", ".join(f"{gib(b)} {d}" for d, b in sorted(by_dtype.items(), key=lambda kv: -kv[1])) or "none"
    return [MemoryPart("weights", total, detail, PHASES),
            MemoryPart("float32 copies", copy, "the weights scoring and compensation read, where not float32",
                       PHASES),
            MemoryPart("rewritten weights", total, "the pruned model's weights (at most the original's size)",
                       ("apply",))]


def live_peak(ir) -> int:
    """The most bytes of activations live at once in one forward at the IR's shapes: a value lives
    from the node that makes it to the last node that reads it (graph outputs to the end)."""
    last: dict[str, int] = {}
    for i, node in enumerate(ir.nodes):
        for name in node.inputs:
            last[name] = i
    for name in ir.outputs:
        last[name] = len(ir.nodes)
    live = sum(nbytes(ir.values[n]) for n in ir.inputs if n in ir.values)
    peak, dying = live, {}
    for i, node in enumerate(ir.nodes):
        for name in node.outputs:
            v = ir.values.get(name)
            if v is not None and v.kind == "act":
                live += nbytes(v)
                dying.setdefault(last.get(name, i), []).append(v)
        peak = max(peak, live)
        live -= sum(nbytes(v) for v in dying.pop(i, ()))
    return peak


def batch_scale(ir, batches: Iterable | None) -> float:
    """How many times the example inputs' elements the largest calibration batch holds (activations
    grow with batch items and sequence length; attention scores an eager attention materialises
    grow with the square of the sequence, which this underestimates)."""
    example = sum(numel(ir.values[n].shape) for n in ir.inputs if n in ir.values)
    if not batches or not example:
        return 1.0
    return max(_elements(b) for b in batches) / example


def total_scale(ir, batches: Iterable | None) -> float:
    """Every calibration batch's elements over the example inputs': the samples a site sees in all."""
    example = sum(numel(ir.values[n].shape) for n in ir.inputs if n in ir.values)
    if not batches or not example:
        return 0.0
    return sum(_elements(b) for b in batches) / example


def _elements(obj: Any) -> int:
    if hasattr(obj, "shape") and not isinstance(obj, type):
        return numel(tuple(int(d) for d in obj.shape))
    if isinstance(obj, dict):
        return sum(_elements(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_elements(v) for v in obj)
    return 0


def site_features(ir, site) -> int:
    """A site's Gram width: input channels times the kernel window, plus the constant 1 column."""
    return ir.values[site.w].shape[site.w_in] * site.window + 1


def site_samples(ir, site) -> int:
    """Rows a site's features have at the IR's shapes: tokens for a linear, output positions for a convolution."""
    if site.kind == "linear":
        x = ir.values[site.x]
        return numel(x.shape) // max(x.shape[-1], 1)
    out = next(n.outputs[0] for n in ir.nodes if n.name == site.node)
    y = ir.values[out]
    return numel(y.shape) // max(y.shape[1], 1)


def site_rows(ir, site, total: float) -> int | None:
    """The samples a site keeps instead of its Grams (calib/rowspace.py: a float32-wide site seeing fewer
    samples than features), or None where it keeps Grams. ``total``: the calibration's elements over
    the example inputs' (every batch). Summed over ranks, samples become Grams (calib/stats.py)."""
    n = int(site_samples(ir, site) * total)
    if total <= 0 or distributed.active() or not rows_route(site_features(ir, site), n):
        return None
    return n


def stats_part(ir, sites, grams: set[str], total: float = 0.0) -> MemoryPart:
    """Channel sums and squares (float64) at every site; two float64 Gram folds where kept, or the
    float32 samples themselves on the row-space route."""
    chans = sum(2 * 8 * ir.values[s.x].shape[s.x_dim] for s in sites)
    gram, rows = 0, 0
    for s in (s for s in sites if s.node in grams):
        f, n = site_features(ir, s), site_rows(ir, s, total)
        gram += 2 * gram_bytes(f) * f * f if n is None else 4 * n * f
        rows += n is not None
    what = f"{len(sites)} sites, {len(grams & {s.node for s in sites})} with an input Gram (2 folds of (features+1)^2 "
    what += "float64)" + (f", {rows} of them as their float32 samples (fewer than their features)" if rows else "")
    return MemoryPart("calibration statistics", chans + gram, what, PHASES)


def solve_parts(ir, sites, grams: set[str], obs: bool, refit: bool, total: float = 0.0,
                check: bool = False) -> list[MemoryPart]:
    """The largest site's solver working set (OBS scoring and the refit are one site at a time),
    and the refit's weight updates, float32 at full original shape, held until the rewrite (two
    more sets while the held-out ``check`` runs, ``HELDOUT_BYTES`` at most). On the row-space
    route the squares are N x N (samples), not (features+1)^2."""
    solved = [s for s in sites if s.node in grams] if (obs or refit) else []

    def work(s) -> int:
        f, out, n = site_features(ir, s), ir.values[s.w].shape[s.w_out], site_rows(ir, s, total)
        side = f if n is None else n
        return gram_bytes(f) * (SOLVE_SQUARES * side * side + SOLVE_ROWS * out * side + (0 if n is None else 3 * n * f))

    largest = max((work(s) for s in solved), default=0)
    updates = sum(4 * numel(ir.values[s.w].shape) for s in sites if s.node in grams) if refit else 0
    if check:  # two more refits, where they fit HELDOUT_BYTES (planning/heldout.py skips the check otherwise)
        updates += min(2 * updates, HELDOUT_BYTES)
    return [MemoryPart("solver buffers", largest, "the largest site's OBS / refit matrices (float64)", ("solve",)),
            MemoryPart("weight updates", updates, "refit weights of every compensated site (float32)",
                       ("solve", "apply"))]


def site_copies(ir, site, gram: bool) -> int:
    """The transient copies one site's statistics make of its input: the channel sums' float32 and
    float64 copies, and where a Gram is kept its features (three float32 copies)."""
    out = CHANNEL_COPY * numel(ir.values[site.x].shape)
    return out + (FEATURE_COPIES * 4 * site_samples(ir, site) * site_features(ir, site) if gram else 0)


def activation_part(ir, sites, grams: set[str], scale: float, backward: bool = False) -> MemoryPart:
    """One calibration batch's live activations, plus the largest site's transient copies; with
    ``backward`` (the gradient criteria) every activation, as autograd keeps them for the backward."""
    feats = max((site_copies(ir, s, s.node in grams) for s in sites), default=0)
    if backward:
        acts = sum(nbytes(v) for v in ir.values.values() if v.kind == "act")
    else:
        acts = live_peak(ir) if sites else 0
    what = "every activation, kept for the backward" if backward else "live values and the largest site's copies"
    return MemoryPart("activations", int((acts + feats) * scale),
                      f"one calibration batch ({scale:.3g}x the example inputs' elements): {what}", ("calibrate",))


def gradient_part(ir) -> MemoryPart:
    """The gradient criteria: each parameter's float32 gradient and two float64 running sums."""
    n = sum(numel(v.shape) for v in ir.params())
    return MemoryPart("gradients", (4 + 16) * n, "a float32 gradient and two float64 sums per weight", PHASES)


def stat_sites(dg, groups) -> list:
    """The consumer sites calibration collects statistics at: those reading a selected group."""
    by_group = sites_by_group(dg, find_sites(dg), [g.id for g in groups])
    return list({s.node: s for ss in by_group.values() for s in ss}.values())


def estimate_memory(ir, sites=(), grams: set[str] = frozenset(), batches: Iterable | None = None,
                    obs: bool = False, refit: bool = False, backward: bool = False, check: bool = False) -> MemoryEstimate:
    """The estimate for a prune of ``ir`` whose calibration collects statistics at ``sites``
    (``grams``: the site nodes whose input Gram is kept) over ``batches``; ``obs``: OBS scoring
    solves each Gram; ``refit``: compensation refits each Gram site; ``backward``: a gradient
    criterion runs a backward over each batch; ``check``: the held-out check refits twice more."""
    sites = list(sites)
    total = total_scale(ir, batches)
    parts = weight_parts(ir) + [stats_part(ir, sites, grams, total),
                                activation_part(ir, sites, grams, batch_scale(ir, batches), backward)]
    if backward:
        parts.append(gradient_part(ir))
    return MemoryEstimate(tuple(parts + solve_parts(ir, sites, grams, obs, refit, total, check)))


# ----------------------------------------------------------------------------- limits


def parse_bytes(value: Any, what: str = "max_memory") -> int:
    """Bytes from an integer or a size string: '8GB' (10^9), '8GiB' or '8G' (2^30), '512MB', '2e9'."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise PlanError(f"{what} must be a number of bytes or a size such as '8GB' or '512MiB', not {value!r}")
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        unit = m.group(2).lower() if m else None
        if m is None or unit not in UNITS:
            raise PlanError(f"{what} must be a number of bytes or a size such as '8GB', '512MiB' or '16G', not "
                            f"{value!r} (units: B, KB, MB, GB, TB in powers of 1000; K/KiB, M/MiB, G/GiB, T/TiB "
                            "in powers of 1024)")
        value = float(m.group(1)) * UNITS[unit]
    if not value > 0 or value != value or value == float("inf"):
        raise PlanError(f"{what} must be a positive size, not {value!r}")
    return int(value)


MARGIN = 0.1  # of the available memory, kept back: allocator slack, other processes, what the estimate misses


def free_memory() -> int | None:
    """/proc/meminfo's MemAvailable less :data:`MARGIN` of it (None where the system does not say)."""
    avail = status_bytes("MemAvailable", "/proc/meminfo")
    return None if avail is None else int(avail * (1 - MARGIN))


def available_memory() -> int | None:
    """What this process may grow to: what it holds now (RSS) plus /proc/meminfo's MemAvailable,
    less :data:`MARGIN` of the latter; None where the system does not say (no check then)."""
    free = free_memory()
    return None if free is None else (status_bytes("VmRSS") or 0) + free


def check_memory(est: MemoryEstimate, limit: int | None) -> None:
    """Refuse a prune whose estimated peak exceeds ``limit`` bytes (None: :func:`available_memory`)."""
    if limit is None:
        limit = available_memory()
    if limit is None or est.total <= limit:
        return
    phase = est.peak_phase
    big = max((p for p in est.parts if phase in p.phases), key=lambda p: p.bytes)
    raise PlanError(f"this prune needs about {gib(est.total)} at its peak ({phase}), more than max_memory "
                    f"({gib(limit)}); the largest part is {big.name}: {gib(big.bytes)} ({big.detail}). To fit: "
                    f"{ADVICE.get(big.name, 'a smaller model part via targets=')}; or pass max_memory= if more is "
                    f"free than the system reports.\n{est}")


# ----------------------------------------------------------------------------- measured


def reset_peak() -> tuple[int, bool]:
    """Start measuring a peak: (resident bytes now, whether the peak was reset to now). Linux
    resets VmHWM by writing 5 to /proc/self/clear_refs where allowed; elsewhere the peak is the
    process's since it started."""
    rss = status_bytes("VmRSS") or 0
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return rss, True
    except OSError:
        return rss, False


def peak_rss() -> int:
    """The process's peak resident set (VmHWM; ``getrusage`` where /proc is absent), in bytes."""
    hwm = status_bytes("VmHWM")
    if hwm is not None:
        return hwm
    try:
        import resource  # POSIX only
    except ImportError:
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if os.uname().sysname == "Darwin" else peak * 1024)  # macOS reports bytes, Linux KiB


def trim_heap() -> None:
    """Hand the heap's freed pages back to the system. glibc keeps them for reuse, and a stream's
    blocks free a little differently each time, so RSS crept by ~45 MB a block at 3B without this."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to hand back
        pass
