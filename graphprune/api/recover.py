"""Recovery by distillation: train a pruned PyTorch model to match the original (the teacher).

- **Loss, per output.** Of a mapping output (transformers' ``ModelOutput``) only ``logits``, else
  only ``last_hidden_state``, else every floating tensor leaf (of a tensor, tuple, list or dict)
  counts. One named ``*logits*``, or unnamed and 2-D / 3-D with a last dim of 2 or more ((batch,
  [positions,] classes)), is logits: KL divergence of the softmax at ``temperature`` T, times T².
  Any other (embeddings, hidden states, images): MSE over the teacher output's variance.
  ``loss="kl"`` / ``"mse"`` forces one kind; a dict batch's ``attention_mask`` masks padding.
- **Features.** ``features=True`` matches the outputs of modules in an ``nn.Sequential`` /
  ``nn.ModuleList`` (blocks, layers), ``features=[names]`` those modules, where both models give
  equal shapes (the residual stream, not pruned widths); ``result.features_matched`` lists them.
- **Blocks first.** ``blockwise=True`` trains each block alone toward the original's output of it, then
  the layers after the last block alone, before the end-to-end stage (api/recover_blocks.py);
  ``result.blocks`` says what each gained.
- **Batches.** A dict is keyword inputs, a tensor the one input, a tuple/list positional inputs
  unless it has more elements than the forward's required positional parameters (``(images,
  labels)`` for ``forward(x)``): then its first element is the input. ``unpack=`` replaces this.
- **Blended inputs.** Each training batch's images are blended item with item, the same blend fed
  to both models (``mix``, api/recover_mix.py): a few hundred images give a new input every step.
- **Held-out data.** The first ``holdout`` share of the batches (at least one of two or more) is
  never trained on; it scores the weights every ``eval_every`` steps, ``patience`` evaluations
  without a better loss stop early, and the best weights are restored. Data with ``len()`` is
  iterated again each epoch, skipping those positions (a shuffled DataLoader may move samples
  across the split; a list's training batches are reshuffled by a seeded generator); data
  without ``len()`` (a generator) is read once and cached.
- **Modes.** Teacher and student run in eval mode (the student with grad): BatchNorm keeps its
  running statistics, which a small recovery set would corrupt; dropout is off. Modes are restored.
- **Optimiser.** AdamW without weight decay at ``lr`` (transformers 1e-4, else probed:
  recover_lr.py), warm-up over 5% of the steps (at most 50), then cosine to zero (constant when
  only ``time_s`` bounds the run), gradient norm clipped to 1.
- **Determinism.** ``seed`` seeds torch inside ``torch.random.fork_rng`` and the batch order:
  the same inputs give bit-identical weights on CPU.
"""
from __future__ import annotations

import inspect
import itertools
import math
import numbers
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..util.containers import container_children
from ..util.progress import progress
from .recover_blocks import BLOCK_BATCHES, after_blocks, reconstruct_blocks
from .recover_data import HOW, Batches, RecoverError, as_inputs, first_tensor, positional_params, to_device
from .recover_lr import PROBE_BATCHES, UNPROBED_LR, probe_lr, worth_probing
from .recover_mix import blended, check_mix
from .recover_result import RecoverResult


def _device(model: torch.nn.Module) -> torch.device:
    return next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _leaves(out: Any, name: str = "output") -> list[tuple[str, torch.Tensor]]:
    """The outputs to match, named (see the module docstring)."""
    if isinstance(out, torch.Tensor):
        return [(name, out)] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        key = next((k for k in ("logits", "last_hidden_state") if isinstance(out.get(k), torch.Tensor)), None)
        return [(key, out[key])] if key else [leaf for k, v in out.items() for leaf in _leaves(v, str(k))]
    if isinstance(out, (tuple, list)):
        return [leaf for i, v in enumerate(out) for leaf in _leaves(v, f"{name}[{i}]")]
    return []


def _match(s: torch.Tensor, t: torch.Tensor, kind: str, temperature: float, mask: torch.Tensor | None):
    """The loss between a student and a teacher output, averaged over the positions ``mask`` keeps."""
    s, t = s.float(), t.float()
    if kind == "kl":
        per = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), reduction="none",
                       log_target=True).sum(-1) * temperature ** 2
    else:
        per = (s - t).pow(2) / t.var(unbiased=False).clamp_min(1e-8)
    if mask is None or per.shape[:mask.dim()] != mask.shape:
        return per.mean()
    weight = mask.to(per.dtype)
    return (per.reshape(*mask.shape, -1).mean(-1) * weight).sum() / weight.sum().clamp_min(1)


def _kind(name: str, t: torch.Tensor, loss: str) -> str:
    logits = "logits" in name or (name.startswith("output") and t.dim() in (2, 3) and t.shape[-1] >= 2)
    return loss if loss != "auto" else "kl" if logits else "mse"


def recover_options(arg: bool | Mapping[str, Any] | None, calib, need_data: bool = True) -> dict | None:
    """``recover=`` (True, or a dict of :func:`recover`'s keywords) as those keywords, ``data`` defaulting
    to ``calib``; None for no recovery. Its type, keywords and ranges are checked here, so a caller can
    refuse a bad one before any work (``need_data=False``: the data are not known yet)."""
    if arg is None or arg is False:
        return None
    if arg is not True and not isinstance(arg, Mapping):
        raise RecoverError(f"recover= takes True or a dict of graphprune.recover's keywords (steps=, time_s=, lr=, "
                           f"data=, ...), not {arg!r}")
    opts = {} if arg is True else dict(arg)
    try:
        inspect.signature(recover).bind(None, None, **{"data": None, **opts})
    except TypeError as exc:
        raise RecoverError(f"recover={arg!r}: {exc} (see help(graphprune.recover))") from None
    _check_ranges(**opts)
    if opts.get("data") is None:
        opts["data"] = calib
    if need_data and opts["data"] is None:
        raise RecoverError("recover= trains on data: pass recover=dict(data=batches, steps=...) or calib=")
    return opts


def _check_ranges(steps=None, time_s=None, holdout=0.1, eval_every=None, loss="auto", temperature=2.0, mix=None,
                  lr=None, callback=None, **_) -> None:
    """Every argument checked before the first step (a callback=3 failed at the first evaluation, lr="fast"
    with a bare TypeError)."""
    num = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    for name, v, ok in (("steps", steps, steps is None or (isinstance(steps, int) and steps >= 1)),
                        ("time_s", time_s, time_s is None or (num(time_s) and time_s > 0)),
                        ("holdout", holdout, num(holdout) and 0 <= holdout < 1),
                        ("eval_every", eval_every, eval_every is None or (isinstance(eval_every, numbers.Integral)
                                                                        and eval_every >= 1)),
                        ("loss", loss, loss in ("auto", "kl", "mse")),
                        ("temperature", temperature, num(temperature) and temperature > 0),
                        ("mix", mix, mix is None or (num(mix) and mix >= 0)),
                        ("lr", lr, lr is None or (num(lr) and lr >= 0))):
        if not ok:
            raise RecoverError(f"recover: {name}={v!r} is out of range (see help(graphprune.recover))")
    if callback is not None and not callable(callback):
        raise RecoverError(f"recover: callback={callback!r} is not callable; give a function (step, loss, held_out)")


class _Distill:
    """The student, the teacher, and the loss between them on one batch."""

    def __init__(self, student, teacher, loss: str, temperature: float, feature_weight: float, unpack):
        self.student, self.teacher, self.loss, self.temperature = student, teacher, loss, temperature
        self.feature_weight, self.unpack, self.positional = feature_weight, unpack, positional_params(student)
        self.device, self.t_device = _device(student), _device(teacher)
        self.names, self.hooks = [], []
        self.captured: dict[str, dict[str, torch.Tensor]] = {"student": {}, "teacher": {}}

    def run(self, who: str, batch: Any, where: str, inputs: tuple | None = None):
        model, device = (self.student, self.device) if who == "student" else (self.teacher, self.t_device)
        args, kwargs = inputs or as_inputs(batch, where, self.positional, self.unpack)
        try:
            return model(*to_device(args, device), **to_device(kwargs, device)), kwargs.get("attention_mask")
        except Exception as exc:
            why = (str(exc).strip().splitlines() or [""])[0][:300]
            raise RecoverError(f"{where} cannot run through the {who}: {type(exc).__name__}: {why}. Each batch must "
                               f"be the model's input(s); {HOW}, or pass unpack=") from exc

    def __call__(self, batch: Any, where: str, mix: float | None = 0.0) -> torch.Tensor:
        # the same blend for both models: function matching (recover_mix.py)
        inputs = blended(as_inputs(batch, where, self.positional, self.unpack), mix, where)
        with torch.no_grad():
            t_out, mask = self.run("teacher", batch, where, inputs)
        s_out, _ = self.run("student", batch, where, inputs)
        s_leaves, t_leaves = _leaves(s_out), _leaves(t_out)
        s_names, t_names = [n for n, _ in s_leaves], [n for n, _ in t_leaves]
        if not t_leaves or s_names != t_names:
            raise RecoverError(f"outputs to match: student {s_names}, teacher {t_names}; recover matches the floating "
                               "tensors that a pruned model and its original both return")
        mask = mask.to(self.device) if isinstance(mask, torch.Tensor) else None
        losses = []
        for (name, s), (_, t) in zip(s_leaves, t_leaves):
            if s.shape != t.shape:
                raise RecoverError(f"output {name}: student {tuple(s.shape)}, teacher {tuple(t.shape)}; recover "
                                   "matches outputs of equal shape (give the unpruned original as teacher)")
            losses.append(_match(s, t.to(s.device), _kind(name, t, self.loss), self.temperature, mask))
        loss = torch.stack(losses).mean()
        if self.names:
            s_f, t_f = self.captured["student"], self.captured["teacher"]
            feats = [_match(s_f[n], t_f[n].to(s_f[n].device), "mse", 1.0, mask) for n in self.names]
            loss = loss + self.feature_weight * torch.stack(feats).mean()
        return loss

    def hook(self, features: bool | Sequence[str], where: str, batch: Any) -> list[str]:
        """Choose the feature modules (equal output shapes on ``batch``) and keep hooks on them."""
        s_mods, t_mods = dict(self.student.named_modules()), dict(self.teacher.named_modules())
        asked = [n for n in container_children(self.student) if n in t_mods] if features is True else list(features)
        if unknown := [n for n in asked if n not in s_mods or n not in t_mods]:
            raise RecoverError(f"features {unknown} name no module of both models (see model.named_modules())")
        hooks = {(who, n): mods[n].register_forward_hook(
            lambda m, i, o, n=n, store=self.captured[who]: store.__setitem__(n, first_tensor(o)))
            for who, mods in (("student", s_mods), ("teacher", t_mods)) for n in asked}
        self.hooks = list(hooks.values())  # removed by recover() whatever happens
        with torch.no_grad():
            self.run("teacher", batch, where), self.run("student", batch, where)
        s_f, t_f = self.captured["student"], self.captured["teacher"]
        self.names = [n for n in asked if isinstance(s_f.get(n), torch.Tensor) and isinstance(t_f.get(n), torch.Tensor)
                      and s_f[n].shape == t_f[n].shape and s_f[n].is_floating_point()]
        for h in (h for (_, n), h in hooks.items() if n not in self.names):
            h.remove()
        if features is not True and not self.names:
            raise RecoverError(f"none of features {asked} has the same output shape in student and teacher; "
                               "name modules on the residual stream (block outputs) or use features=True")
        return self.names

    def evaluate(self, heldout: list) -> float | None:
        with torch.no_grad():
            losses = [float(self(b, f"held-out batch {k}")) for k, b in enumerate(heldout)]
        return sum(losses) / len(losses) if losses else None


def recover(pruned: torch.nn.Module, teacher: torch.nn.Module, data: Iterable, steps: int | None = None,
            time_s: float | None = None, lr: float | None = None, callback: Callable | None = None, *,
            holdout: float = 0.1, eval_every: int | None = None, patience: int | None = 5, temperature: float = 2.0,
            loss: str = "auto", features: bool | Sequence[str] = False, feature_weight: float = 1.0,
            unpack: Callable | None = None, seed: int = 0, mix: float | None = None,
            blockwise: bool = False) -> RecoverResult:
    """Train ``pruned`` in place to match ``teacher`` (the unpruned original) on ``data``.

    Args:
        pruned: the pruned module (any ``nn.Module``, transformers models too); trained in place.
        teacher: the original before pruning (``copy.deepcopy`` it first); frozen, eval mode.
        data: a DataLoader or iterable of batches: tensors, tuples/lists (``(x, y)`` uses ``x``)
            or dicts of keyword inputs; every rule is in the module docstring.
        steps, time_s: bound the work (neither: one epoch of training batches, 100 to 1000 steps).
        lr: AdamW's learning rate (default 1e-4 for transformers models; otherwise the best of a
            short probe, api/recover_lr.py: 1e-3 ... 1e-6, a few steps each on held-out loss;
            1e-3 for runs under 24 steps or 30 s).
        callback: ``callback(step, train_loss, heldout_loss)`` at each evaluation; False stops.
        holdout, eval_every, patience: the share of batches held out (0: none, no early stop); an
            evaluation every ``eval_every`` steps (default a tenth of the steps, at most 100); stop
            after ``patience`` evaluations without a better held-out loss (None: never).
        temperature, loss: the KL temperature; ``"auto"``, ``"kl"`` or ``"mse"`` for every output.
        features, feature_weight: also match module outputs (True: blocks; or module names).
        unpack, seed: ``batch -> (args, kwargs)`` replacing the batch rule; the seed of torch and
            the batch order (the same inputs give bit-identical weights).
        mix: Beta(mix, mix) blends of two items of each training batch (dim 0 the item), fed to
            both models (function matching, api/recover_mix.py): any floating input of 2+ dims;
            None: Beta(1, 1) on images (4+ dims) only; 0: never. Token ids and masks stay as given.
        blockwise: first train each block alone toward the original's output of it
            (api/recover_blocks.py), with half of ``steps`` (each block) or of ``time_s``; the
            end-to-end distillation has the rest.

    Returns:
        A :class:`RecoverResult`; ``pruned`` holds the weights of its ``best_step``.

    Example:
        >>> import copy, torch, graphprune
        >>> g = torch.Generator().manual_seed(0)
        >>> teacher = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
        >>> data = [torch.randn(16, 8, generator=g) for _ in range(10)]
        >>> student, _ = graphprune.prune(copy.deepcopy(teacher), (data[0],), ratio=0.75, round_to=1)
        >>> result = graphprune.recover(student, teacher, data, steps=100)
        >>> result.heldout_best < result.heldout_before, result.batches
        (True, (9, 1))
    """
    if pruned is teacher or {id(p) for p in pruned.parameters()} & {id(p) for p in teacher.parameters()}:
        raise RecoverError("teacher and pruned model share weights: pass copy.deepcopy(model) taken before pruning")
    _check_ranges(steps, time_s, holdout, eval_every, loss, temperature, mix, lr, callback)
    if not any(p.requires_grad for p in pruned.parameters()):
        raise RecoverError("the pruned model has no parameter with requires_grad=True to train")
    distill = _Distill(pruned, teacher, loss, temperature, feature_weight, unpack)
    modes, _ = (pruned.training, teacher.training), (pruned.eval(), teacher.eval())
    try:
        with torch.random.fork_rng(devices=[distill.device] if distill.device.type == "cuda" else []):
            torch.manual_seed(seed)
            feed = Batches(data, holdout, seed, int((steps or 1000) / (1 - holdout)) + 2)
            stage = None
            if blockwise:
                stage, steps, time_s = _blocks_first(distill, feed, steps, time_s, lr, mix, seed, patience)
            result = _loop(distill, feed, steps, time_s, lr, callback, eval_every, patience, features, mix)
            result.blocks = stage
            return result
    finally:
        for h in distill.hooks:
            h.remove()
        pruned.train(modes[0]), teacher.train(modes[1])


def _blocks_first(distill: _Distill, feed: Batches, steps, time_s, lr, mix, seed, patience):
    """The block stage on up to BLOCK_BATCHES training batches (half the steps or time), then the layers after
    the last block alone (a quarter: their inputs are what the blocks give now); the rest is the end-to-end
    stage's, all of it where nothing was trained or the stage was undone."""
    bound = steps if steps is not None or time_s is not None else min(1000, max(100, feed.n_train))
    train = list(itertools.islice(feed.train(), min(feed.n_train, BLOCK_BATCHES)))
    before, saved, start = distill.evaluate(feed.heldout), _snapshot(distill.student), time.perf_counter()
    try:
        stage = reconstruct_blocks(distill, train, feed.heldout, mix, lr,
                                   steps=None if bound is None else max(1, bound // 2),
                                   seconds=None if time_s is None else time_s / 2, seed=seed)
        tail = [] if not stage.blocks else after_blocks(
            distill.student, stage.blocks[-1][0], lambda: distill.run("student", train[0][1], train[0][0]))
        if tail:
            stage.tail = _tail(distill, feed, tail, None if bound is None else max(1, bound // 4),
                               None if time_s is None else max((time_s - (time.perf_counter() - start)) / 2, 1e-3),
                               lr, mix, patience)
    except BaseException:
        distill.student.load_state_dict(saved)  # an error or Ctrl-C mid-stage leaves the model as it came
        raise
    finally:
        for p in distill.student.parameters():
            p.grad = None  # the stages' last gradients: a copy of the weights the end-to-end stage need not hold
    stage.heldout_losses = (before, distill.evaluate(feed.heldout))
    if None not in stage.heldout_losses and stage.heldout_losses[1] > stage.heldout_losses[0]:
        distill.student.load_state_dict(saved)  # better blocks, a worse model: the stage is undone
        stage.undone = True
    rest_s = None if time_s is None else max(time_s - (time.perf_counter() - start), 1e-3)
    used = 0 if stage.undone or not stage.blocks else bound // 2 + bound // 4 * bool(tail) if bound else 0
    return stage, None if bound is None else max(1, bound - used), rest_s


def _tail(distill: _Distill, feed: Batches, tail: list, steps, time_s, lr, mix, patience) -> RecoverResult:
    """End-to-end distillation of the ``tail`` parameters alone (the rest frozen, so backward stops there)."""
    chosen, grads = {id(p) for p in tail}, [(p, p.requires_grad) for p in distill.student.parameters()]
    try:
        for p, _ in grads:
            p.requires_grad_(id(p) in chosen)
        return _loop(distill, feed, steps, time_s, lr, None, None, patience, False, mix)
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)


def _loop(distill: _Distill, feed: Batches, steps, time_s, lr, callback, eval_every, patience, features, mix):
    start, model, train = time.perf_counter(), distill.student, feed.train()
    pending = next(train)
    if mix:  # an explicit mix= with nothing to blend is refused before any work
        check_mix(*as_inputs(pending[1], pending[0], distill.positional, distill.unpack), mix, pending[0])
    matched = distill.hook(features, *pending) if features else []
    params, probed, best = [p for p in model.parameters() if p.requires_grad], [], distill.evaluate(feed.heldout)
    if lr is None and hasattr(model, "config") and hasattr(model, "save_pretrained"):
        lr = 1e-4  # transformers: the usual fine-tuning rate (a probe there costs minutes a step on CPU)
    elif lr is None and not worth_probing(steps, time_s):
        lr = UNPROBED_LR
    elif lr is None:
        check = feed.heldout[:PROBE_BATCHES] or [next(train)[1]]  # scored, never stepped on
        lr, probed = probe_lr(model, params, lambda b, w: distill(b, w, mix), train, lambda: distill.evaluate(check))
    bound = steps if steps is not None or time_s is not None else min(1000, max(100, feed.n_train))
    every = eval_every or (max(1, min(100, bound // 10)) if bound else 50)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warm = min(50, max(1, (bound or 1000) // 20))  # then cosine to zero, or constant without a step bound
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: min(1.0, (k + 1) / warm) * (
        0.5 * (1 + math.cos(math.pi * min(k, bound) / bound)) if bound else 1.0))
    result = RecoverResult(0, 0.0, features_matched=matched, lr=lr, batches=(feed.n_train, feed.n_hold),
                           lr_probe=probed)
    result.heldout_losses += [(0, best)] if best is not None else []
    saved, waited, result.reason = _snapshot(model), 0, "steps"
    while result.reason == "steps" and (bound is None or result.steps < bound):
        todo, first = every if bound is None else min(every, bound - result.steps), result.steps
        desc = f"recovering {first}/{bound or '?'}" + "".join(f", {what} {v:.4g}" for what, v in (
            ("loss", result.train_losses[-1] if result.train_losses else None), ("held-out", best)) if v is not None)
        for _ in progress(range(todo), desc, todo):
            where, batch = pending or next(train)
            pending, loss = None, distill(batch, where, mix)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step(), sched.step()
            result.steps += 1
            result.train_losses.append(loss.item())
            if time_s is not None and time.perf_counter() - start >= time_s:
                result.reason = "time"
                break
        held = distill.evaluate(feed.heldout)
        if held is not None:
            result.heldout_losses.append((result.steps, held))
            improved = held < best
            best, waited = (held, 0) if improved else (best, waited + 1)
            saved, result.best_step = (_snapshot(model), result.steps) if improved else (saved, result.best_step)
        else:
            result.best_step = result.steps
        recent = result.train_losses[first:]
        if callback is not None and callback(result.steps, sum(recent) / len(recent), held) is False:
            result.reason = "callback"
        elif patience is not None and held is not None and waited >= patience:
            result.reason = "patience"
    if result.best_step != result.steps:
        model.load_state_dict(saved)
    result.stopped_early, result.seconds = result.reason in ("patience", "callback"), time.perf_counter() - start
    return result
