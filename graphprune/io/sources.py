"""What a MODEL argument names, and how to load it: the CLI's one door to every model a user has.

- an ``.onnx`` file;
- a folder holding ``graphprune.json`` (a model graphprune saved: transformers or factory-built);
- a Hugging Face folder (``config.json`` + weights), loaded offline with the class its config names;
- ``package.module:factory``: a callable returning a module or ``(module, example_args)``;
- a name from the reference zoo (``graphprune zoo``);
- a ``.pt`` / ``.pth`` file holding a whole module (what ``prune -o out.pt`` writes), unpickled, so
  only a file the user trusts; it has no example inputs: ``--input-shape`` gives them.

Example inputs come with the source where it has them (zoo, factory, transformers, saved
models) and from ``--input-shape NAME:1x3x224x224`` otherwise; every failure is a
GraphpruneError naming the argument and what was expected.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graphprune.zoo import ZOO, build

from ..errors import GraphpruneError
from .checkpoint_doc import PLAN_FILE, TOKENIZER_FILES, CheckpointDoc
from .example_shapes import inputs_from_shapes
from .factory import call_factory
from .module_checkpoint import load_pruned_module

KINDS = ("onnx", "saved", "hf", "factory", "zoo", "pt")


@dataclass
class Source:
    """A loaded MODEL: an ONNX path, or a torch module with example inputs."""

    kind: str
    spec: str
    path: Path | None = None  # the .onnx file or the folder
    model: Any = None  # torch.nn.Module
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)  # how to rebuild the unpruned PyTorch module (zoo, factory, saved)
    saved: CheckpointDoc | None = None  # a folder graphprune saved: its graphprune.json

    @property
    def is_onnx(self) -> bool:
        return self.kind == "onnx"

    @property
    def is_hf(self) -> bool:
        return self.kind == "hf" or (self.saved is not None and self.saved.is_hf)


def classify(spec: str) -> str:
    """Which of KINDS ``spec`` names (without loading anything)."""
    p = Path(spec)
    if spec.lower().endswith(".onnx"):
        if p.is_dir():
            raise GraphpruneError(f"'{spec}' is a folder, not an ONNX file; give the .onnx file inside it")
        if not p.is_file():
            raise GraphpruneError(f"ONNX file '{spec}' does not exist")
        return "onnx"
    if p.is_dir():
        if (p / PLAN_FILE).is_file():
            return "saved"
        if (p / "config.json").is_file():
            return "hf"
        raise GraphpruneError(f"folder '{spec}' holds neither {PLAN_FILE} (a model graphprune saved) nor config.json "
                              "(a Hugging Face model)")
    if p.is_file() and p.suffix.lower() in (".pt", ".pth"):
        return "pt"
    if p.is_file():
        raise GraphpruneError(f"'{spec}' is a file but not an .onnx model or a .pt module; give an .onnx file, a .pt "
                              "module, a model folder, a zoo name or package.module:factory")
    if ":" in spec and not spec.startswith(("/", ".")):
        return "factory"
    if _zoo_names() and spec in _zoo_names():
        return "zoo"
    names = ", ".join(sorted(_zoo_names())) or "(the zoo is not importable)"
    raise GraphpruneError(f"MODEL '{spec}' is not an .onnx file, a folder (a Hugging Face model or one graphprune "
                          f"saved), package.module:factory, or a zoo name ({names})")


def _zoo_names() -> list[str]:
    return list(ZOO)


def load(spec: str, input_shapes: dict[str, tuple[int, ...]] | None = None, config: str = "small") -> Source:
    """Load MODEL ``spec``; ``input_shapes`` ({name: shape}) makes example inputs where the source
    has none (a factory returning only a module) and resizes the source's own otherwise."""
    kind = classify(spec)
    if kind == "onnx":
        return Source(kind, spec, Path(spec))
    if kind == "zoo":
        model, args = build(spec, config)
        src = Source(kind, spec, model=model, args=tuple(args), recipe={"zoo": spec, "config": config})
    elif kind == "factory":
        made, args, kwargs = call_factory(spec)
        if not args and not kwargs and not input_shapes:
            raise GraphpruneError(f"MODEL '{spec}' comes without example inputs: give --input-shape "
                                  "NAME:1x3x224x224 (one per input), or let the factory return (model, example_args)")
        src = Source("factory", spec, model=made, args=args, kwargs=kwargs, recipe={"factory": spec})
    elif kind == "pt":
        src = _module_file(Path(spec), input_shapes)
    elif kind == "hf":
        src = _hf_folder(Path(spec))
    else:
        src = _saved(Path(spec))
    if input_shapes:  # the user's shapes replace the source's own examples (MACs and latency are counted there)
        src.args, src.kwargs = inputs_from_shapes(src.model, input_shapes, spec, src.args, src.kwargs)
    return src


def _module_file(path: Path, input_shapes) -> Source:
    """A whole module torch.save wrote; its classes must be importable (run from the user's package)."""
    import torch

    if not input_shapes:
        raise GraphpruneError(f"'{path}' holds a module without example inputs: give --input-shape NAME:1x3x224x224 "
                              "(one per input)")
    try:
        model = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as exc:  # a pickle names classes from the user's code: report it in one line
        raise GraphpruneError(f"cannot load '{path}' with torch.load: {type(exc).__name__}: {exc} (a module's classes "
                              "must be importable from the current folder)") from exc
    if not isinstance(model, torch.nn.Module):
        raise GraphpruneError(f"'{path}' holds a {type(model).__name__}, not a whole module (a state_dict has no "
                              "architecture): give package.module:factory that builds the module and loads it")
    return Source("pt", str(path), path, model.eval())


def _hf_folder(path: Path) -> Source:
    try:
        import transformers
    except ImportError as exc:
        raise GraphpruneError("a Hugging Face folder needs transformers: pip install 'graphprune[hf]'") from exc
    from ..hf.inputs import example_inputs

    cfg = json.loads((path / "config.json").read_text())
    archs = cfg.get("architectures") or []
    cls = next((getattr(transformers, a) for a in archs if hasattr(transformers, a)), None)
    if cls is None:
        cls = transformers.AutoModel
    try:
        model = cls.from_pretrained(str(path), local_files_only=True)
    except Exception as exc:
        raise GraphpruneError(f"transformers cannot load '{path}' ({cls.__name__}): {str(exc).splitlines()[0]}") from exc
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # a cache is state, not a channel: tracing runs without it
    model.eval()
    return Source("hf", str(path), path, model, (), example_inputs(model), {"architecture": type(model).__name__})


def _saved(path: Path) -> Source:
    doc = CheckpointDoc.read(path)
    if doc.is_hf:  # graphprune.hf.save_pruned
        from ..hf.inputs import example_inputs
        from ..hf.saved import load_pruned

        model = load_pruned(path)
        return Source("saved", str(path), path, model, (), example_inputs(model), saved=doc)

    model, args, kwargs = load_pruned_module(path)
    return Source("saved", str(path), path, model, args, kwargs, doc.recipe or {}, doc)




def copy_side_files(src: Path, dst: Path) -> list[str]:
    """Tokenizer / processor files of a Hugging Face folder, so the pruned folder is used as the
    original was (AutoTokenizer.from_pretrained(dst))."""
    import shutil

    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file() and not (dst / name).exists():
            shutil.copyfile(src / name, dst / name)
            copied.append(name)
    return copied
