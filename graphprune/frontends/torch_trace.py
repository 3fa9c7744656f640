"""How a PyTorch model is traced: recorded on meta stand-ins (frontends/torch_record.py), checked by one
replay on the real weights, recorded on those where that fails, and exported by torch.export where
recording fails too. Where export fails as well and a module's forward read tensor data, that module is
recorded as one call (frontends/torch_opaque.py); otherwise export's error says what is wrong."""
from __future__ import annotations

import os

import torch

from ..errors import TraceError
from ..util.torch_compat import fx_flatten_spec, kept_attributes, tree_leaves
from .torch_export import export_program
from .torch_opaque import MAX_ROUNDS
from .torch_record import Unrecordable, record
from .trace import Trace


def trace_model(model: torch.nn.Module, args: tuple, kwargs: dict | None = None, like: Trace | None = None,
                real: bool = True) -> Trace:
    """Record the forward on meta stand-ins; where that fails, on the real weights (a
    forward that makes tensors on a fixed device); where that fails too, trace it with
    torch.export, whose error then says what is wrong.

    ``like``: trace the way that earlier trace was made (a re-trace matched against it;
    its failure is the model's, reported as a TraceError; recorded on meta stand-ins, it is recorded on the
    real weights where those fail, unless ``real`` is False). The environment variable
    GRAPHPRUNE_TRACE=export makes export the only way."""

    if like is None:
        _check_names(model)
    if like is not None and like.method == "record":
        try:
            return record(model, args, kwargs, device=like.device, opaque=like.opaque, reads=like.reads)
        except Unrecordable as exc:
            if like.device != "meta" or not real:
                raise TraceError(f"could not record {type(model).__name__}'s forward: {exc}") from exc
            first = exc
        try:  # a cache the forward filled on a real run since (FNO's grid) meets meta stand-ins: record on the real weights
            return record(model, args, kwargs, device="real")
        except Unrecordable as exc:  # on the real weights, the failure is the model's own
            raise TraceError(f"could not record {type(model).__name__}'s forward: {exc}") from first
    if like is None and os.environ.get("GRAPHPRUNE_TRACE", "auto") != "export":
        why, last = "", None
        for device in ("meta", "real"):
            try:
                trace = record(model, args, kwargs, device=device)
            except Unrecordable as exc:
                why, last = str(exc), exc
                continue
            if device == "real" or _replays(trace, model, args, kwargs):
                return trace
        try:
            ep = export_program(model, args, kwargs)
        except TraceError as exc:  # export's guard names a symbol; where the recording stopped names the line
            whole = _recorded_whole(model, args, kwargs, last)
            if isinstance(whole, Trace):
                return whole
            why += f"; recorded as one call, {whole}" if whole else ""
            ran = why and not why.startswith("TypeError") and _runs_eagerly(model, args, kwargs, exc)
            # (a call that does not fit forward: export's hint says more)
            if not why:
                raise
            cause = exc.__cause__
            if ran and cause is not None and "tensor data" not in why and "DataDependent" not in type(cause).__name__:
                said = f"{type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''}"
                both = why if why.startswith(said) else f"{why} (torch.export: {said})"
                raise TraceError(
                    f"{type(model).__name__} runs on the example inputs untraced, but raises when traced, both when "
                    f"graphprune records it and under torch.export: {both}. Its code takes another path while traced "
                    "(transformers checks torch.compiler.is_exporting()), and that path fails: the inputs are not the "
                    "cause, and this model cannot be pruned until that path runs") from exc
            raise TraceError(f"{exc} Recording the forward stopped first: {why}.") from exc
        return Trace(None, ep.call_spec.in_spec, list(ep.graph_signature.user_inputs), method="export", ep=ep)
    ep = export_program(model, args, kwargs)
    return Trace(None, ep.call_spec.in_spec, list(ep.graph_signature.user_inputs), method="export", ep=ep)


def _recorded_whole(model: torch.nn.Module, args: tuple, kwargs: dict | None, exc: Unrecordable | None) -> Trace | str:
    """Neither a recording nor torch.export takes the forward: where a module's forward read tensor data, record
    every module of its class as one call (frontends/torch_opaque.py; DBRX's 40 expert layers at once), and again
    for each further one the next recording stops in. Where that fails: why, after the first module tried ('' where
    the read is in the model's own forward)."""
    opaque: tuple[str, ...] = ()
    reads: tuple[tuple[str, str], ...] = ()  # why each is one call: the read its class's first recording stopped at
    for _ in range(MAX_ROUNDS):
        if exc is None or not exc.module:
            break
        kind = type(model.get_submodule(exc.module))
        more = tuple(p for p, m in model.named_modules() if p and type(m) is kind and p not in opaque)
        if not more:
            break
        opaque += more
        reads += tuple((p, str(exc)) for p in more)
        try:
            return record(model, args, kwargs, device="real", opaque=opaque, reads=reads)
        except Unrecordable as again:
            exc = again
    return str(exc) if opaque and exc is not None else ""


def _check_names(model: torch.nn.Module) -> None:
    """A submodule registered under the name of a class attribute (nbeats-pytorch's ``self.parameters =
    nn.ParameterList(...)``) is found by no lookup by name: ``getattr`` returns the method, so torch's
    ``get_submodule`` and torch.export fail on it with a message about the method."""
    for path, m in model.named_modules():
        for name, child in m.named_children():
            if getattr(type(m), name, None) is not None and getattr(m, name, None) is not child:
                where = f"{path}.{name}" if path else name
                raise TraceError(f"submodule '{where}' of {type(model).__name__} has the name of "
                                 f"{type(m).__name__}.{name}, which attribute lookup finds instead (torch's "
                                 f"get_submodule and torch.export too), so the model cannot be traced. Rename the "
                                 f"attribute in {type(m).__name__}.__init__ (and its keys in a saved state_dict)")


def _runs_eagerly(model: torch.nn.Module, args: tuple, kwargs: dict | None, failed: TraceError) -> bool:
    """Where nothing traces, the model's own error on these inputs, if it has one, is the one to read (asteroid's
    DCUNet checks its input length from tensor data: export named the data read, not the TypeError it raises).
    True where the forward runs."""
    try:
        with torch.no_grad(), torch.random.fork_rng(), kept_attributes(model):
            model(*args, **(kwargs or {}))
    except Exception as exc:  # noqa: BLE001 - whatever the model raises is what the user needs to see
        raise TraceError(f"{type(model).__name__}'s forward fails on the example inputs, untraced: "
                         f"{type(exc).__name__}: {exc}") from failed
    return True


def _replays(trace: Trace, model: torch.nn.Module, args: tuple, kwargs: dict | None) -> bool:
    """Whether a forward recorded on meta stand-ins runs on the real inputs and weights. A forward that
    branches on its tensors' device takes the branch for neither CPU nor CUDA there: transformers' MoE
    routing counts tokens per expert with ``histc`` on int32 off the CPU, which the CPU kernels do not
    have (the oracle then failed with a raw NotImplementedError). Such a forward is recorded on the
    real weights instead. A model on the meta device itself has nothing to run, and is not checked."""
    if any(t.device.type == "meta" for t in tree_leaves((tuple(args), dict(kwargs or {})))
           if isinstance(t, torch.Tensor)) or any(p.device.type == "meta" for p in model.parameters()):
        return True
    try:
        with torch.no_grad(), torch.random.fork_rng():  # a dropout in train mode draws: the user's RNG stays
            _OnCopies(trace.gm).run(*fx_flatten_spec((tuple(args), dict(kwargs or {})), trace.in_spec))
    except Exception:  # noqa: BLE001 - whatever the replay raises, the real recording says it or succeeds
        return False
    return True


class _OnCopies(torch.fx.Interpreter):
    """The replay reads copies of every tensor but the parameters: a BatchNorm in train mode updates its
    running statistics in place, which must not reach the user's model from a check (parameters are only
    read: no_grad, no optimizer)."""

    def fetch_attr(self, target: str):
        t = super().fetch_attr(target)
        return t if isinstance(t, torch.nn.Parameter) or not isinstance(t, torch.Tensor) else t.clone()
