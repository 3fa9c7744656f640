"""The int attributes of a module that may spell a size the plan changes, read and written by name.

Besides plain int attributes (``self.heads``), an einops layer (``Rearrange('b n (h d) -> b h n d', h=8)``,
``Reduce``) keeps its axis lengths in a dict and again in the tuple its forward reads: they read as
``axes_lengths.<axis>`` and are written to both (x-transformers splits its heads with such a layer). The ints of a
short list or tuple read as ``name[i]`` (gluonts keeps its layer widths in ``self.hidden_dimensions``) and are
written as a new list, never an edited one."""
from __future__ import annotations

from typing import Any

from torch import nn

_AXES = "axes_lengths."
_SHORT = 8  # a longer list of ints is data (a lookup table), not sizes


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
    out += [(f"{a}[{i}]", x) for a, v in vars(m).items() if type(v) in (list, tuple) and 0 < len(v) <= _SHORT
            and not a.startswith("_") and a not in settled and all(type(y) is int for y in v) for i, x in enumerate(v)]
    return sorted(out)


def _element(attr: str) -> tuple[str, int] | None:
    name, bracket, rest = attr.partition("[")
    return (name, int(rest[:-1])) if bracket and rest.endswith("]") and rest[:-1].isdigit() else None


def get_attribute(m: nn.Module, attr: str) -> Any:
    if attr.startswith(_AXES) and _einops_lengths(m) is not None:
        return m.axes_lengths[attr[len(_AXES):]]
    item = _element(attr)
    return getattr(m, item[0])[item[1]] if item else getattr(m, attr)


def set_attribute(m: nn.Module, attr: str, value: Any) -> None:
    """Set ``attr`` (a name :func:`int_attributes` gave). An einops layer gets new objects, never edited ones:
    a snapshot of ``vars(m)`` taken before restores it."""
    if attr.startswith(_AXES) and _einops_lengths(m) is not None:
        lengths = dict(m.axes_lengths)
        lengths[attr[len(_AXES):]] = value
        m.axes_lengths, m._axes_lengths = lengths, tuple(lengths.items())
        return
    item = _element(attr)
    if item:
        old = getattr(m, item[0])
        setattr(m, item[0], type(old)(value if i == item[1] else x for i, x in enumerate(old)))
        return
    setattr(m, attr, value)
