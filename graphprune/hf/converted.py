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


def stored_pieces(model: torch.nn.Module, name: str, shape: tuple[int, ...]) -> dict[str, torch.Tensor] | None:
    """Saved name -> the model tensor ``name``'s flat element index of each saved element, where the model's
    reverse conversion stores ``name`` elsewhere or in pieces; None where it keeps it as it is, or where the
    conversion is no pure move of data (or transformers has none)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return None
    numel = int(torch.Size(shape).numel())
    probe = torch.arange(numel, dtype=torch.int64).reshape(shape)
    try:
        pieces = {k: v.reshape(-1) for k, v in revert_weight_conversion(model, {name: probe}).items()}
    except Exception:  # noqa: BLE001 - a conversion that cannot run on a lone tensor: nothing known
        return None
    if list(pieces) == [name] or not pieces:
        return None
    count = torch.zeros(numel, dtype=torch.int32)
    for index in pieces.values():
        if index.dtype != torch.int64 or (index.numel() and (int(index.min()) < 0 or int(index.max()) >= numel)):
            return None  # arithmetic or a cast: no pure move of data
        count.index_add_(0, index, torch.ones_like(index, dtype=torch.int32))
    return pieces if bool((count == 1).all()) else None  # every element stored exactly once


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
    does not hold is assembled from the pieces the model's conversion stores it as."""

    def __init__(self, ckpt, model: torch.nn.Module) -> None:
        self.ckpt, self.model = ckpt, model
        self.shapes = {n: tuple(t.shape) for n, t in model.state_dict(keep_vars=True).items()}
        self._pieces: dict[str, dict | None] = {}

    def pieces(self, name: str) -> dict | None:
        if name not in self._pieces:
            self._pieces[name] = stored_pieces(self.model, name, self.shapes[name]) if name in self.shapes else None
        return self._pieces[name]

    def __contains__(self, name: str) -> bool:
        got = self.pieces(name) if name not in self.ckpt else None
        return name in self.ckpt or (got is not None and all(k in self.ckpt for k in got))

    def get(self, name: str) -> torch.Tensor:
        if name in self.ckpt:
            return self.ckpt.get(name)
        got = self.pieces(name)
        out = None if got is None else assemble(got, self.shapes[name], lambda k: self.ckpt.get(k) if k in self.ckpt
                                                else None)
        return self.ckpt.get(name) if out is None else out  # the checkpoint's own error where nothing is known

    def __getattr__(self, attr: str):  # names(), dtype(), release(), folder: the checkpoint's
        return getattr(self.ckpt, attr)
