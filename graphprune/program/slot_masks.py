"""Masks of the masked interpreter, fitted to the run's sizes.

A mask is built over a slot's positions at the example's shapes. Where the slot merges an input's
dim with a pruned one (heads folded into the batch, ``'b n (h d) -> (b h) n d'``), a calibration
batch of another size has more positions there: the mask is the same along the inputs' factors,
so it is rebuilt at the run's own input sizes (read from its trace), not refused.

An input dim of size one in the example is no factor of any slot (SAM's windows and heads merged with a
batch of one): no mask over that slot can be fitted to a larger batch. With an example of one item and a model
in eval mode (items independent), such batches are cut item by item (:func:`fitted`): the statistics are sums
over items, so they are the same.
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
    free: tuple[tuple[int, str, int], ...]  # (factor, input, dim): factors an input's dim sizes, which a batch may change
    where: str = ""

    def at(self, n: int, inputs: dict[str, tuple[int, ...]] | None = None) -> torch.Tensor:
        """The mask over ``n`` positions, in a run whose inputs have the shapes ``inputs`` (name -> shape)."""
        shape = list(self.sizes)
        for i, name, d in self.free:
            if inputs is not None and name in inputs and d < len(inputs[name]):
                shape[i] = int(inputs[name][d])
        if shape == list(self.sizes) and n == self.keep.numel():
            return self.keep
        view = self.keep.view(self.sizes)
        core = view
        for i, _, _ in self.free:
            core = core.narrow(i, 0, 1)
        if int(np.prod(shape)) != n or not bool((view == core).all()):
            raise PlanError(f"a channel mask over {self.where} ({self.keep.numel()} positions at the example's shapes) "
                            f"cannot be fitted to a batch that has {n} there: its positions are not the inputs' dims "
                            "times the channels. Pass calibration batches of the example's shapes.")
        return core.expand(shape).reshape(-1)


def slot_mask(dg, value: str, dim: int, keep: np.ndarray, free_atoms: dict[int, tuple[str, int]]) -> SlotMask:
    term, _ = dg.solver.slot_atoms((value, dim))
    parts = term[1] if term[0] == "p" else (term,)
    sizes = tuple(dg.solver.size(t) for t in parts)
    if any(s is None for s in sizes) or int(np.prod(sizes)) != keep.size:
        sizes, parts = (int(keep.size),), (term,)
    free = tuple((i, *free_atoms[t[1]]) for i, t in enumerate(parts) if t[0] == "a" and t[1] in free_atoms)
    return SlotMask(torch.as_tensor(keep), sizes, free, f"node {value!r}, dim {dim}")


def input_atoms(dg) -> dict[int, tuple[str, int]]:
    """Atoms that are whole dims of the graph's inputs, each with its (input, dim): the sizes another batch may
    change, read from the run's own inputs."""
    out: dict[int, tuple[str, int]] = {}
    for v in dg.ir.values.values():
        if v.kind != "input":
            continue
        for d in range(v.rank):
            term, _ = dg.solver.slot_atoms((v.name, d))
            if term[0] == "a":
                out.setdefault(term[1], (v.name, d))
    return out


def input_shapes(gm: torch.fx.GraphModule) -> dict[str, tuple[int, ...]]:
    """A traced program's input shapes, by placeholder (the IR's input names)."""
    return {n.name: tuple(n.meta["val"].shape) for n in gm.graph.nodes
            if n.op == "placeholder" and isinstance(n.meta.get("val"), torch.Tensor)}


def _fits(dg, trace, free: dict[int, tuple[str, int]]) -> bool:
    """Whether a mask over every slot of ``dg`` a prunable group lives on can be fitted to ``trace`` (a trace at
    another batch's shapes); slots of no group are never masked (a batch of one in a plain MLP)."""
    values, inputs = dg.ir.values, input_shapes(trace.gm)
    prunable = {g.id for g in dg.prunable_groups()}
    for n in trace.nodes():
        val = n.meta.get("val")
        v = values.get(n.name)
        if not isinstance(val, torch.Tensor) or v is None or v.kind != "act" or len(v.shape) != val.dim():
            continue
        for d, (was, now) in enumerate(zip(v.shape, val.shape)):
            if isinstance(was, int) and was != int(now) and prunable.intersection(
                    dg.solver.atoms(dg.solver.layout((n.name, d)))):
                try:
                    slot_mask(dg, n.name, d, np.ones(was, dtype=bool), free).at(int(now), inputs)
                except PlanError:
                    return False
    return True


def fitted(program, batches: list) -> tuple[list, int]:
    """``batches`` with each that no mask fits (see the module docstring) cut into batches of one item, where the
    example has one and the model is in eval mode (items independent: batch norm reads its running statistics);
    and how many were cut."""
    main, dg = program.trace(), program.graph()
    example = main.input_shapes()
    one = bool(example and example[0] and example[0][0] == 1) and not any(m.training for m in program.model.modules())
    size = 1 if one else None
    out, cut, free, fits = [], 0, input_atoms(dg), {}  # fits: per trace (one per input shape), not per batch
    for k, b in enumerate(batches):
        trace, first = program.trace_for(b, k), program.first_input(b)
        n = first[0][0] if first is not None and first[0] else None
        if trace is main or not size or not n or n == size or n % size or (
                fits[id(trace)] if id(trace) in fits else fits.setdefault(id(trace), _fits(dg, trace, free))):
            out.append(b)
            continue
        pieces = [program.take(b, np.arange(n) // size == j) for j in range(n // size)]
        out += pieces if all(p is not None for p in pieces) else [b]
        cut += all(p is not None for p in pieces)
    return out, cut
