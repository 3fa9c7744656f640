"""Tensors a transformers checkpoint stores under other names or split other ways than the model holds them.

transformers 5 models hold a mixture-of-experts layer's experts stacked (``mlp.experts.gate_up_proj``, one
(experts, 2 x ffn, hidden) tensor), while checkpoints, Mixtral's on the hub and whatever ``save_pretrained``
writes, keep one tensor per expert and projection (``block_sparse_moe.experts.3.w1.weight``). Loading converts
them; graphprune reads checkpoints itself (a streamed prune one block at a time, ``load_pruned``), so it asks
the model's own reverse conversion where each element of a tensor is stored: the conversion is run on a tensor
holding each element's index, and where it only moves data (renames, splits, stacks, transposes), each saved
element's value says which element of the model's tensor it is. One tensor at a time, so memory is the largest
tensor's, not the model's.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import GraphpruneError


def stored_pieces(model: torch.nn.Module, name: str, shape: tuple[int, ...]) -> dict[str, torch.Tensor] | None:
    """Saved name -> the model tensor ``name``'s flat element index of each saved element, where the model's
    reverse conversion stores ``name`` elsewhere or in pieces; None where it keeps it as it is, or where the
    conversion is no pure move of data (or transformers has none). The index is int32 where it fits (4 bytes
    an element: a Mixtral-8x7B layer's stacked experts, 940M elements, take 3.8 GB while it is read)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return None
    numel = int(torch.Size(shape).numel())
    kind = torch.int32 if numel < 2**31 else torch.int64
    try:
        pieces = {k: v.reshape(-1) for k, v in revert_weight_conversion(
            model, {name: torch.arange(numel, dtype=kind).reshape(shape)}).items()}
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):  # a conversion that cannot run on a
        return None  # lone tensor: nothing known (an allocation failure, a RuntimeError, is raised as it is)
    if list(pieces) == [name] or not pieces:
        return None
    seen = torch.zeros(numel, dtype=torch.bool)
    for index in pieces.values():
        if index.dtype != kind or (index.numel() and (int(index.min()) < 0 or int(index.max()) >= numel)) \
                or bool(seen[index].any()):
            return None  # arithmetic, a cast or a copy: no pure move of data
        seen[index] = True
    return pieces if bool(seen.all()) else None  # every element stored exactly once


def assemble(pieces: dict[str, torch.Tensor], shape: tuple[int, ...], read: Callable[[str], torch.Tensor | None]
             ) -> torch.Tensor | None:
    """The model's tensor from its stored pieces (``read(saved name)``, None where absent), in their dtype."""
    out = None
    for saved, index in pieces.items():
        t = read(saved)
        if t is None or t.numel() != index.numel():
            return None
        if out is None:
            out = torch.empty(int(torch.Size(shape).numel()), dtype=t.dtype)
        out[index] = t.reshape(-1).to(out.dtype)
    return None if out is None else out.reshape(shape)


class ConvertedCheckpoint:
    """A checkpoint (io/lazy_checkpoint.py's LazyCheckpoint) read by ``model``'s own tensor names: a name it
    does not hold is assembled from the pieces the model's conversion stores it as. An index is held only
    from the check that the pieces are there to the read that uses it (one tensor's, never the model's)."""

    def __init__(self, ckpt, model: torch.nn.Module) -> None:
        self.ckpt, self.model = ckpt, model
        self.shapes = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
        self._held: dict[str, dict | None] = {}

    def _pieces(self, name: str) -> dict | None:
        if name not in self._held:
            self._held = {name: stored_pieces(self.model, name, self.shapes[name]) if name in self.shapes else None}
        return self._held[name]

    def __contains__(self, name: str) -> bool:
        if name in self.ckpt:
            return True
        got = self._pieces(name)
        return got is not None and all(k in self.ckpt for k in got)

    def get(self, name: str) -> torch.Tensor:
        if name in self.ckpt:
            return self.ckpt.get(name)
        got = self._pieces(name)
        self._held = {}
        if got is None:
            return self.ckpt.get(name)  # the checkpoint's own error: nothing stores it
        for stored, index in got.items():
            if stored not in self.ckpt:
                raise GraphpruneError(f"'{self.ckpt.folder}' has no tensor '{stored}', which holds part of the model's "
                                      f"'{name}' as transformers stores it")
        out = assemble(got, self.shapes[name], self.ckpt.get)
        if out is None:
            sizes = {k: tuple(self.ckpt.get(k).shape) for k in list(got)[:2]}
            raise GraphpruneError(f"the model's '{name}' {self.shapes[name]} is stored as {len(got)} tensor(s) whose "
                                  f"sizes do not add up to it ({sizes}...): the config builds other sizes than "
                                  f"'{self.ckpt.folder}' holds")
        return out

    def __getattr__(self, attr: str):  # names(), dtype(), release(), folder: the checkpoint's
        return getattr(self.ckpt, attr)
