"""The learning rate recover() trains with when none is given: a few AdamW steps at each
candidate from the same weights, scored on held-out batches, the best kept.

Adam moves every parameter by about the learning rate whatever its scale, so the rate that
suits a network depends on its smallest well-tuned weights: a refit EfficientNet-Lite0 loses
at 1e-3 and 1e-4 (held-out KL 0.07 -> 0.4 within 50 steps) and gains at 1e-5 (0.07 -> 0.05),
where a small MLP wants 1e-3. Probing costs ``len(PROBE_LRS)`` times ``PROBE_STEPS`` training
steps and a score (recover() scores at most :data:`PROBE_BATCHES` held-out batches), so recover()
probes only runs long enough to pay for it (:func:`worth_probing`).
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

PROBE_LRS = (1e-3, 1e-4, 1e-5, 1e-6)
PROBE_STEPS = 3
PROBE_BATCHES = 4  # held-out batches a probe is scored on
UNPROBED_LR = 1e-3  # the rate of a run too short to probe


def worth_probing(steps: int | None, time_s: float | None) -> bool:
    """A probe costs about ``len(PROBE_LRS) * PROBE_STEPS`` steps: worth it where the run is at
    least twice that long (or bound by 30 s or more of time: a probe is not bounded by time_s, and on a
    slow model it spent a 16 s budget). At four times (before), a CLI user's --recover-steps 30 on
    EfficientNet-Lite0 trained at the unprobed 1e-3, which it loses at, and kept the weights of step 0."""
    return (steps is None or steps >= 2 * len(PROBE_LRS) * PROBE_STEPS) and (time_s is None or time_s >= 30)


def probe_lr(model: torch.nn.Module, params: list[torch.nn.Parameter], loss_of: Callable[[object, str], torch.Tensor],
             batches: Iterator[tuple[str, object]], score: Callable[[], float]) -> tuple[float, list[tuple[float, float]]]:
    """(the learning rate whose :data:`PROBE_STEPS` AdamW steps leave ``score()`` lowest, every
    (rate, score) tried); the model's weights are restored after each trial. ``batches`` yields
    ``(label, batch)``; the same batches, blended alike, are used for every rate."""
    saved = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    steps = [next(batches) for _ in range(PROBE_STEPS)]
    tried = []
    try:
        rng = torch.random.get_rng_state()
        for lr in PROBE_LRS:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            with torch.random.fork_rng(devices=[]):
                torch.random.set_rng_state(rng)  # the same blends (recover(mix=)) of the batches for every rate
                for where, batch in steps:
                    loss = loss_of(batch, where)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    opt.step()
            value = score()
            tried.append((lr, value if value == value else float("inf")))  # NaN: diverged
            model.load_state_dict(saved)
    finally:  # whatever happens, the model leaves with the weights it came with
        model.load_state_dict(saved)
        for p in params:
            p.grad = None
    return min(tried, key=lambda t: (t[1], -t[0]))[0], tried
