"""Pruned PyTorch models that reload from weights + plan, not from pickled code.

``save_pruned_module`` writes ``model.safetensors`` and ``graphprune.json``: how to build the
unpruned module (a zoo name or a ``package.module:factory``), the example inputs' specs, and
every plan applied. ``load_pruned_module`` builds the module again, replays the plans (the
same rewrite, block removals included) and loads the weights, checking every shape. The
transformers counterpart is graphprune/hf/checkpoint.py.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from graphprune.zoo import build

from ..errors import GraphpruneError
from ..planning.plan import PrunePlan
from ..program.torch_program import TorchProgram
from ..util.atomic import write_bytes_atomic
from .factory import call_factory

PLAN_FILE = "graphprune.json"
FORMAT = 1


def tensor_spec(t: torch.Tensor) -> dict:
    """A recorded example input: shape and dtype, small integer tensors verbatim."""
    item = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    if not t.is_floating_point() and t.numel() <= 4096:
        item["values"] = t.flatten().tolist()  # token ids, masks: the same code paths on reload
    return item


def rebuild_tensor(spec: dict) -> torch.Tensor:
    """The example input a spec records (floats: seeded random values)."""
    dtype = getattr(torch, spec["dtype"])
    if "values" in spec:
        return torch.tensor(spec["values"], dtype=dtype).reshape(spec["shape"])
    return torch.randn(spec["shape"], generator=torch.Generator().manual_seed(0)).to(dtype)


def save_pruned_module(model: torch.nn.Module, directory: str | os.PathLike, recipe: dict, plans: list[PrunePlan],
                       args: tuple, kwargs: dict | None = None, added_biases: list[str] | None = None) -> Path:
    """Write ``model`` (pruned by ``plans`` from what ``recipe`` builds) to ``directory``."""
    from safetensors.torch import save_model

    if not all(isinstance(a, torch.Tensor) for a in list(args) + list((kwargs or {}).values())):
        raise GraphpruneError("only tensor example inputs can be recorded with a saved model")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_model(model, str(directory / "model.safetensors"))  # shared (tied) tensors are stored once
    doc = {"format": FORMAT, "recipe": recipe, "args": [tensor_spec(a) for a in args],
           "kwargs": {k: tensor_spec(v) for k, v in (kwargs or {}).items()},
           "history": [{"plan": p.to_json(), "added_biases": sorted(added_biases or []) if k == len(plans) - 1
                        else []} for k, p in enumerate(plans)],
           "shapes": {n: list(t.shape) for n, t in model.state_dict().items()}}
    write_bytes_atomic(directory / PLAN_FILE, json.dumps(doc, sort_keys=True, indent=1).encode())
    return directory


def build_recipe(recipe: dict) -> torch.nn.Module:
    """The unpruned module a recipe names."""
    if "zoo" in recipe:

        return build(recipe["zoo"], recipe.get("config", "small"))[0]
    if "factory" in recipe:

        return call_factory(recipe["factory"])[0]
    raise GraphpruneError(f"cannot rebuild a model from recipe {recipe}: it names neither a zoo model nor a factory")


def load_pruned_module(directory: str | os.PathLike):
    """(module, args, kwargs) rebuilt from :func:`save_pruned_module`'s folder."""
    from safetensors.torch import load_model


    directory = Path(directory)
    doc = json.loads((directory / PLAN_FILE).read_text())
    if doc.get("format") != FORMAT or "recipe" not in doc:
        raise GraphpruneError(f"{directory / PLAN_FILE} is not a graphprune module checkpoint (format {FORMAT})")
    model = build_recipe(doc["recipe"]).eval()
    args = tuple(rebuild_tensor(s) for s in doc["args"])
    kwargs = {k: rebuild_tensor(s) for k, s in doc["kwargs"].items()}
    for step in doc["history"]:
        plan = PrunePlan.from_json(step["plan"])
        program = TorchProgram(model, args, kwargs)
        dg = program.graph()
        for gid, size in plan.sizes.items():
            if gid not in dg._by_atom or dg.group(gid).size != size:
                raise GraphpruneError(f"the saved plan does not fit the model {doc['recipe']} builds now (group {gid} "
                                      f"of size {size} is missing): the code changed since it was saved")
        model = program.apply(plan, inplace=True).model
        for path in step.get("added_biases", []):  # compensation gave these layers a bias
            mod = model.get_submodule(path)
            out = mod.weight.shape[0]
            mod.bias = torch.nn.Parameter(torch.zeros(out, dtype=mod.weight.dtype))
    want = {n: tuple(s) for n, s in doc["shapes"].items()}
    have = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    wrong = sorted(n for n in set(want) | set(have) if want.get(n) != have.get(n))
    if wrong:
        raise GraphpruneError(f"the rebuilt model does not match the saved one: {wrong[0]} is {have.get(wrong[0])}, "
                              f"saved {want.get(wrong[0])} ({len(wrong)} tensor(s) differ)")
    load_model(model, str(directory / "model.safetensors"))
    return model.eval(), args, kwargs
