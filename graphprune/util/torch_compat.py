"""Every private torch internal graphprune uses, each under a public name of this module.

Nothing else in the package reaches into torch's private modules or attributes, so a torch
release that moves one breaks here, in one place. What is private, and why it is used:

* ``torch.utils._pytree`` (:func:`tree_leaves`, :func:`tree_flatten`, :func:`tree_map`) and
  ``torch.fx._pytree.tree_flatten_spec`` (:func:`fx_flatten_spec`): the Python pytree whose
  ``TreeSpec`` export's ``in_spec`` and fx's flattening use; torch has no public module for it
  on the floor version, and the C++ pytree's specs do not mix with fx's.
* ``torch.nn.modules.conv._ConvNd``, ``torch.nn.modules.batchnorm._NormBase`` (:data:`ConvNd`,
  :data:`NormBase`): the one base class of every conv (batch/instance norm) layer, subclasses
  included; no public base class.
* ``torch._ops.OpOverload`` / ``OpOverloadPacket`` and ``OpOverload._schema``
  (:func:`is_op_overload`, :func:`is_op_packet`, :func:`op_qualname`): the types of fx call
  targets; ``name()`` appends the overload, the schema's name does not.
* Recording at the pre-dispatch key (frontends/torch_record.py): ``TorchDispatchMode``'s
  ``_dispatch_key``, ``torch._C.DispatchKey.PreDispatch``, ``SchemaCheckMode`` as the mode's
  base (:data:`PreDispatchModeBase`, :func:`init_predispatch_mode`),
  ``torch._dispatch.python.enable_python_dispatcher`` (:func:`python_dispatcher`),
  ``torch._C._DisablePythonDispatcher`` (:func:`no_python_dispatcher`),
  ``torch.nn.utils.stateless._reparametrize_module`` (:func:`reparametrize`), and
  ``torch.compiler._is_compiling_flag`` / ``_is_exporting_flag`` (:func:`export_flags`).
* ``Module._parameters`` / ``_buffers`` (:func:`own_params`, :func:`own_buffers`,
  :func:`set_tensor`, :func:`pop_tensor`, :func:`restore_tensors`) and
  ``RNNBase._init_flat_weights`` (:func:`refresh_rnn_weights`): see each function.

Checked on torch 2.13 (the development environment). The declared floor is torch>=2.4; of the
above, ``torch.compiler._is_exporting_flag`` arrived in 2.6 (pytorch#142425), so
:func:`export_flags` sets only the flags the running torch has.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.fx._pytree as _fx_pytree
import torch.utils._pytree as _pytree
from torch import nn
from torch._dispatch.python import enable_python_dispatcher
from torch._ops import OpOverload, OpOverloadPacket
from torch._subclasses.schema_check_mode import SchemaCheckMode
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils._python_dispatch import TorchDispatchMode

tree_leaves = _pytree.tree_leaves
tree_flatten = _pytree.tree_flatten
tree_unflatten = _pytree.tree_unflatten
tree_map = _pytree.tree_map
fx_flatten_spec = _fx_pytree.tree_flatten_spec


def leaf_paths(tree: Any) -> list[str]:
    """Each leaf's path as Python spells it (``['encoder_lengths']``, ``[0]``), in :func:`tree_flatten`'s order."""
    return [_pytree.keystr(path) for path, _ in _pytree.tree_flatten_with_path(tree)[0]]

ConvNd = nn.modules.conv._ConvNd
NormBase = nn.modules.batchnorm._NormBase

# torch admits only its own mode classes at the pre-dispatch key; SchemaCheckMode's slot is the
# one nothing else uses while graphprune records.
PreDispatchModeBase = SchemaCheckMode


def is_op_overload(target: Any) -> bool:
    """Whether an fx call target is one overload of an operator (``aten.conv2d.default``)."""
    return isinstance(target, OpOverload)


def is_op_packet(target: Any) -> bool:
    """Whether an fx call target is an operator with its overloads (``aten.conv2d``)."""
    return isinstance(target, OpOverloadPacket)


def op_qualname(op: OpOverload) -> str:
    """'aten::conv2d' for ``aten.conv2d.default``: the schema's name, without the overload."""
    return op._schema.name


def is_pure_op(target: Any) -> bool:
    """Whether an fx call target is an operator overload that writes none of its arguments."""
    return is_op_overload(target) and not target._schema.is_mutable


def init_predispatch_mode(mode: TorchDispatchMode) -> None:
    """Initialise a dispatch mode to run at the pre-dispatch key (before autograd and
    decompositions): only the ops a forward calls are seen, not what they run underneath."""
    TorchDispatchMode.__init__(mode, _dispatch_key=torch._C.DispatchKey.PreDispatch)


def python_dispatcher():
    """Context: route ops through the Python dispatcher, which a pre-dispatch mode needs."""
    return enable_python_dispatcher()


def no_python_dispatcher():
    """Context: run ops on their own kernels (C++ meta kernels where torch has them), not
    back through the Python dispatcher, which costs twice as much per op."""
    return torch._C._DisablePythonDispatcher()


def reparametrize(module: nn.Module, tensors: dict[str, torch.Tensor]):
    """Context: ``module`` sees ``tensors`` (path -> tensor) in place of its parameters and
    buffers. ``torch.func.functional_call`` runs the forward itself; recording must run it
    inside its own modes and hooks, so the context manager underneath is used.

    A submodule registered under two paths (MONAI's DynUNet: ``input_block`` is also
    ``skip_layers.downsample``) is one slot: swapped twice, the second swap saves the first
    stand-in as the "original" and the exit leaves it there, the user's weights gone. So each
    (owner, attribute) is swapped once; every path reads the same stand-in anyway."""
    slots: set[tuple[int, str]] = set()
    once: dict[str, torch.Tensor] = {}
    for path, tensor in tensors.items():
        owner, _, attr = path.rpartition(".")
        slot = (id(module.get_submodule(owner) if owner else module), attr)
        if slot not in slots:
            slots.add(slot)
            once[path] = tensor
    return _reparametrize_module(module, once)


@contextlib.contextmanager
def export_flags() -> Iterator[None]:
    """What torch.export sets (``torch.compiler.is_compiling()`` / ``is_exporting()`` true),
    so library code takes its export-friendly paths. Flags the running torch lacks are skipped."""
    names = [n for n in ("_is_compiling_flag", "_is_exporting_flag") if hasattr(torch.compiler, n)]
    old = [getattr(torch.compiler, n) for n in names]
    for n in names:
        setattr(torch.compiler, n, True)
    try:
        yield
    finally:
        for n, v in zip(names, old):
            setattr(torch.compiler, n, v)


# A module's own registries. Read directly, not through named_parameters(recurse=False): every
# trace walks every module, and the dicts read 2.5x as fast as those generators (1.2 vs 3.0 ms
# over 1,200 modules). Written directly: Module.__setattr__ would run the global registration
# hooks again for a tensor that only changed shape, and refuses a plain tensor under a
# parameter's name.

def own_params(module: nn.Module) -> Mapping[str, torch.Tensor | None]:
    """The parameters registered on ``module`` itself (not its children); read only."""
    return module._parameters


def own_buffers(module: nn.Module) -> Mapping[str, torch.Tensor | None]:
    """The buffers registered on ``module`` itself (not its children); read only."""
    return module._buffers


def set_tensor(module: nn.Module, name: str, value: Any) -> None:
    """Replace the parameter or buffer ``name`` of ``module`` in its registry, or set a plain
    attribute where ``name`` is neither."""
    if name in module._parameters:
        module._parameters[name] = value
    elif name in module._buffers:
        module._buffers[name] = value
    else:
        setattr(module, name, value)


def pop_tensor(module: nn.Module, name: str) -> torch.Tensor:
    """Take the parameter (or else the buffer) ``name`` out of ``module``'s registry."""
    return module._parameters.pop(name) if name in module._parameters else module._buffers.pop(name)


def restore_tensors(module: nn.Module, params: Mapping[str, Any], buffers: Mapping[str, Any]) -> None:
    """Make ``module``'s registries hold exactly ``params`` and ``buffers`` again (copies of
    :func:`own_params` / :func:`own_buffers` taken earlier), names dropped since included."""
    module._parameters.clear()
    module._parameters.update(params)
    module._buffers.clear()
    module._buffers.update(buffers)


def share_registries(view: nn.Module, model: nn.Module) -> None:
    """``view`` holds ``model``'s submodules, parameters and buffers under the same names, without a prefix
    (io/keyword_view.py): the registries themselves are shared, so the exported names are the model's."""
    view._modules, view._parameters, view._buffers = model._modules, model._parameters, model._buffers


def refresh_rnn_weights(rnn: nn.RNNBase) -> None:
    """Rebuild the list of weights an RNN's forward reads (not its attributes) after
    :func:`set_tensor` replaced them, which bypasses RNNBase.__setattr__'s own update."""
    rnn._init_flat_weights()


@contextlib.contextmanager
def data_reads(check: Callable[[torch.Tensor, str], None]) -> Iterator[None]:
    """Context: ``check(tensor, how)`` before ``Tensor.numpy()`` / ``.tolist()`` / ``__array__``, reads of a tensor's data
    that dispatch no op, so that a dispatch mode never sees them (``.item()`` dispatches ``_local_scalar_dense``)."""
    saved = {name: getattr(torch.Tensor, name) for name in ("numpy", "tolist", "__array__")}
    own = {name: name in vars(torch.Tensor) for name in saved}  # numpy and tolist are the C base class's

    def checked(name: str, method: Callable) -> Callable:
        def read(self, *args, **kwargs):
            check(self, name)
            return method(self, *args, **kwargs)
        return read

    for name, method in saved.items():
        setattr(torch.Tensor, name, checked(name, method))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method) if own[name] else delattr(torch.Tensor, name)


@contextlib.contextmanager
def kept_attributes(model: nn.Module) -> Iterator[None]:
    """Context: every module's plain attributes as they were before, after a traced forward. A forward
    may cache what it computes in an attribute (neuraloperator's grid embedding keeps its grid for the
    last resolution) or in a dict or list it holds (a grid per size); run on meta or fake stand-ins, the
    cache held meta tensors, and the user's model then failed in every later forward. Attributes set are
    put back, attributes added are removed, and plain dicts, lists and sets get their contents back (the
    module's own dicts of parameters, buffers and submodules are the same objects, and left alone)."""
    saved = [(m, dict(vars(m)), {k: _contents(v) for k, v in vars(m).items() if type(v) in (dict, list, set) or (
        isinstance(v, dict) and k.endswith(_HOOKS))}) for m in model.modules()]
    # a module in training mode updates its buffers in place (batch norm's running statistics): their values back
    # too, or the oracle's and the timer's forwards moved the user's statistics (review, session 63)
    stats = [(b, b.detach().clone()) for m in model.modules() if m.training
             for b in m._buffers.values() if isinstance(b, torch.Tensor) and b.device.type != "meta"]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, old in stats:
                b.copy_(old)
        for m, before, held in saved:
            now = vars(m)
            for k in [k for k in now if k not in before]:
                del now[k]
            for k, v in before.items():
                if now.get(k, before) is not v:
                    now[k] = v
                if k in held and _contents(v)[0] != held[k][0]:  # filled in place: its old contents back
                    v.clear()
                    if isinstance(v, list):
                        v.extend(held[k][1])
                    else:
                        v.update(held[k][1])


# a module's hook registries (OrderedDicts): transformers 5 installs its output-capturing hooks on the first forward and
# marks the model so; the mark (a plain attribute) goes back, so must the hooks, or the next forward installs them twice
# and every captured hidden state arrives twice (SegFormer's decode head read the wrong stage)
_HOOKS = ("_hooks", "_hooks_with_kwargs", "_hooks_always_called")


def _contents(v) -> tuple:
    """A container's contents as the ids of its keys and values (tensors have no usable ==), and a copy."""
    items = [x for kv in v.items() for x in kv] if isinstance(v, dict) else list(v)
    return tuple(map(id, items)), (dict(v) if isinstance(v, dict) else list(v))
