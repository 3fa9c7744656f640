"""What :func:`graphprune.recover` did: losses per step and per evaluation, and why it stopped."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..util.tables import table


@dataclass
class RecoverResult:
    """What :func:`recover` did: losses per step and per evaluation, and why it stopped."""

    steps: int
    seconds: float
    train_losses: list[float] = field(default_factory=list)  # one per optimiser step
    heldout_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss), step 0 first
    best_step: int = 0  # the step whose weights the model holds now
    stopped_early: bool = False
    reason: str = ""  # "steps", "time", "patience" or "callback"
    features_matched: list[str] = field(default_factory=list)
    lr: float = 0.0
    batches: tuple[int, int] = (0, 0)  # (training, held-out)
    lr_probe: list[tuple[float, float]] = field(default_factory=list)  # (rate, held-out loss) tried when lr=None
    blocks: object | None = None  # recover(blockwise=True)'s BlockStage: each block's held-out loss before/after

    heldout_before = property(lambda self: self.heldout_losses[0][1] if self.heldout_losses else None)
    heldout_best = property(lambda self: min(v for _, v in self.heldout_losses) if self.heldout_losses else None)

    def summary(self) -> str:
        """One line, for a prune report's notes."""
        held = (f", held-out loss {self.heldout_before:.4g} -> {self.heldout_best:.4g}" if self.heldout_losses
                else f", training loss {self.train_losses[-1]:.4g}" if self.train_losses else "")
        first = f"; first {self.blocks}" if self.blocks is not None else ""
        return (f"recovered by distillation: {self.steps} steps{held} (lr {self.lr:g}; stopped by {self.reason}; "
                f"weights of step {self.best_step}, changed after the oracle's check){first}")

    def __str__(self) -> str:

        evals = self.heldout_losses or ([(self.steps, None)] if self.steps else [])
        starts = [0] + [s for s, _ in evals]  # mean training loss since the previous evaluation
        means = {s: sum(self.train_losses[a:s]) / (s - a) for a, s in zip(starts, starts[1:]) if s > a}
        best = {k for k, (s, _) in enumerate(evals) if s == self.best_step}
        rows = [[evals[k][0], f"{means[evals[k][0]]:.4g}" if evals[k][0] in means else "",
                 "" if evals[k][1] is None else f"{evals[k][1]:.4g}", "best" if k in best else ""]
                for k in sorted({round(i * (len(evals) - 1) / 11) for i in range(12)} | best)] if evals else []
        text = (f"recover: {self.steps} steps in {self.seconds:.1f} s (lr {self.lr:g}, {self.batches[0]} training / "
                f"{self.batches[1]} held-out batches), stopped by {self.reason}; weights of step {self.best_step}\n")
        text += table(["step", "train loss", "held-out loss", ""], rows) if rows else "(no step taken)"
        text += f"\nfeatures matched: {', '.join(self.features_matched)}" if self.features_matched else ""
        return text + (f"\n{self.blocks}" if self.blocks is not None else "")
