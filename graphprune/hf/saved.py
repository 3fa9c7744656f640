"""Pruned checkpoints that reload, even when layers were pruned unevenly.

``save_pruned`` writes the usual ``save_pretrained`` folder plus ``graphprune.json``
(io/checkpoint_doc.py): the original config, the plans, and the example inputs' shapes.
``load_pruned`` rebuilds the original architecture from that config, re-traces it, applies
the same plans (io/module_checkpoint.py's replay: the same rewrite, so the same module
attributes), and loads the safetensors.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
from pathlib import Path

import torch

from ..errors import GraphpruneError
from ..frontends.torch_export import tied_aliases
from ..io.checkpoint_doc import FORMAT, PLAN_FILE, CheckpointDoc
from ..io.module_checkpoint import replay
from ..util.atomic import check_writable
from .converted import assemble, stored_pieces
from .inputs import prepare
from .pretrained import META_ATTR
from .stream import load_streamed
from .sync import sync_checked


def save_pruned(model: torch.nn.Module, directory: str | os.PathLike, **save_kwargs) -> Path:
    """``model.save_pretrained(directory)`` plus the plan that :func:`load_pruned` needs.

    The model must come from :func:`graphprune.hf.prune`.
    """
    meta = getattr(model, META_ATTR, None)
    if meta is None:
        raise GraphpruneError(f"{type(model).__name__} was not pruned by graphprune.hf.prune: there is no plan to "
                              "save; prune it with graphprune.hf.prune(model, ...) first")
    directory = Path(directory)
    check_writable(directory / PLAN_FILE, "save_pruned to")  # a read-only place: said before transformers writes
    model.save_pretrained(directory, **save_kwargs)
    shapes = {n: list(t.shape) for n, t in model.state_dict().items()}
    dataclasses.replace(meta, format=FORMAT, shapes=shapes).write(directory)
    return directory


def load_pruned(directory: str | os.PathLike, model_class=None, device: str | torch.device = "cpu"):
    """Rebuild a model saved by :func:`save_pruned` and load its weights.

    Works whether or not the config alone describes the pruned sizes (uneven heads
    per layer, BERT heads without a matching hidden size).

    Example:
        >>> model = graphprune.hf.load_pruned("out/pruned-bert")   # doctest: +SKIP
    """
    import transformers
    from safetensors.torch import load_file


    directory = Path(directory)
    path = directory / PLAN_FILE
    if directory.is_dir() and not path.exists():  # a missing folder: CheckpointDoc.read says so
        raise GraphpruneError(f"{directory} has no {PLAN_FILE}: save the model with graphprune.hf.save_pruned, "
                              "or load an evenly pruned model with from_pretrained")
    doc = CheckpointDoc.read(directory)
    if doc.format != FORMAT:
        raise GraphpruneError(f"{path} has format {doc.format}; this graphprune reads format {FORMAT}")
    if doc.layers:  # pruned block by block (graphprune.hf.prune(folder, out=...)): rebuilt block by block
        return load_streamed(directory, doc)
    cls = model_class or getattr(transformers, doc.architecture or "", None)
    if cls is None:
        raise GraphpruneError(f"transformers has no class {doc.architecture}; pass model_class=")
    config = cls.config_class.from_dict(doc.original_config)
    model = prepare(cls(config))
    for path, impl in doc.attention.items():  # layers whose own config the model's attention setting missed:
        layer = model.get_submodule(path)  # their own copy (a fresh build may share the root's), as it was
        layer.config = copy.deepcopy(layer.config)
        layer.config._attn_implementation = impl
    _, inputs = doc.example_inputs()
    # an iterative schedule saved every step's plan: each applies to the model the previous one left
    model = replay(model, doc.history, (), inputs,
                   lambda gid, size: f"the saved plan does not fit {cls.__name__} as this transformers version builds "
                                     f"it (group {gid} of size {size} is missing); load it with the versions that "
                                     "saved it", after=lambda m, g, plan: sync_checked(m, g, plan, inputs))
    renamed, raw = _saved_names(model), _read_weights(directory, load_file)
    state = {renamed.get(k, k): v for k, v in raw.items()}
    want = {n: tuple(s) for n, s in doc.shapes.items()}
    have = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    if set(state) - set(have):  # names no rename explains: a conversion that splits or stacks (hf/converted.py)
        for name in [n for n in have if n not in state]:
            pieces = stored_pieces(model, name, have[name])
            value = assemble(pieces, have[name], raw.get) if pieces else None
            if value is not None:
                state = {k: v for k, v in state.items() if k not in pieces} | {name: value}
    wrong = [n for n in want if have.get(n) != want[n]]
    if wrong:
        raise GraphpruneError(f"the rebuilt model does not match the saved one: {wrong[0]} is {have.get(wrong[0])}, "
                              f"saved {want[wrong[0]]} ({len(wrong)} tensor(s) differ)")
    missing, unexpected = model.load_state_dict(state, strict=False)
    aliases = {n for names in tied_aliases(model).values() for n in names[1:]}  # save_pretrained keeps one
    missing = [m for m in missing if not _tied(model, m) and m not in aliases]
    if missing or unexpected:
        raise GraphpruneError(f"weights in {directory} do not fit: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    _runs(model, inputs, directory)
    # pruned again later (the CLI on a saved folder): the history goes on from here
    setattr(model, META_ATTR, doc)
    return model.to(device).eval()


def _runs(model: torch.nn.Module, inputs: dict, directory) -> None:
    """The rebuilt model on the saved example inputs: a rebuild whose module attributes differ from the pruned
    model's fails here, named, not in the user's first forward."""
    try:
        with torch.no_grad():
            model(**inputs)
    except Exception as exc:  # noqa: BLE001 - whatever the forward raises, said as a load failure
        why = (str(exc).strip().splitlines() or [""])[0][:300]
        raise GraphpruneError(f"the model rebuilt from {directory} does not run on the example inputs it was saved "
                              f"with ({type(exc).__name__}: {why}): the rebuild differs from the model saved (a size "
                              "attribute set otherwise); keep the pruned model object, or prune the original again"
                              ) from exc


def _tied(model: torch.nn.Module, name: str) -> bool:
    """Whether ``name`` is a weight the model ties to another (save_pretrained writes that one alone): its
    ``_tied_weights_keys`` are names, module prefixes (DAB-DETR's ``{"model.decoder.bbox_embed": "bbox_predictor"}``)
    or patterns."""
    for key in getattr(model, "_tied_weights_keys", None) or []:
        if name == key or name.startswith(key + "."):
            return True
        try:
            if re.fullmatch(key, name):
                return True
        except re.error:
            continue
    return False


def _saved_names(model: torch.nn.Module) -> dict[str, str]:
    """The checkpoint name -> the model's own name of every weight ``save_pretrained`` renames on the way
    out (transformers 5 writes ViT's ``q_proj`` as ``attention.attention.query``, GPT-NeoX's ``lm_head``
    as ``embed_out``), found by passing the model's own tensors through its reverse conversion: a plain
    rename keeps the tensor. Older transformers rename nothing."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:
        return {}
    own = model.state_dict()
    name_of = {id(t): n for n, t in own.items()}
    return {saved: name_of[id(t)] for saved, t in revert_weight_conversion(model, dict(own)).items()
            if id(t) in name_of and saved != name_of[id(t)]}


def _read_weights(directory: Path, load_file) -> dict:
    single = directory / "model.safetensors"
    if single.exists():
        return load_file(str(single))
    index = directory / "model.safetensors.index.json"
    if not index.exists():
        raise GraphpruneError(f"{directory} holds no model.safetensors (or sharded index)")
    state: dict = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        state.update(load_file(str(directory / shard)))
    return state
