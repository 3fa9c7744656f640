"""``graphprune.json``: what a folder of a pruned model records, read and written in one place.

Beside the weights, graphprune keeps how to build the unpruned model (a recipe, a zoo name or
``package.module:factory``, for a PyTorch module; the original config and class name for a
transformers model), the example inputs' specs, every prune applied in order (its plan and the
layers compensation gave a bias), and the saved tensors' shapes. The loaders
(io/module_checkpoint.py, hf/saved.py) build the unpruned model and replay the history.

On disk a PyTorch module's document holds ``recipe``, ``args`` and ``kwargs``; a transformers
model's holds ``architecture``, ``original_config`` and ``inputs`` (keyword inputs), and repeats
the last step as ``plan`` / ``added_biases`` (what it held before histories were kept: such files
load as one step).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import GraphpruneError
from ..planning.plan import PrunePlan
from ..util.atomic import write_bytes_atomic

PLAN_FILE = "graphprune.json"
# a Hugging Face folder's tokenizer / processor files, copied beside a pruned model so it is used as the original was
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt", "vocab.json",
                   "merges.txt", "tokenizer.model", "spiece.model", "added_tokens.json", "preprocessor_config.json",
                   "processor_config.json", "generation_config.json", "chat_template.jinja", "sentencepiece.bpe.model")
FORMAT = 1


def tensor_spec(t) -> dict:
    """A recorded example input: shape and dtype, small integer tensors verbatim; a plain value (Mistral3's
    ``image_sizes``, a list of ints: without it the reload traced another forward) as it is."""
    if not isinstance(t, torch.Tensor):
        return {"value": t}
    item = {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
    if not t.is_floating_point() and t.numel() <= 4096:
        item["values"] = t.flatten().tolist()  # token ids, masks: the same code paths on reload
    return item


def rebuild_tensor(spec: dict):
    """The example input a spec records (floats: seeded random values; a plain value as saved, JSON's lists)."""
    if "value" in spec:
        return spec["value"]
    dtype = getattr(torch, spec["dtype"])
    if "values" in spec:
        return torch.tensor(spec["values"], dtype=dtype).reshape(spec["shape"])
    return torch.randn(spec["shape"], generator=torch.Generator().manual_seed(0)).to(dtype)


def config_dict(config) -> dict:
    """A transformers config as ``original_config`` keeps it: ``to_dict()`` plus the attention implementation
    the model was built with, which ``to_dict()`` leaves out. Eager and SDPA attention trace into different
    graphs, so a model rebuilt with the other one would not take the saved plan's group ids."""
    out = config.to_dict()
    impl = getattr(config, "_attn_implementation", None)
    # a composite config (Llava) may hold sub-configs built with their own: then the per-config form
    subs = {name: getattr(sub, "_attn_implementation", None) for name, sub in vars(config).items()
            if hasattr(sub, "to_dict") and hasattr(sub, "model_type")}
    subs = {name: s for name, s in subs.items() if isinstance(s, str)}
    if "attn_implementation" in out or not isinstance(impl, str):
        return out
    out["attn_implementation"] = {"": impl, **subs} if any(s != impl for s in subs.values()) else impl
    return out


def module_attention(model) -> dict[str, str]:
    """{module path: attention implementation} where a module's own config says otherwise than its nearest
    ancestor's: ``set_attn_implementation`` does not reach configs a model copied for its layers (CLIPSeg's
    decoder layers stay on SDPA under an eager model), and a rebuild from the config alone would trace the other
    graph, which the saved plan's group ids do not fit."""
    def impl(m):
        return getattr(getattr(m, "config", None), "_attn_implementation", None)

    seen: dict[str, str | None] = {"": impl(model)}
    out = {}
    for path, m in model.named_modules():
        if not path:
            continue
        parent = path.rpartition(".")[0]
        here = impl(m) if isinstance(impl(m), str) else seen.get(parent)
        seen[path] = here
        if isinstance(here, str) and here != seen.get(parent):
            out[path] = here
    return out


@dataclass
class PlanStep:
    """One prune of the history: its plan, and the layers compensation gave a bias (the replay
    makes room for them)."""

    plan: PrunePlan
    added_biases: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"plan": self.plan.to_json(), "added_biases": sorted(self.added_biases)}

    @classmethod
    def from_json(cls, raw: dict) -> "PlanStep":
        return cls(PrunePlan.from_json(raw["plan"]), list(raw.get("added_biases") or []))


@dataclass
class CheckpointDoc:
    """The contents of ``graphprune.json``; exactly one of ``recipe`` and ``architecture`` is set."""

    history: list[PlanStep] = field(default_factory=list)
    recipe: dict | None = None  # a PyTorch module: {"zoo": name, "config": ...} or {"factory": "pkg.mod:fn"}
    architecture: str | None = None  # a transformers model: its class name...
    original_config: dict | None = None  # ...and the unpruned model's config.to_dict()
    args: list[dict] = field(default_factory=list)  # example inputs, as tensor_spec records them
    kwargs: dict[str, dict] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)  # the saved state dict's, checked on reload
    format: int | None = FORMAT
    # a model pruned layer by layer (hf/stream.py): each repeated block's own plans, by module path, and
    # the keyword inputs a block is traced with on reload (a list of specs stands for a tuple)
    layers: dict[str, list[PlanStep]] = field(default_factory=dict)
    layer_inputs: dict[str, dict | list] = field(default_factory=dict)
    attention: dict[str, str] = field(default_factory=dict)  # module_attention of the pruned transformers model

    @property
    def is_hf(self) -> bool:
        return self.architecture is not None

    def layer_example(self) -> dict:
        """The keyword inputs a streamed model's block is traced with (tuples rebuilt from lists)."""
        return {k: tuple(rebuild_tensor(x) for x in s) if isinstance(s, list) else rebuild_tensor(s)
                for k, s in self.layer_inputs.items()}

    def example_inputs(self) -> tuple[tuple, dict]:
        """The recorded example inputs as tensors: (args, kwargs)."""
        return tuple(rebuild_tensor(s) for s in self.args), {k: rebuild_tensor(s) for k, s in self.kwargs.items()}

    def to_json(self) -> dict:
        out: dict = {"format": self.format, "history": [s.to_json() for s in self.history], "shapes": self.shapes}
        if self.layers:
            out.update(layers={k: [s.to_json() for s in v] for k, v in self.layers.items()},
                       layer_inputs=self.layer_inputs)
        if self.is_hf:
            out.update(architecture=self.architecture, original_config=self.original_config, inputs=self.kwargs)
            if self.attention:
                out.update(attention=self.attention)
            if self.history:  # the last step where readers without histories look for it
                out.update(out["history"][-1])
        else:
            out.update(recipe=self.recipe, args=self.args, kwargs=self.kwargs)
        return out

    @classmethod
    def from_json(cls, raw: dict) -> "CheckpointDoc":
        steps = raw.get("history") or ([{"plan": raw["plan"], "added_biases": raw.get("added_biases")}]
                                       if "plan" in raw else [])
        hf = "architecture" in raw
        return cls([PlanStep.from_json(s) for s in steps], recipe=raw.get("recipe"),
                   architecture=raw.get("architecture"), original_config=raw.get("original_config"),
                   args=list(raw.get("args") or []), kwargs=dict(raw.get("inputs" if hf else "kwargs") or {}),
                   shapes=dict(raw.get("shapes") or {}), format=raw.get("format"),
                   layers={k: [PlanStep.from_json(s) for s in v] for k, v in (raw.get("layers") or {}).items()},
                   layer_inputs=dict(raw.get("layer_inputs") or {}), attention=dict(raw.get("attention") or {}))

    @classmethod
    def read(cls, folder: str | os.PathLike) -> "CheckpointDoc":
        path = Path(folder) / PLAN_FILE
        if not path.is_file():
            raise GraphpruneError(f"{folder} is not a folder graphprune saved: " + (
                f"it has no {PLAN_FILE}" if Path(folder).is_dir() else "it does not exist"))
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise GraphpruneError(f"{path} is not a graphprune checkpoint: {exc}") from exc
        if not isinstance(raw, dict):
            raise GraphpruneError(f"{path} is not a graphprune checkpoint: it holds a JSON {type(raw).__name__}")
        return cls.from_json(raw)

    def write(self, folder: str | os.PathLike) -> Path:
        """Write ``graphprune.json`` into ``folder`` (whole or not at all)."""
        text = json.dumps(self.to_json(), sort_keys=True, indent=1)
        return write_bytes_atomic(Path(folder) / PLAN_FILE, text.encode())
