"""What a runtime's kernels favour, measured: runtime profiles and model latency.

A pruned width such as 29 or 85 can run slower than the original's 32 or 96: onnxruntime's CPU
convolutions switch to blocked layouts only at some channel multiples, and which ones depend on
the machine (AVX2, AVX-512) and the runtime's version. So the alignment is not a constant: a
*profile* times three small blocks (a MobileNet inverted residual: 1x1, depthwise 3x3, 1x1; two
dense 3x3 convolutions; a two-layer MLP) at every inner width from 33 to 64 on the target runtime,
and picks per op kind the alignment whose rounded-up widths run fastest on average (the smallest
such alignment within 3% of the best). Profiles are cached per runtime, machine, version and thread
count under ``~/.cache/graphprune/profiles`` (``$GRAPHPRUNE_CACHE``), so a machine measures once and
the same options give the same model every time after.

Example:
    >>> from graphprune.planning.measure import best_alignment
    >>> times = {c: (1.0 if c % 8 == 0 else 2.0) for c in range(33, 65)}   # odd widths twice as slow
    >>> best_alignment(times)
    8
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import PlanError
from ..util.atomic import write_bytes_atomic
from ..util.progress import progress
from .placement import CPU, GPU_BATCH, Placement

RUNTIMES = ("onnxruntime", "torch")
KINDS = ("depthwise", "conv", "linear")  # the block each op kind is timed in
ALIGNMENTS = (1, 2, 4, 8, 16, 32)
WIDTHS = range(33, 65)  # every width up to 64: each alignment's rounded-up widths stay inside
TOLERANCE = 0.03  # a smaller alignment within 3% of the best wins: finer steps keep more accuracy
PROFILE_VERSION = 1
PINNED = "pinned by GRAPHPRUNE_ALIGN"


@dataclass(frozen=True)
class Profile:
    """Per op kind, the channel alignment a runtime's kernels favour, and the timings it came from."""

    runtime: str
    machine: str
    threads: int
    align: dict[str, int]
    times: dict[str, dict[int, float]] = field(default_factory=dict)  # kind -> width -> ms (best of runs)
    seconds: float = 0.0  # how long measuring took

    @property
    def measured(self) -> bool:
        """Timed on this machine, not pinned by ``$GRAPHPRUNE_ALIGN``."""
        return self.machine != PINNED

    def alignment(self, kinds) -> int:
        """The alignment for channels that pass through ops of these kinds (the strictest)."""
        return max([self.align.get(k, 1) for k in kinds] or [1])


def best_alignment(times: dict[int, float]) -> int:
    """The alignment whose rounded-up widths (a width c kept as the next multiple of it) run
    fastest on average over ``times``; the smallest within :data:`TOLERANCE` of the best."""
    widths = sorted(times)
    top = widths[-1]
    score = {}
    for a in ALIGNMENTS:
        if a > top:
            break
        ups = [min(top, math.ceil(c / a) * a) for c in widths]
        if any(u not in times for u in ups):
            continue
        score[a] = statistics.fmean(times[u] for u in ups)
    best = min(score.values())
    return min(a for a, s in score.items() if s <= best * (1 + TOLERANCE))


def machine_id(runtime: str, threads: int, where: Placement = CPU) -> str:
    """What a profile is valid for: the processor, the runtime and its version, the threads, and
    a PyTorch model's device and dtype where they are not the CPU's float32."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        model = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), cpu)
        flags = next((ln.split(":", 1)[1] for ln in info.splitlines() if ln.startswith("flags")), "")
        cpu = model + " " + " ".join(sorted(f for f in flags.split() if f.startswith(("avx", "amx", "fma"))))
    except OSError:
        pass
    if runtime == "onnxruntime":
        import onnxruntime

        version = f"onnxruntime {onnxruntime.__version__}"
    else:
        version = f"torch {torch.__version__}"
    placed = "" if where.default else f" | {where.label()}"
    return f"{cpu} | {version}{placed} | threads {threads} | v{PROFILE_VERSION}"


def cache_root() -> Path:
    """Where measurements are kept between prunes: ``$GRAPHPRUNE_CACHE`` or ~/.cache/graphprune."""
    return Path(os.environ.get("GRAPHPRUNE_CACHE", Path.home() / ".cache" / "graphprune"))


def _cache_dir() -> Path:
    return cache_root() / "profiles"


def _block(kind: str, width: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "depthwise":
        m = nn.Sequential(nn.Conv2d(64, width, 1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1, groups=width),
                          nn.ReLU(), nn.Conv2d(width, 64, 1))
        x = torch.randn(1, 64, 28, 28)
    elif kind == "conv":
        m = nn.Sequential(nn.Conv2d(64, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 64, 3, padding=1))
        x = torch.randn(1, 64, 28, 28)
    else:
        m = nn.Sequential(nn.Linear(256, width * 4), nn.ReLU(), nn.Linear(width * 4, 256))
        x = torch.randn(64, 256)
    return m.eval(), x


def best_of(fn: Callable[[], object], budget_s: float = 0.05, least: int = 5, most: int = 200) -> float:
    """The fastest clean run of ``fn`` (ms) after a warm-up: the runtime's own speed, not the noise
    of a busy machine. A run is clean when its wall time is not far above the CPU time the process
    spent in it: a run the scheduler paused (another process, a container's CPU quota) is set
    aside, which a plain minimum over a throttled spell is not. Repeats until ``budget_s`` is spent
    and ``least`` clean runs are in (up to eight times the budget), else takes the plain minimum."""
    fn()
    clean: list[float] = []
    every: list[float] = []
    start = time.perf_counter()
    while True:
        spent = time.perf_counter() - start
        if len(every) >= most or (len(clean) >= least and spent >= budget_s) or (spent >= 8 * budget_s and
                                                                               len(every) >= least):
            break
        ms, ok = run_timed(fn)
        every.append(ms)
        if ok:
            clean.append(ms)
    return min(clean) if clean else min(every)


def run_timed(fn: Callable[[], object]) -> tuple[float, bool]:
    """One run of ``fn``: its wall time (ms) and whether it ran clean, its wall time not far above the
    CPU time the process spent (a run the scheduler paused shows time the process did not spend)."""
    c, t = time.process_time(), time.perf_counter()
    fn()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    return wall * 1e3, wall <= 1.3 * cpu + 2e-4


def ort_session(model: bytes | str, threads: int = 1):
    """An onnxruntime CPU session on ``threads`` threads of a serialized model or a file's path (a
    path finds the file's external data next to it)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


def _time_block(runtime: str, kind: str, width: int, threads: int, where: Placement = CPU) -> float:
    import torch

    m, x = _block(kind, width)
    if runtime == "torch":
        x = x.repeat(GPU_BATCH, *[1] * (x.dim() - 1)) if where.gpu else x
        m, x = m.to(where.device, where.torch_dtype()), x.to(where.device, where.torch_dtype())
        with torch.no_grad():
            return best_of(where.synced(lambda: m(x)))
    import warnings

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (x,), f, dynamo=False, opset_version=17)
    sess = ort_session(f.getvalue(), threads)
    feeds = {sess.get_inputs()[0].name: x.numpy()}
    return best_of(lambda: sess.run(None, feeds))


def measure_profile(runtime: str, threads: int = 1, where: Placement = CPU) -> Profile:
    """Time every kind's block at every width of :data:`WIDTHS` (a few seconds), on ``where``'s
    device in its dtype (PyTorch; onnxruntime runs on the CPU in float32)."""
    import torch


    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; runtimes are {RUNTIMES}")
    start = time.perf_counter()
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        times: dict[str, dict[int, float]] = {k: {} for k in KINDS}
        todo = [(k, w) for k in KINDS for w in WIDTHS]
        on = "" if where.default else f" on {where.device} in {where.dtype}"
        for i in progress(range(len(todo)), f"profiling {runtime} widths{on} (once per machine)", len(todo)):
            kind, width = todo[i]
            times[kind][width] = _time_block(runtime, kind, width, threads, where)
    finally:
        torch.set_num_threads(prev)
    align = {k: best_alignment(t) for k, t in times.items()}
    return Profile(runtime, machine_id(runtime, threads, where), threads, align, times, time.perf_counter() - start)


def pinned(runtime: str, threads: int = 1) -> Profile | None:
    """The alignment pinned by ``$GRAPHPRUNE_ALIGN`` instead of measured: ``8`` for every kind, or
    ``depthwise=16,conv=8,linear=1`` (kinds not named: 1). Builds on several machines then give
    the same widths, whatever each machine's kernels favour."""
    text = os.environ.get("GRAPHPRUNE_ALIGN", "").strip()
    if not text:
        return None
    try:
        if "=" not in text:
            align = dict.fromkeys(KINDS, int(text))
        else:
            align = dict.fromkeys(KINDS, 1)
            for part in filter(None, (p.strip() for p in text.split(","))):
                kind, _, value = part.partition("=")
                if kind.strip() not in KINDS:
                    raise ValueError(f"unknown kind {kind.strip()!r}")
                align[kind.strip()] = int(value)
        if any(a < 1 for a in align.values()):
            raise ValueError("alignments are whole numbers >= 1")
    except ValueError as exc:

        raise PlanError(f"GRAPHPRUNE_ALIGN={text!r} is not an alignment ({exc}): give one number (8) or "
                        f"KIND=N pairs for the kinds {list(KINDS)} (depthwise=16,conv=8)") from None
    return Profile(runtime, PINNED, threads, align)


def load_profile(runtime: str, threads: int = 1, where: Placement = CPU) -> Profile:
    """The cached profile of this machine for ``runtime`` (a PyTorch model's: on ``where``),
    measured first if there is none (``$GRAPHPRUNE_ALIGN`` pins one instead)."""
    fixed = pinned(runtime, threads)
    if fixed is not None:
        return fixed
    where = where.on(runtime)
    key = machine_id(runtime, threads, where)
    path = _cache_dir() / f"{runtime}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    try:
        doc = json.loads(path.read_text())
        if doc.get("machine") == key:
            return Profile(doc["runtime"], doc["machine"], doc["threads"], doc["align"],
                           {k: {int(w): t for w, t in v.items()} for k, v in doc["times"].items()}, doc["seconds"])
    except (OSError, ValueError, KeyError):
        pass  # none yet, or unreadable: measure again
    prof = measure_profile(runtime, threads, where)
    try:  # atomic: two processes measuring at once each write a whole file
        write_bytes_atomic(path, json.dumps(asdict(prof), indent=1, sort_keys=True).encode())
    except OSError:
        pass  # a read-only home: the profile is measured again next time, nothing else changes
    return prof


def op_kind(shape: tuple) -> str | None:
    """The profile kind of a weight by its shape: a conv's (out, in/groups, k...) with one input
    channel per group or a 1x1 kernel is timed in the inverted residual ("depthwise"), a larger
    dense kernel as "conv"; a matrix is "linear"; vectors (biases, norms) set nothing."""
    if len(shape) >= 3:
        window = math.prod(shape[2:])
        return "depthwise" if shape[1] == 1 or window == 1 else "conv"
    return "linear" if len(shape) == 2 else None


def alignments(dg, groups, profile: Profile) -> dict[int, int]:
    """Each plain-channel group's alignment: the strictest of the op kinds whose weights it cuts."""
    values = dg.ir.values
    out = {}
    for g in groups:
        if g.role != "channel" and g.kind != "group_channel":  # (the width inside a grouped conv's groups)
            continue
        kinds = {op_kind(tuple(values[m.value].shape)) for m in g.members if m.value in values}
        out[g.id] = profile.alignment(k for k in kinds if k is not None)
    return out
