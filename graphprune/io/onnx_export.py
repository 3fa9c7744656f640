"""Export a (pruned) model to ONNX, validated: onnx.checker, then onnxruntime
against PyTorch on the example inputs. The file appears atomically, only once
every check has passed."""
from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..errors import GraphpruneError, warn
from ..oracle import max_abs_diff, scaled_diff
from ..util.torch_compat import tree_leaves, tree_map
from .keyword_view import keyword_view
from .onnx_save import EXTERNAL_BYTES, onnx_destination


@dataclass
class ExportReport:
    path: str
    max_abs_diff: float
    atol: float
    dynamic_batch: bool = True
    note: str = ""  # why the batch axis is static when it was asked to be dynamic; other fallbacks taken

    def __str__(self) -> str:
        s = f"exported {self.path}: onnxruntime vs PyTorch max |diff| = {self.max_abs_diff:.3g} (atol {self.atol:g})"
        return s + (f"; note: {self.note}" if self.note else "")


@contextlib.contextmanager
def _attention_fallback(model: torch.nn.Module):
    """Hugging Face models can switch SDPA to eager attention (same math): the ONNX exporter
    fails to decompose some SDPA call sites (T5, Swin in transformers 5). Yields a setter, or
    None for models without the switch. The model is left alone until eager is asked for, and the
    original implementation set back on exit only then: DETR's config says "sdpa" while its ResNet
    backbone refuses to be set to it, so setting it unasked raised before anything was exported."""
    setter = getattr(model, "set_attn_implementation", None)
    cfg = getattr(model, "config", None)
    original = getattr(cfg, "_attn_implementation", None)
    if setter is None or original in (None, "eager"):
        yield None
        return
    switched = []

    def use(eager: bool) -> None:
        if eager or switched:
            want = "eager" if eager else original
            try:
                setter(want)
            except ValueError:  # a sub-model that refuses it (DETR's backbone): the config says it, as it did
                cfg._attn_implementation = want
            switched.append(eager)

    try:
        yield use
    finally:
        if switched and switched[-1]:
            use(False)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _line(exc: BaseException) -> str:
    return _ANSI.sub("", (str(exc).strip().splitlines() or [type(exc).__name__])[0]).removesuffix(" Next steps:")[:200]


def export_error_text(exc: BaseException) -> str:
    """The exporter's first line, without its colour codes, and the innermost cause it wraps: torch's own
    first line is a header ("Failed to convert ... step 3/3"), the cause says which op
    ("No ONNX function found for <built-in function round>")."""
    root, seen = exc, {id(exc)}
    # the chain Python prints: an explicit cause, else the context unless `raise ... from None` hid it
    while (nxt := root.__cause__ or (None if root.__suppress_context__ else root.__context__)) is not None \
            and id(nxt) not in seen:
        root = nxt
        seen.add(id(root))
    return _line(exc) + (f" (cause: {type(root).__name__}: {_line(root)})" if root is not exc else "")


@contextlib.contextmanager
def quiet_torch():
    """torch.export/onnx log full tracebacks and warnings for conditions we report ourselves."""
    loggers = [logging.getLogger(n) for n in ("torch._subclasses.fake_tensor", "torch.onnx", "torch.export",
                                               "torch._export", "torch.fx.experimental.symbolic_shapes",
                                               "torch._guards", "torch._dynamo", "onnxscript", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def export_onnx(model: torch.nn.Module, args: tuple, path: str | os.PathLike, kwargs: dict | None = None,
                dynamic_batch: bool = True, atol: float = 1e-4, opset: int | None = None,
                dynamic: Mapping[int | str, Mapping[int, str]] | None = None) -> ExportReport:
    """Export ``model`` to ``path`` and check it in onnxruntime against PyTorch.

    The batch (dim 0 of every tensor input whose dim 0 is the first input's) is dynamic with
    ``dynamic_batch``; every other size stays as in ``args``. ``dynamic`` makes more dims dynamic, by
    input (its position in ``args``, or its name in ``kwargs``) and dim: ``dynamic={0: {2: "time"}}``
    for a (batch, features, time) signal, so the file runs at any length; ``dynamic={1: {1: "edges"}}``
    for a graph network's ``(x, edge_index)``, whose edge count is not its node count.

    Example:
        >>> import torch, graphprune, tempfile, os
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()).eval()
        >>> r = graphprune.export_onnx(m, (torch.randn(2, 4),), os.path.join(tempfile.mkdtemp(), "m.onnx"))
        >>> r.max_abs_diff < 1e-4
        True
    """
    args = args if isinstance(args, tuple) else (args,)
    kwargs = kwargs or {}
    args, kwargs, dynamic = _last_dict_named(model, args, kwargs, dynamic)
    report = _export_once(model, args, kwargs, Path(path), dynamic_batch, atol, opset, dynamic)
    if not dynamic_batch or report.dynamic_batch:
        return report
    if _batch_of(args, kwargs) == 1:
        # at a batch of 1 the exporter may fix the batch where the forward broadcasts against it (Flux): at 2 it
        # may not. Written aside and moved over the file only where it came out dynamic: else the file at 1 stays
        dst = Path(path)
        with tempfile.TemporaryDirectory(prefix=f".{dst.name}.", dir=dst.parent) as aside:
            try:
                two = _export_once(model, *_doubled(args, kwargs), Path(aside) / dst.name, True, atol, opset, dynamic)
            except GraphpruneError:
                two = None
            if two is not None and two.dynamic_batch:
                for f in sorted(Path(aside).iterdir(), key=lambda p: p.name == dst.name):  # the model last
                    os.replace(f, dst.parent / f.name)
                two.path = str(dst)
                why = f"fixed it: {report.note}" if report.note else "fixed the batch"
                two.note = f"dynamic batch from an export at a batch of 2 (the export at a batch of 1 {why})"
                return two
    warn(f"export_onnx: {Path(path).name} has a fixed batch where dynamic_batch=True asked for a dynamic one "
         f"({report.note[:300]}); dynamic= names the dims that may vary, dynamic_batch=False asks for the static file")
    return report


def _last_dict_named(model, args: tuple, kwargs: dict, dynamic):
    """torch.onnx.export reads a dict at the end of ``args`` as keyword arguments (neuralforecast's forward takes one
    dict of tensors, which graphprune.prune takes as given): such inputs go by their parameters' names."""
    if kwargs or not args or not isinstance(args[-1], dict):
        return args, kwargs, dynamic
    try:
        params = inspect.signature(model.forward).parameters
        bound = inspect.signature(model.forward).bind(*args).arguments
    except (TypeError, ValueError):
        return args, kwargs, dynamic
    if any(p.kind == p.VAR_POSITIONAL for p in params.values()):
        return args, kwargs, dynamic
    names = list(bound)
    by_name = {names[k] if isinstance(k, int) and k < len(names) else k: v for k, v in (dynamic or {}).items()}
    return (), dict(bound), by_name or dynamic


def _export_once(model, args: tuple, kwargs: dict, path: Path, dynamic_batch: bool, atol: float, opset: int | None,
                 dynamic: Mapping[int | str, Mapping[int, str]] | None) -> ExportReport:
    import onnx

    model = keyword_view(model.eval(), args, kwargs)  # forward(**kwargs): its inputs named for torch.export
    dynamic_shapes = _dynamic_shapes(model, args, kwargs, dynamic_batch, dynamic or {})
    # past 2 GB of weights (protobuf's limit) they go to external data, path's name + ".data" beside it
    big = sum(p.numel() * p.element_size() for p in model.parameters()) >= EXTERNAL_BYTES
    with onnx_destination(path) as tmp_path:
        tmp = str(tmp_path)
        note = ""
        with quiet_torch(), _attention_fallback(model) as use_eager:
            attempts = [(dynamic_shapes, False)] if dynamic_shapes else []
            attempts += [(dynamic_shapes, True)] if dynamic_shapes and use_eager else []
            attempts += [(None, False)] + ([(None, True)] if use_eager else [])
            prog, errors = None, []
            for shapes, eager in attempts:
                if use_eager:
                    use_eager(eager)
                try:
                    prog = torch.onnx.export(model, args, kwargs=kwargs or None, dynamo=True, opset_version=opset,
                                             dynamic_shapes=shapes, verbose=False)
                    break
                except Exception as exc:  # the exporter raises many types; the next attempt decides
                    errors.append(export_error_text(exc))
            if prog is None:
                cache = "Cache" in " ".join(errors) and "use_cache" in inspect.signature(model.forward).parameters
                raise GraphpruneError(f"torch.onnx.export failed for {type(model).__name__}: {errors[-1]}" + (
                    ". The model returns a key/value cache: export it with kwargs={'use_cache': False}" if cache else ""))
            if dynamic_shapes and shapes is None:
                # Some models fix the batch size internally: export a static batch, and say why.
                note = errors[0]
            if eager:
                note = (note + "; " if note else "") + "exported with eager attention (SDPA did not decompose)"
            prog.save(tmp, external_data=big)
        proto = onnx.load(tmp, load_external_data=False)
        if _squeeze_no_ops(proto):  # weights stay where prog.save put them: only nodes change
            onnx.save(proto, tmp)
        try:
            onnx.checker.check_model(tmp, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise GraphpruneError(
                f"torch.onnx.export wrote a file onnx's checker rejects for {type(model).__name__}: "
                f"{str(exc).strip().splitlines()[0][:400]}. The op it names came from the model's code (an einsum or "
                "a matmul of boolean masks: cast them to float first); nothing was written") from exc
        _check_dynamic(proto, args, kwargs, dynamic or {}, errors)
        fixed = _fixed_batch(proto, _batch_of(args, kwargs)) if dynamic_shapes and shapes is not None and dynamic_batch else []
        if fixed:  # the exporter took the batch Dim and still wrote a number (Flux at batch 1)
            shapes, note = None, f"the exporter fixed the batch of {', '.join(fixed[:3])}"
        sess, got = _ort_outputs(tmp, args, kwargs, type(model).__name__)
        with torch.no_grad():
            want = [t.detach().cpu().numpy() for t in tree_leaves(model(*args, **kwargs))
                    if isinstance(t, torch.Tensor)]
        if len(got) != len(want) or any(g.shape != w.shape for g, w in zip(got, want)):
            raise GraphpruneError(f"ONNX outputs {[g.shape for g in got]} do not match PyTorch {[w.shape for w in want]}")

        diff = max_abs_diff(got, want)
        # float32 rounding is relative: judge each output against max(1, its magnitude), as the oracle does
        if scaled_diff(got, want) > atol:
            raise GraphpruneError(f"onnxruntime differs from PyTorch by {diff:.3g} (> atol {atol:g} relative to the "
                                  f"outputs' magnitude){_worst_output(got, want, sess)}; nothing was written to {path}. "
                                  "Where the unpruned model differs as much (float32 rounding in a deep net at random "
                                  "weights: IGCV3, 3e-3), pass export_onnx(..., atol=) above it")
    return ExportReport(str(path), diff, atol, dynamic_batch and shapes is not None, note)


def _ort_outputs(path: str, args: tuple, kwargs: dict, name: str):
    """The written file run in onnxruntime at the example inputs: (session, outputs). onnxruntime's own
    errors (an op its CPU provider has no kernel for) become a GraphpruneError saying what to change."""
    import onnxruntime as ort

    def feeds(names: list[str]) -> dict:
        tensors = [a for a in tree_leaves((tuple(args), dict(kwargs))) if isinstance(a, torch.Tensor)]  # dicts too
        if not args and set(names) <= set(kwargs):  # keyword inputs keep their names in the graph
            return {n: kwargs[n].detach().cpu().numpy() for n in names}
        return {n: t.detach().cpu().numpy() for n, t in zip(names, tensors)}

    try:
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind types (Fail, NotImplemented, ...)
        raise _ort_error(exc, name) from exc
    given = feeds([i.name for i in sess.get_inputs()])  # numpy's own errors (bfloat16 has no numpy type) are not
    try:  # onnxruntime's, and pass as they are
        return sess, sess.run(None, given)
    except Exception as exc:  # noqa: BLE001
        raise _ort_error(exc, name) from exc


def _ort_error(exc: Exception, name: str) -> GraphpruneError:
    text = (str(exc).strip().splitlines() or [""])[0][:400]
    hint = (" Its CPU provider has no kernel for that op, most often one the model's code runs in bfloat16 or "
            "float16 (a cast in the forward, as Falcon's ALiBi does): cast to float32 there"
            if "NOT_IMPLEMENTED" in text or "implementation" in text else "")
    return GraphpruneError(f"onnxruntime cannot run the file torch.onnx.export wrote for {name}: "
                           f"{type(exc).__name__}: {text}.{hint} Nothing was written")


def _worst_output(got: list, want: list, sess) -> str:
    """Which output differs most, where there are several (TabNet's second output, a loss term, is NaN
    in onnxruntime while its prediction matches to 4e-5), and whether onnxruntime gave NaN there."""
    if len(got) < 2:
        return ""
    gap = [scaled_diff([g], [w]) for g, w in zip(got, want)]
    i = max(range(len(gap)), key=gap.__getitem__)
    nan = bool(np.isnan(got[i]).any() and not np.isnan(want[i]).any())
    rest = max(gap[:i] + gap[i + 1:])
    return (f", at output {i} '{sess.get_outputs()[i].name}' of {len(got)}" + (" (NaN in onnxruntime only)" if nan else "")
            + f"; the other outputs differ by at most {rest:.3g}")


def _squeeze_no_ops(model) -> int:
    """Squeeze nodes over an axis whose size is known and not 1 rewritten as Identity; their count.

    torch's squeeze(dim) leaves a dim of another size as it is, and the exporter still writes an ONNX
    Squeeze, which requires size 1 (PixArt's ``hidden_states.squeeze(1)`` on a (1, 16, 32) tensor: the
    checker refused the file)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    shapes = {v.name: [d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input)}
    wanted = {n.input[1] for n in model.graph.node if n.op_type == "Squeeze" and len(n.input) > 1}
    axes = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer  # weights may be external: read none
            if i.name in wanted and i.data_location != onnx.TensorProto.EXTERNAL}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Squeeze" or len(node.input) < 2 or node.input[1] not in axes:
            continue
        shape = shapes.get(node.input[0])
        picked = [int(a) for a in np.atleast_1d(axes[node.input[1]])]
        if shape and all(shape[a] not in (None, 1) for a in picked):
            node.op_type = "Identity"
            del node.input[1:]
            changed += 1
    return changed


def _batch_of(args: tuple, kwargs: dict) -> int | None:
    """The example batch: dim 0 of the first input of rank >= 2 (else of the first tensor input)."""
    tensors = [t for t in tree_leaves((tuple(args), dict(kwargs))) if isinstance(t, torch.Tensor) and t.dim()]  # dicts too
    first = next((t for t in tensors if t.dim() >= 2), tensors[0] if tensors else None)
    return None if first is None else int(first.shape[0])


def _doubled(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """The inputs at a batch of 2: every tensor whose dim 0 is the batch of 1, twice (the others as given)."""
    size = _batch_of(args, kwargs)
    two = lambda t: torch.cat([t, t]) if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == size else t
    return tuple(tree_map(two, a) for a in args), {k: tree_map(two, v) for k, v in kwargs.items()}


def _fixed_batch(model, size: int | None) -> list[str]:
    """Graph inputs whose dim 0, the example's batch ``size``, came out a number where no input's dim 0 is
    symbolic: [] where the batch is a dim (inputs with no batch, Flux's position ids, have none)."""
    batched = [i for i in model.graph.input if i.type.tensor_type.shape.dim]
    if any(i.type.tensor_type.shape.dim[0].dim_param for i in batched):
        return []
    return [i.name for i in batched if i.type.tensor_type.shape.dim[0].dim_value == size]


def _check_dynamic(model, args: tuple, kwargs: dict, asked: Mapping[int | str, Mapping[int, str]], errors: list) -> None:
    """Every dim ``dynamic=`` names is symbolic in the exported graph, else a GraphpruneError (nothing is
    written): a model that fixes the dim (a Linear over time) exports it static, which is the file a user
    asking for it could not run at another length."""
    keys = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    keys += [k for k, v in kwargs.items() if isinstance(v, torch.Tensor)]
    inputs = {i.name: i for i in model.graph.input}
    for key, dims in asked.items():
        graph_input = inputs.get(key) if isinstance(key, str) else None
        graph_input = graph_input or (model.graph.input[keys.index(key)] if key in keys else None)
        if graph_input is None:
            continue
        shape = graph_input.type.tensor_type.shape.dim
        fixed = [(d, shape[d].dim_value) for d in dims if not shape[d].dim_param]
        if fixed:
            why = f" (the exporter: {errors[0]})" if errors else " (the model fixes it)"
            raise GraphpruneError(f"export_onnx: input {key!r} dim {fixed[0][0]} came out fixed at {fixed[0][1]} where "
                                  f"dynamic= asked for it to vary{why}; nothing was written")


def _dynamic_shapes(model, args: tuple, kwargs: dict, batch: bool, more: Mapping[int | str, Mapping[int, str]]):
    """torch.export's dynamic_shapes: the batch of every tensor input, and the dims ``more`` names
    (one Dim per name, so two inputs' "time" stay equal); None where nothing is dynamic. Positional and
    keyword inputs together are named by the forward's parameters."""
    if not batch and not more:
        return None
    dims: dict[str, torch.export.Dim] = {}
    # the batch is dim 0 of the inputs that share the first batched-looking one's: Flux's position ids
    # (16, 3) have no batch, and a batch Dim on them made the whole export fall back to static shapes
    size = _batch_of(args, kwargs)

    def spec(key, value):
        if isinstance(value, dict):  # a nested input (PixArt's added_cond_kwargs): dynamic_shapes mirrors it
            return {k: spec(None, v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            items = [spec(None, v) for v in value]
            return type(value)(*items) if hasattr(value, "_fields") else type(value)(items)  # a NamedTuple: by field
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return None
        out = {0: dims.setdefault("batch", torch.export.Dim("batch"))} if batch and value.shape[0] == size else {}
        for d, name in (more.get(key) or {}).items():
            if not -value.dim() <= d < value.dim():
                raise GraphpruneError(f"dynamic={{{key!r}: {{{d}: {name!r}}}}}: input {key!r} has {value.dim()} dims")
            out[d % value.dim()] = dims.setdefault(name, torch.export.Dim(name))
        return out or None

    unknown = [k for k in more if not (isinstance(k, int) and 0 <= k < len(args)) and k not in kwargs]
    if unknown:
        raise GraphpruneError(f"dynamic= names input(s) {unknown} the call does not have: give a position in args "
                              f"(0..{len(args) - 1}) or a keyword of kwargs ({sorted(kwargs)})")
    params = inspect.signature(model.forward).parameters
    varargs = next((n for n, p in params.items() if p.kind == p.VAR_POSITIONAL), None)
    try:
        bound = inspect.signature(model.forward).bind(*args, **kwargs).arguments
    except TypeError as exc:
        raise GraphpruneError(f"export_onnx: the inputs do not fit {type(model).__name__}.forward: {exc}") from exc
    if args and varargs in bound:  # forward(*xs): torch.export wants the *xs inputs' specs as one tuple
        first = list(bound).index(varargs)
        return {name: tuple(spec(first + j, v) for j, v in enumerate(value)) if name == varargs else
                spec(i if i < first else name, value) for i, (name, value) in enumerate(bound.items())}
    if args and kwargs:
        position = {name: i for i, name in enumerate(bound) if i < len(args)}
        return {name: spec(position.get(name, name), value) for name, value in bound.items()}
    if args:
        return tuple(spec(i, a) for i, a in enumerate(args))
    return {k: spec(k, v) for k, v in kwargs.items()}  # keyword-only inputs (Hugging Face models): by name
