"""Block-wise reconstruction, the first stage of ``recover(blockwise=True)``.

Each block (a child of an ``nn.Sequential`` / ``nn.ModuleList`` that both models hold and run once
per forward; the outermost where they nest: a ResNet's residual blocks, not the downsampling
Sequential inside one) is trained alone, in execution order, to give the original's output of that
block from the inputs the pruned model, reconstructed up to it, gives it.
The loss is dense (every position and channel of a feature map, against a classifier's 1,000 numbers
per image), so a few hundred images carry further than end-to-end distillation on them (as block
reconstruction does in post-training quantization, BRECQ). Where the plan narrowed a block's output
(a CNN's residual stream) the original's output is compared on the channels the plan kept
(planning/module_channels.py, carried by the pruned module); a block whose shapes cannot be matched
is left to the end-to-end stage.

Inputs are the training batches, each also blended (api/recover_mix.py), every block's inputs
captured once by running the pruned model up to it; the held-out batches score each block, which
keeps its best weights and never ends worse than it started.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..planning.module_channels import ATTR as CHANNELS_ATTR
from ..util.containers import container_children
from ..util.progress import progress
from .recover_data import as_inputs, first_tensor, to_device
from .recover_mix import blended

BLOCK_LRS = (1e-3, 1e-4)  # Adam's rates tried on each block (measured: 1e-3 at half the MACs, 1e-4 at 80%)
PROBE_STEPS = 10  # steps of each rate, where a time budget leaves the block's steps unknown


BLOCK_BATCHES = 64  # training batches whose inputs each block caches (with a blend of each: twice that)


class _Stop(BaseException):
    """Raised by a hook to end a forward once the block of interest has run (not an Exception: a forward
    that catches those must not swallow it)."""


@dataclass
class BlockStage:
    """What the block stage did: per block (name, held-out loss before, after, steps, rate)."""

    blocks: list[tuple[str, float, float, int, float]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # block -> why it was left to the end-to-end stage
    seconds: float = 0.0
    heldout_losses: tuple[float | None, float | None] = (None, None)  # recover's held-out loss before, after the stage
    undone: bool = False  # the model's held-out loss rose, so its weights before the stage were put back
    tail: object | None = None  # the RecoverResult of the layers after the last block (a classifier head) trained alone

    def __str__(self) -> str:
        text = f"blocks trained alone: {len(self.blocks)} in {self.seconds:.1f} s"
        if self.blocks:
            before, after = (sum(b[k] for b in self.blocks) / len(self.blocks) for k in (1, 2))
            text += f", held-out relative error of their outputs {before:.4g} -> {after:.4g} (mean)"
        if None not in self.heldout_losses:
            text += "; the model's held-out loss {:.4g} -> {:.4g}".format(*self.heldout_losses)
            text += " (higher: the stage was undone)" if self.undone else ""
        if self.tail is not None and self.tail.heldout_losses:
            text += (f"; then the layers after the last block alone: held-out loss {self.tail.heldout_before:.4g} -> "
                     f"{self.tail.heldout_best:.4g} in {self.tail.steps} steps (lr {self.tail.lr:g})")
        if self.skipped:
            why: dict[str, list[str]] = {}
            for name, reason in self.skipped.items():
                why.setdefault(reason, []).append(name)
            text += "; left to the end-to-end stage: " + "; ".join(
                f"{', '.join(n[:3])}{f' and {len(n) - 3} more' if len(n) > 3 else ''} ({r})" for r, n in why.items())
        return text

    def to_dict(self) -> dict:
        return {"trained": [{"block": n, "heldout_before": b, "heldout_after": a, "steps": k, "lr": r}
                            for n, b, a, k, r in self.blocks],
                "skipped": dict(self.skipped), "seconds": self.seconds, "undone": self.undone,
                "model_heldout_before": self.heldout_losses[0], "model_heldout_after": self.heldout_losses[1],
                "tail": None if self.tail is None else {"steps": self.tail.steps, "lr": self.tail.lr,
                                                        "heldout_before": self.tail.heldout_before,
                                                        "heldout_best": self.tail.heldout_best}}


def _hooked(hooks: list, run) -> None:
    """One forward ``run()`` without gradients, the ``hooks`` removed whatever happens."""
    try:
        with torch.no_grad():
            run()
    finally:
        for h in hooks:
            h.remove()


def _calls(model: torch.nn.Module, names: list[str], run) -> dict[str, int]:
    """How often each named module runs in one forward (``run()``), in first-call order."""
    counts: dict[str, int] = {}
    mods = dict(model.named_modules())
    _hooked([mods[n].register_forward_pre_hook(lambda m, a, n=n: counts.__setitem__(n, counts.get(n, 0) + 1))
             for n in names], run)
    return counts


def blocks_to_train(student, teacher, run_student, run_teacher) -> tuple[list[str], dict[str, str]]:
    """The blocks in execution order; and those left out, with why."""
    s_mods, t_mods = dict(student.named_modules()), dict(teacher.named_modules())
    named = [n for n in container_children(student) if n in t_mods and any(p.requires_grad for p in s_mods[n].parameters())]
    outer = [n for n in named if not any(n.startswith(o + ".") for o in named)]
    s_calls, t_calls = _calls(student, outer, run_student), _calls(teacher, outer, run_teacher)
    skipped = {n: f"runs {s_calls.get(n, 0)} times in a forward" for n in outer
               if s_calls.get(n) != 1 or t_calls.get(n) != 1}
    return [n for n in s_calls if n not in skipped], skipped


def after_blocks(model, last: str, run) -> list[torch.nn.Parameter]:
    """The trainable parameters of the modules first called after block ``last`` returned (a classifier's
    head, an LM's final norm and head), in one forward ``run()``."""
    order: list[torch.nn.Module] = []
    mods = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    hooks = [m.register_forward_pre_hook(lambda m, a: order.append(m)) for m in mods]
    _hooked(hooks + [model.get_submodule(last).register_forward_hook(lambda m, a, o: order.append(None))], run)
    end = max((k for k, m in enumerate(order) if m is None), default=len(order))
    before = {id(m) for m in order[:end] if m is not None}
    seen = {id(p) for m in order[:end] if m is not None for p in m.parameters(recurse=False)}  # tied: not a tail's
    after = [m for m in dict.fromkeys(m for m in order[end + 1:] if m is not None) if id(m) not in before]
    return [p for m in after for p in m.parameters(recurse=False) if p.requires_grad and id(p) not in seen]


def _replayable(kwargs: dict) -> dict:
    """A block's keyword inputs for calling it again: a KV cache (transformers' ``past_key_values``), which
    each call would extend, is dropped and caching turned off."""
    out = {k: None if type(v).__name__.endswith("Cache") else v for k, v in kwargs.items()}
    return {**out, "use_cache": False} if "use_cache" in out else out


def _capture(model, name: str, run, inputs: bool) -> Any:
    """The block's inputs (args, kwargs), or its output and whether that was a lone tensor, from a forward
    stopped right after."""
    mod, box = model.get_submodule(name), {}

    def pre(m, args, kwargs):
        box["v"] = (args, _replayable(kwargs))
        raise _Stop

    def post(m, args, out):
        box["v"] = (first_tensor(out), isinstance(out, torch.Tensor))
        raise _Stop

    h = mod.register_forward_pre_hook(pre, with_kwargs=True) if inputs else mod.register_forward_hook(post)
    try:
        with torch.no_grad():
            run()
    except _Stop:
        pass
    finally:
        h.remove()
    return box.get("v")


def _kept(student, teacher, name: str, out: torch.Tensor, ref: torch.Tensor, lone: bool) -> torch.Tensor | None:
    """The original's output ``ref`` on the positions the plan kept, or None if they cannot match ``out``.
    The map names one value, a module's last: it is used only for a module that returns a lone tensor; a
    teacher that was itself pruned has a map too, and the student's positions are taken within it."""
    dims = (getattr(student, CHANNELS_ATTR, None) or {}).get(name, {})
    if dims and not lone:
        return None
    base = (getattr(teacher, CHANNELS_ATTR, None) or {}).get(name, {})
    for d, idx in dims.items():
        if d in base:  # positions of the first original: re-based onto the teacher's own kept ones
            where = {v: k for k, v in enumerate(base[d])}
            if not set(idx) <= set(where):
                return None
            idx = [where[i] for i in idx]
        if d < ref.dim() and ref.shape[d] > len(idx) and max(idx, default=-1) < ref.shape[d]:
            ref = ref.index_select(d, torch.as_tensor(idx, device=ref.device))
    return ref if ref.shape == out.shape and ref.is_floating_point() else None


def _loss(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return (out.float() - ref.float()).pow(2).mean() / ref.float().var(unbiased=False).clamp_min(1e-8)


def _same(a: tuple[tuple, dict], b: tuple[tuple, dict]) -> bool:
    return all(x is y for x, y in zip(a[0], b[0])) and all(a[1][k] is b[1].get(k) for k in a[1])


def reconstruct_blocks(distill, train: list[tuple[str, Any]], heldout: list, mix, lr: float, *,
                       steps: int | None = None, seconds: float | None = None, seed: int = 0) -> BlockStage:
    """Train each block of ``distill.student`` toward ``distill.teacher``'s output of it (module docstring):
    ``steps`` per block, or ``seconds`` for all of them, shared evenly."""
    start, stage = time.perf_counter(), BlockStage()
    student, teacher = distill.student, distill.teacher
    g = torch.Generator().manual_seed(seed)
    feeds = [as_inputs(b, w, distill.positional, distill.unpack) for w, b in train]
    mixed = [blended(f, mix, w) for f, (w, _) in zip(feeds, train)]  # a new blend of every batch
    feeds += [m for m, f in zip(mixed, feeds) if not _same(m, f)]
    held = [as_inputs(b, f"held-out batch {k}", distill.positional, distill.unpack) for k, b in enumerate(heldout)]

    def runner(model, device, f):
        return lambda: model(*to_device(f[0], device), **to_device(f[1], device))

    names, stage.skipped = blocks_to_train(student, teacher, runner(student, distill.device, feeds[0]),
                                           runner(teacher, distill.t_device, feeds[0]))
    for k, name in enumerate(progress(names, "reconstructing blocks", len(names))):
        left = None if seconds is None else seconds - (time.perf_counter() - start)
        if left is not None and left <= 0:
            stage.skipped.update({n: "out of time" for n in names[k:]})
            break
        budget = None if left is None else left / (len(names) - k)
        done = _train_block(name, distill, feeds, held or feeds[:1], runner, lr, steps, budget, g)
        if isinstance(done, str):
            stage.skipped[name] = done
        else:
            stage.blocks.append((name, *done))
    stage.seconds = time.perf_counter() - start
    return stage


def _train_block(name, distill, feeds, held, runner, lr, steps, budget_s, g):
    """One block: its captured inputs and targets, then Adam on its own weights for ``steps`` or
    ``budget_s`` (the rate probed where ``lr`` is None). (before, after, steps, rate) or why not."""
    student, teacher, mod, begin = distill.student, distill.teacher, distill.student.get_submodule(name), time.perf_counter()

    def pairs(fs):
        out = []
        for f in fs:
            args = _capture(student, name, runner(student, distill.device, f), inputs=True)
            ref = _capture(teacher, name, runner(teacher, distill.t_device, f), inputs=False)
            if args is None or ref is None or ref[0] is None:
                return "not reached by a forward"
            with torch.no_grad():
                got = mod(*args[0], **args[1])
            lone, got = isinstance(got, torch.Tensor), first_tensor(got)
            target = (_kept(student, teacher, name, got, ref[0].to(distill.device), lone and ref[1])
                      if isinstance(got, torch.Tensor) else None)
            if target is None:
                return ("its output's shape differs from the original's on channels the plan does not map "
                        "(or it returns several values)")
            out.append((args, target))
        return out

    train, check = pairs(feeds), pairs(held)
    if isinstance(train, str) or isinstance(check, str):
        return train if isinstance(train, str) else check
    params = [p for p in mod.parameters() if p.requires_grad]

    def score() -> float:
        with torch.no_grad():
            return sum(float(_loss(first_tensor(mod(*a, **k)), t)) for (a, k), t in check) / len(check)

    before, start = score(), [p.detach().clone() for p in params]
    if lr is None:  # a few steps at each rate from the same weights; the best held-out loss picks one
        probe = PROBE_STEPS if steps is None else max(1, steps // 10)
        tried = [(_fit(mod, params, train, r, probe, None, g, score, before)[0], r) for r in BLOCK_LRS
                 if not _put(params, start)]
        lr = min(tried)[1]
        _put(params, start)
    left = None if budget_s is None else budget_s - (time.perf_counter() - begin)
    best, saved, done = _fit(mod, params, train, lr, steps, left, g, score, before)
    _put(params, saved)
    for p in params:
        p.grad = None
    return before, best, done, lr


def _put(params: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def _fit(mod, params, train, lr, steps, budget_s, g, score, before):
    """Adam on ``params`` for ``steps`` or ``budget_s`` seconds (both: whichever ends first), cosine to zero;
    the best held-out weights."""
    best, saved, done = before, [p.detach().clone() for p in params], 0
    opt = torch.optim.Adam(params, lr=lr)
    bound, t0 = steps, time.perf_counter()
    every = max(1, bound // 4) if bound else 1
    while bound is None or done < bound:
        (args, kwargs), target = train[int(torch.randint(len(train), (1,), generator=g))]
        loss = _loss(first_tensor(mod(*args, **kwargs)), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        done += 1
        if bound is None and (done == 4 or time.perf_counter() - t0 > budget_s / 4):
            # a time budget: as many steps as the first ones' speed allows (a fifth kept for scoring)
            bound = max(done, int(budget_s / ((time.perf_counter() - t0) / done) * 0.8))
            every = max(1, bound // 4)
        for group in opt.param_groups:  # cosine to zero over the block's steps
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(1.0, done / bound))) if bound else lr
        late = steps is not None and budget_s is not None and time.perf_counter() - t0 >= budget_s
        if done % every == 0 or done == bound or late:
            held_loss = score()
            if held_loss < best:
                best, saved = held_loss, [p.detach().clone() for p in params]
        if late:
            break
    return best, saved, done
