"""``--input-shape NAME:DIMS`` for PyTorch sources: example inputs made, or resized, to the user's shapes.

A source with example inputs of its own (a zoo model, a factory returning them, a transformers folder)
gets them resized by name, keeping each input's dtype and kind of values (token ids stay ids in the
example's range, a mask of ones stays ones), so MACs and latency are counted at the shape asked for.
A source without examples gets random floats. A name that matches no input is refused, naming the
inputs there are: a shape the user gave must never be dropped silently.
"""
from __future__ import annotations

import inspect

from ..errors import GraphpruneError

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def inputs_from_shapes(model, shapes: dict[str, tuple[int, ...]], spec: str,
                       args: tuple = (), kwargs: dict | None = None) -> tuple[tuple, dict]:
    """(args, kwargs) for ``model`` at ``shapes``; ``args``/``kwargs``: the source's own example, if any."""
    import torch

    kwargs = dict(kwargs or {})
    params = inspect.signature(model.forward).parameters
    positional = [n for n, p in params.items() if p.kind in _POSITIONAL]
    gen = torch.Generator().manual_seed(0)
    if not args and not kwargs:
        return _fresh(shapes, spec, params, positional, gen)
    names = positional + [f"arg{i}" for i in range(len(positional), len(args))]  # *args beyond the named ones
    example = dict(zip(names, args)) | kwargs
    if len(example) == 1 and len(shapes) == 1:  # one input: its name is a label, as for an ONNX model's
        shapes = {next(iter(example)): next(iter(shapes.values()))}
    unknown = [n for n in shapes if n not in example]
    if unknown:
        raise GraphpruneError(f"--input-shape names {', '.join(unknown)}, but MODEL '{spec}' takes "
                              f"{', '.join(example)}: name one of those")
    made = {n: _like(example[n], shape, n, gen) for n, shape in shapes.items()}
    for n, v in example.items():  # an attention mask or type ids shaped as the resized ids follow them
        twin = next((m for m in shapes if m != n and hasattr(v, "shape") and v.shape == example[m].shape), None)
        if n not in made and twin is not None:
            made[n] = _like(v, shapes[twin], n, gen)
    return (tuple(made.get(n, a) for n, a in zip(names, args)), {k: made.get(k, v) for k, v in kwargs.items()})


def _fresh(shapes, spec, params, positional, gen) -> tuple[tuple, dict]:
    """Random floats: by name where every name is a forward parameter, else positional in the given order."""
    import torch

    made = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    if set(made) <= set(params):
        return (), made
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params.values())
    if set(made) & set(params) or (len(made) > len(positional) and not varargs):
        raise GraphpruneError(f"--input-shape names {', '.join(n for n in made if n not in params)}, but "
                              f"MODEL '{spec}' forward takes ({', '.join(positional)}): name those, or give one "
                              "shape per positional input in order")
    return tuple(made.values()), {}


def _like(example, shape: tuple[int, ...], name: str, gen):
    """A tensor of ``shape`` with ``example``'s dtype and kind of values."""
    import torch

    if not isinstance(example, torch.Tensor):
        raise GraphpruneError(f"--input-shape {name}: that input is a {type(example).__name__}, not a tensor")
    if len(shape) != example.dim():
        raise GraphpruneError(f"--input-shape {name}:{'x'.join(map(str, shape))} has {len(shape)} dims; the input "
                              f"has {example.dim()} ({'x'.join(map(str, example.shape))})")
    if example.is_floating_point():
        return torch.randn(shape, generator=gen).to(example.dtype)
    flat = example.flatten()
    if flat.numel() == 0 or bool((flat == flat[0]).all()):  # a mask of ones, a constant id
        return torch.full(shape, flat[0].item() if flat.numel() else 0, dtype=example.dtype)
    low, high = int(flat.min()), int(flat.max()) + 1
    return torch.randint(low, high, shape, generator=gen).to(example.dtype)
