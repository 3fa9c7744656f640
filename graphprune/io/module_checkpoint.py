"""Pruned PyTorch models that reload from weights + plan, not from pickled code.

``save_pruned_module`` writes ``model.safetensors`` and ``graphprune.json`` (io/checkpoint_doc.py):
how to build the unpruned module (a zoo name or a ``package.module:factory``), the example
inputs' specs, and every plan applied. ``load_pruned_module`` builds the module again, replays
the plans (:func:`replay`: TorchProgram.apply, block removals included) and loads the weights,
checking every shape. The transformers counterpart is graphprune/hf/saved.py, which replays
through :func:`replay` too.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import torch

from graphprune.zoo import build

from ..errors import GraphpruneError, PlanError
from ..planning.plan import PrunePlan
from ..program.torch_program import TorchProgram
from .checkpoint_doc import FORMAT, PLAN_FILE, CheckpointDoc, PlanStep, tensor_spec
from .factory import call_factory


def save_pruned_module(model: torch.nn.Module, directory: str | os.PathLike, recipe: dict,
                       plans: Sequence[PrunePlan | PlanStep], args: tuple, kwargs: dict | None = None,
                       added_biases: list[str] | None = None) -> Path:
    """Write ``model`` (pruned by ``plans`` from what ``recipe`` builds) to ``directory``.

    ``plans``: every prune in order; a PlanStep (a saved folder's history) keeps its own added
    biases, ``added_biases`` are the last plain plan's."""
    from safetensors.torch import save_model  # an optional dependency (graphprune[hf])

    if not all(isinstance(a, torch.Tensor) for a in list(args) + list((kwargs or {}).values())):
        raise GraphpruneError("only tensor example inputs can be recorded with a saved model")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / "model.safetensors"))  # shared (tied) tensors are stored once
    history = [p if isinstance(p, PlanStep) else PlanStep(p, list(added_biases or []) if k == len(plans) - 1 else [])
               for k, p in enumerate(plans)]
    CheckpointDoc(history, recipe=recipe, args=[tensor_spec(a) for a in args],
                  kwargs={k: tensor_spec(v) for k, v in (kwargs or {}).items()},
                  shapes={n: list(t.shape) for n, t in model.state_dict().items()}).write(directory)
    return directory


def build_recipe(recipe: dict) -> torch.nn.Module:
    """The unpruned module a recipe names."""
    if "zoo" in recipe:
        return build(recipe["zoo"], recipe.get("config", "small"))[0]
    if "factory" in recipe:
        return call_factory(recipe["factory"])[0]
    raise GraphpruneError(f"cannot rebuild a model from recipe {recipe}: it names neither a zoo model nor a factory")


def replay(model: torch.nn.Module, history: Sequence[PlanStep], args: tuple, kwargs: dict,
           misfit: Callable[[int, int], str], after: Callable | None = None) -> torch.nn.Module:
    """Apply every saved step to ``model`` in place, as the prune did: TorchProgram.apply (the
    rewrite and block removals), then ``after(model, graph, plan)`` (a transformers config's
    sync), then zero biases where compensation added some (the weights fill them). A plan that
    no longer fits raises PlanError with ``misfit(group id, size)``."""
    for step in history:
        program = TorchProgram(model, args, kwargs)
        graph = program.graph()
        graph.check_plan(step.plan, misfit)
        model = program.apply(step.plan, inplace=True).model
        if after is not None:
            after(model, graph, step.plan)
        for path in step.added_biases:
            mod = model.get_submodule(path)
            mod.bias = torch.nn.Parameter(torch.zeros(mod.weight.shape[0], dtype=mod.weight.dtype))
    return model


def replay_on_meta(block: torch.nn.Module, history: Sequence[PlanStep], example: dict,
                   misfit: Callable[[int, int], str]) -> None:
    """:func:`replay` on a block on the meta device (a streamed checkpoint's, never materialised whole), with
    ``example`` (keyword inputs) moved there too. A forward that branches on the device (MoE routing counts
    tokens one way on the CPU, another elsewhere) was traced on real weights when it was pruned, so its plan
    fits only such a trace: then the block is replayed on zeros on the CPU (values do not shape the graph;
    one block at its original size), and handed back on meta."""
    meta = {k: tuple(t.to("meta") for t in v) if isinstance(v, tuple) else v.to("meta") for k, v in example.items()}
    try:
        replay(block, history, (), meta, misfit)
    except PlanError:
        block.to_empty(device="cpu")
        with torch.no_grad():
            for t in [*block.parameters(), *block.buffers()]:  # non-persistent buffers too
                t.zero_()
        replay(block, history, (), example, misfit)
        block.to("meta")


def load_pruned_module(directory: str | os.PathLike):
    """(module, args, kwargs) rebuilt from :func:`save_pruned_module`'s folder."""
    from safetensors.torch import load_model

    directory = Path(directory)
    doc = CheckpointDoc.read(directory)
    if doc.format != FORMAT or doc.recipe is None:
        raise GraphpruneError(f"{directory / PLAN_FILE} is not a graphprune module checkpoint (format {FORMAT})")
    model = build_recipe(doc.recipe).eval()
    args, kwargs = doc.example_inputs()
    model = replay(model, doc.history, args, kwargs,
                   lambda gid, size: f"the saved plan does not fit the model {doc.recipe} builds now (group {gid} "
                                     f"of size {size} is missing): the code changed since it was saved")
    want = {n: tuple(s) for n, s in doc.shapes.items()}
    have = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    wrong = sorted(n for n in set(want) | set(have) if want.get(n) != have.get(n))
    if wrong:
        raise GraphpruneError(f"the rebuilt model does not match the saved one: {wrong[0]} is {have.get(wrong[0])}, "
                              f"saved {want.get(wrong[0])} ({len(wrong)} tensor(s) differ)")
    load_model(model, str(directory / "model.safetensors"))
    return model.eval(), args, kwargs
