"""Output stand-ins for the commonest ops on meta tensors, without running their kernels.

torch's meta kernels for norms, linear, attention and elementwise ops are written in
Python (refs and decompositions) and cost about a millisecond each; recording a
forward on meta tensors (frontends/torch_record.py) would spend most of its time in
them. These rules give the same output shape, dtype and strides and raise where the
kernel would (mismatched sizes: the rewrite's proof depends on it); anything else
(other overloads, integer inputs to activations) runs the real meta kernel.
"""
from __future__ import annotations

from typing import Any, Callable

import torch


def _fail(op: str, msg: str) -> None:
    raise RuntimeError(f"{op}: {msg}")


class _Unhandled(Exception):
    """The rule does not cover this call: run the meta kernel."""


def _like(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``_like(x)`` (its strides where x is dense, as elementwise kernels give),
    at a hundredth of its cost on meta (0.4 ms a call)."""
    dtype = dtype or x.dtype
    if x.is_contiguous():
        return torch.empty(x.shape, dtype=dtype, device="meta")
    order = sorted(range(x.dim()), key=lambda d: x.stride(d))
    expect = 1
    for d in order:
        if x.shape[d] != 1 and x.stride(d) != expect:
            return torch.empty(x.shape, dtype=dtype, device="meta")  # overlapping or gapped: contiguous out
        expect *= x.shape[d]
    return torch.empty_strided(x.shape, x.stride(), dtype=dtype, device="meta")


def _per_channel(op: str, x: torch.Tensor, channels: int, *tensors: Any) -> None:
    for t in tensors:
        if t is not None and tuple(t.shape) != (channels,):
            _fail(op, f"expected a tensor of {channels} elements, got shape {tuple(t.shape)}")


def _batch_norm(x, weight, bias, mean, var, *rest, **kw):
    if x.dim() < 2:
        _fail("batch_norm", "input needs a channel dim")
    _per_channel("batch_norm", x, x.shape[1], weight, bias, mean, var)
    return _like(x)


def _layer_norm(x, shape, weight=None, bias=None, *rest, **kw):
    shape = tuple(shape)
    if tuple(x.shape[x.dim() - len(shape):]) != shape:
        _fail("layer_norm", f"normalized_shape {list(shape)} does not match input shape {list(x.shape)}")
    for t in (weight, bias):
        if t is not None and tuple(t.shape) != shape:
            _fail("layer_norm", f"weight of shape {tuple(t.shape)}, normalized_shape {list(shape)}")
    return torch.empty(x.shape, dtype=x.dtype, device="meta")


def _rms_norm(x, shape, weight=None, *rest, **kw):
    return _layer_norm(x, shape, weight)


def _group_norm(x, groups, weight=None, bias=None, *rest, **kw):
    c = x.shape[1]
    if c % groups:
        _fail("group_norm", f"{c} channels do not split into {groups} groups")
    _per_channel("group_norm", x, c, weight, bias)
    return torch.empty(x.shape, dtype=x.dtype, device="meta")


def _linear(x, w, b=None, **kw):
    if w.dim() != 2 or x.dim() < 1 or x.shape[-1] != w.shape[1]:
        _fail("linear", f"mat1 and mat2 shapes cannot be multiplied ({list(x.shape)} and {list(w.shape)[::-1]})")
    if b is not None and tuple(b.shape) not in ((w.shape[0],), ()):
        _fail("linear", f"bias of shape {tuple(b.shape)} for {w.shape[0]} outputs")
    if x.dtype != w.dtype:
        _fail("linear", f"expected both inputs to have the same dtype ({x.dtype}, {w.dtype})")
    return torch.empty(tuple(x.shape[:-1]) + (w.shape[0],), dtype=x.dtype, device="meta")


def _conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1, **kw):
    """aten.conv1d/2d/3d: output size per spatial dim from the usual formula; a string
    padding ("same", "valid") goes to the kernel."""
    n = w.dim() - 2
    if isinstance(padding, str) or x.dim() not in (n + 1, n + 2):
        raise _Unhandled
    expand = lambda v: list(v) * n if len(v) == 1 else list(v)  # noqa: E731
    stride, padding, dilation = (expand([v] if isinstance(v, int) else v) for v in (stride, padding, dilation))
    batched = x.dim() == n + 2
    c_in = x.shape[1] if batched else x.shape[0]
    if groups < 1 or c_in != w.shape[1] * groups or w.shape[0] % groups:
        _fail("conv", f"input with {c_in} channels, weight {list(w.shape)}, groups {groups}")
    if b is not None and tuple(b.shape) != (w.shape[0],):
        _fail("conv", f"bias of shape {tuple(b.shape)} for {w.shape[0]} outputs")
    spatial = x.shape[-n:]
    out = []
    for i in range(n):
        size = (spatial[i] + 2 * padding[i] - dilation[i] * (w.shape[2 + i] - 1) - 1) // stride[i] + 1
        if size < 1:
            _fail("conv", f"kernel {list(w.shape[2:])} larger than the padded input {list(spatial)}")
        out.append(size)
    shape = ((x.shape[0], w.shape[0]) if batched else (w.shape[0],)) + tuple(out)
    return torch.empty(shape, dtype=x.dtype, device="meta")


def _sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if q.dim() < 2 or q.dim() != k.dim() or k.dim() != v.dim():
        _fail("scaled_dot_product_attention", "query, key and value need the same rank")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        _fail("scaled_dot_product_attention", f"shapes {list(q.shape)}, {list(k.shape)}, {list(v.shape)} do not fit")
    lead_q, lead_k, lead_v = q.shape[:-2], k.shape[:-2], v.shape[:-2]
    if lead_k != lead_v:
        _fail("scaled_dot_product_attention", "key and value batch dims differ")
    if lead_q != lead_k:
        gqa_ok = (enable_gqa and q.dim() >= 3 and lead_q[:-1] == lead_k[:-1] and k.shape[-3] > 0
                  and q.shape[-3] % k.shape[-3] == 0)
        if not gqa_ok:
            _fail("scaled_dot_product_attention", f"query batch dims {list(lead_q)} vs key {list(lead_k)}")
    if attn_mask is not None:
        torch.broadcast_shapes(tuple(attn_mask.shape), tuple(lead_q) + (q.shape[-2], k.shape[-2]))
    return torch.empty(tuple(q.shape[:-1]) + (v.shape[-1],), dtype=q.dtype, device="meta")


def _binary(op: str, inplace: bool) -> Callable:
    def rule(a, b, *rest, **kw):
        if not isinstance(a, torch.Tensor):
            raise _Unhandled
        if isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and (
                op != "div" or a.dtype.is_floating_point):  # the common case, without broadcasting rules
            return a if inplace else _like(a)
        shape = torch.broadcast_shapes(tuple(a.shape), tuple(b.shape) if isinstance(b, torch.Tensor) else ())
        if inplace:
            if tuple(shape) != tuple(a.shape):
                _fail(op, f"output with shape {list(a.shape)} doesn't match the broadcast shape {list(shape)}")
            return a
        dtype = torch.result_type(a, b)
        if op == "div" and not dtype.is_floating_point and not dtype.is_complex:
            dtype = torch.get_default_dtype()
        if isinstance(b, torch.Tensor) and tuple(b.shape) == tuple(shape) and b.dim() > a.dim():
            return torch.empty(shape, dtype=dtype, device="meta")
        if tuple(a.shape) == tuple(shape):
            return _like(a, dtype)
        return torch.empty(shape, dtype=dtype, device="meta")
    return rule


def _unary(x, *rest, **kw):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise _Unhandled
    return _like(x)


def _unary_(x, *rest, **kw):
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise _Unhandled
    return x


RULES: dict[str, Callable] = {
    "aten.batch_norm.default": _batch_norm,
    "aten.layer_norm.default": _layer_norm,
    "aten.rms_norm.default": _rms_norm,
    "aten.group_norm.default": _group_norm,
    "aten.linear.default": _linear,
    "aten.conv1d.default": _conv,
    "aten.conv2d.default": _conv,
    "aten.conv3d.default": _conv,
    "aten.scaled_dot_product_attention.default": _sdpa,
}
for _name in ("add", "sub", "mul", "div"):
    RULES[f"aten.{_name}.Tensor"] = _binary(_name, False)
    RULES[f"aten.{_name}_.Tensor"] = _binary(_name, True)
for _name in ("relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "hardtanh", "leaky_relu",
              "elu", "mish", "dropout", "rsqrt", "sqrt", "exp", "neg"):
    RULES[f"aten.{_name}.default"] = _unary
for _name in ("relu_", "gelu_", "silu_", "sigmoid_", "tanh_", "hardswish_", "hardsigmoid_", "hardtanh_",
              "leaky_relu_", "elu_", "mish_", "dropout_"):
    RULES[f"aten.{_name}.default"] = _unary_


def run(name: str, func, args: tuple, kwargs: dict) -> Any:
    """``func(*args, **kwargs)`` on meta tensors, by a rule where one covers the call."""
    rule = RULES.get(name)
    if rule is not None and all(a.is_meta for a in args if isinstance(a, torch.Tensor)) \
            and all(a.is_meta for a in kwargs.values() if isinstance(a, torch.Tensor)):  # else the kernel's error
        try:
            return rule(*args, **kwargs)
        except _Unhandled:
            pass
    return func(*args, **kwargs)
