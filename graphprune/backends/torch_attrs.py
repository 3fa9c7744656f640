"""The int attributes of a module that may spell a size the plan changes, read and written by name.

Besides plain int attributes (``self.heads``), an einops layer (``Rearrange('b n (h d) -> b h n d', h=8)``,
``Reduce``) keeps its axis lengths in a dict and again in the tuple its forward reads: they read as
``axes_lengths.<axis>`` and are written to both (x-transformers splits its heads with such a layer)."""
from __future__ import annotations

from typing import Any

from torch import nn

_AXES = "axes_lengths."


def _einops_lengths(m: nn.Module) -> dict | None:
    lengths, packed = vars(m).get("axes_lengths"), vars(m).get("_axes_lengths")
    if isinstance(lengths, dict) and isinstance(packed, tuple) and packed == tuple(lengths.items()):
        return lengths
    return None


def int_attributes(m: nn.Module) -> list[tuple[str, int]]:
    """(name, value) of every int attribute of ``m``, einops axis lengths included, sorted by name: public ones,
    and a model's own private ones (rtdl's attention keeps ``self._n_heads``), not those of torch's layers."""
    settled = getattr(type(m), "settled_attributes", ())  # set by the rewrite itself (backends/torch_mha.py)
    own = not type(m).__module__.startswith("torch.")
    out = [(a, v) for a, v in vars(m).items() if type(v) is int and a not in settled
           and (not a.startswith("_") or own and not a.startswith("__"))]
    lengths = _einops_lengths(m)
    if lengths is not None:
        out += [(_AXES + k, v) for k, v in lengths.items() if type(v) is int]
    return sorted(out)


def get_attribute(m: nn.Module, attr: str) -> Any:
    if attr.startswith(_AXES) and _einops_lengths(m) is not None:
        return m.axes_lengths[attr[len(_AXES):]]
    return getattr(m, attr)


def set_attribute(m: nn.Module, attr: str, value: Any) -> None:
    """Set ``attr`` (a name :func:`int_attributes` gave). An einops layer gets new objects, never edited ones:
    a snapshot of ``vars(m)`` taken before restores it."""
    if attr.startswith(_AXES) and _einops_lengths(m) is not None:
        lengths = dict(m.axes_lengths)
        lengths[attr[len(_AXES):]] = value
        m.axes_lengths, m._axes_lengths = lengths, tuple(lengths.items())
        return
    setattr(m, attr, value)
