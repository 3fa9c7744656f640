"""Masks of the masked interpreter, fitted to the run's sizes.

A mask is built over a slot's positions at the example's shapes. Where the slot merges an input's
dim with a pruned one (heads folded into the batch, ``'b n (h d) -> (b h) n d'``), a calibration
batch of another size has more positions there: the mask is the same along the input's factor,
so it is widened along that factor, not refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import PlanError


@dataclass(frozen=True)
class SlotMask:
    keep: torch.Tensor  # bool, over the slot's positions at the example's shapes
    sizes: tuple[int, ...]  # the slot's factors, outer-major (one where it is no product)
    free: tuple[int, ...]  # factors an input's dim sizes, which another batch may resize
    where: str = ""

    def at(self, n: int) -> torch.Tensor:
        """The mask over ``n`` positions."""
        size = self.keep.numel()
        if n == size:
            return self.keep
        view = self.keep.view(self.sizes)
        for i in self.free:
            grown, rest = divmod(n * self.sizes[i], size)
            first = view.narrow(i, 0, 1)
            if rest == 0 and grown > 0 and bool((view == first).all()):
                shape = list(self.sizes)
                shape[i] = grown
                return first.expand(shape).reshape(-1)
        raise PlanError(f"a channel mask over {self.where} ({size} positions at the example's shapes) cannot be "
                        f"fitted to a batch that has {n} there: its positions are not an input's dim times the "
                        "channels. Pass calibration batches of the example's shapes.")


def slot_mask(dg, value: str, dim: int, keep: np.ndarray, free_atoms: set[int]) -> SlotMask:
    term, _ = dg.solver.slot_atoms((value, dim))
    parts = term[1] if term[0] == "p" else (term,)
    sizes = tuple(dg.solver.size(t) for t in parts)
    if any(s is None for s in sizes) or int(np.prod(sizes)) != keep.size:
        sizes, parts = (int(keep.size),), (term,)
    free = tuple(i for i, t in enumerate(parts) if t[0] == "a" and t[1] in free_atoms)
    return SlotMask(torch.as_tensor(keep), sizes, free, f"node {value!r}, dim {dim}")


def input_atoms(dg) -> set[int]:
    """Atoms that are whole dims of the graph's inputs: the sizes another batch may change."""
    out: set[int] = set()
    for v in dg.ir.values.values():
        if v.kind != "input":
            continue
        for d in range(v.rank):
            term, _ = dg.solver.slot_atoms((v.name, d))
            if term[0] == "a":
                out.add(term[1])
    return out
