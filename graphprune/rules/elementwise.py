"""Elementwise and broadcasting ops: each output element depends on the matching
input elements only, so every dim ties the input dim it lines up with.

Ops with f(0) != 0 (sigmoid, exp, ...) are still exact under the oracle, which
zeroes pruned channels at every value they reach.
"""
from __future__ import annotations

from ..ir import Node
from ..reasons import INDEXED
from .registry import RuleContext, defbroadcasting, defelementwise, register

_UNARY = (
    "relu relu_ relu6 gelu gelu_ silu silu_ sigmoid sigmoid_ tanh tanh_ hardtanh hardtanh_ hardswish "
    "hardswish_ hardsigmoid hardsigmoid_ leaky_relu leaky_relu_ elu elu_ selu celu mish softplus "
    "softsign logsigmoid neg abs exp log log1p sqrt rsqrt reciprocal sin cos erf square sign "
    "floor ceil round trunc dropout dropout_ feature_dropout feature_dropout_ alpha_dropout_ feature_alpha_dropout "
    "feature_alpha_dropout_ "
    "alpha_dropout alias clone contiguous detach detach_ _to_copy to type_as lift_fresh lift_fresh_copy logical_not "
    "bitwise_not isnan isinf zeros_like ones_like full_like empty_like rand_like randn_like "
    "nan_to_num threshold expm1 sinh cosh atan asin acos tan real imag conj conj_physical _conj angle "
    # in place, as F.relu6(x, inplace=True) records (pytorchcv's h-swish: 20 groups of MobileNetV3 were frozen)
    "relu6_ selu_ celu_ mish_ neg_ abs_ exp_ log_ log1p_ sqrt_ rsqrt_ reciprocal_ sin_ cos_ erf_ sign_ floor_ "
    "ceil_ round_ trunc_ threshold_ nan_to_num_ expm1_ tan_ atan_ "
    # torchlibrosa's power_to_db is 10 * log10(x): the whole mel front end was frozen
    "log2 log10 exp2 erfc erfinv lgamma digamma logit sinc frac asinh acosh atanh sgn positive "
    "log2_ log10_ exp2_ erfc_ logit_ frac_ square_"
).split()
_BINARY = (
    "add add_ sub sub_ rsub mul mul_ div div_ maximum minimum eq ne lt gt le ge masked_fill "
    "masked_fill_ logical_and logical_or logical_xor bitwise_and bitwise_or floor_divide remainder "
    "fmod atan2 lerp addcmul addcdiv copy copy_ hypot xlogy pow clamp clamp_ clamp_min clamp_max polar complex "
    "clamp_min_ clamp_max_ pow_ fmod_ remainder_ lerp_ addcmul_ addcdiv_ rsub_ floor_divide_ "
    "true_divide true_divide_ float_power logaddexp logaddexp2 copysign heaviside fmax fmin bitwise_xor"
).split()

defelementwise(*(f"aten.{op}" for op in _UNARY))
defbroadcasting(*(f"aten.{op}" for op in _BINARY))


@register("aten.where")
def _where(node: Node, ctx: RuleContext) -> None:
    if len(node.args) > 1:  # where(cond, a, b): elementwise
        ctx.tie_broadcast(node.outputs[0], [r.name for r in ctx.tensor_args(node)])
        return
    # where(cond) (OneFormer's attention_mask[torch.where(...)] = False): the positions cond holds, one index
    # tensor per dim, as many as the data say: nothing of cond's dims is tied to them
    for out in node.outputs:
        if ctx.rank(out):
            ctx.freeze(ctx.s(out, 0), INDEXED, f"positions chosen by data at {node.where()}")
    cond = node.args[0]
    for d in range(ctx.rank(cond)):  # the positions number cond's dims: cut one and they point elsewhere
        ctx.freeze(ctx.s(cond, d), INDEXED, f"positions returned by {node.where()}")


@register("aten.prelu", "aten._prelu_kernel")
def _prelu(node: Node, ctx: RuleContext) -> None:
    # The slope vector is per channel and aligns with dim 1, not from the right.
    x, w = ctx.tensor_args(node)[:2]
    ctx.tie_broadcast(node.outputs[0], [x.name])
    if ctx.shape(w)[0] != 1:
        ctx.tie(ctx.s(w, 0), ctx.s(x, 1 if ctx.rank(x) > 1 else 0))


# ONNX: unary ops tie their first (data) input only; Clip's min/max and Dropout's
# ratio are scalars. Broadcasting ops tie every input.
defelementwise(*(f"onnx.{op}" for op in (
    "Relu LeakyRelu Sigmoid HardSigmoid HardSwish Gelu Erf Tanh Elu Selu Celu Softplus Softsign Mish "
    "ThresholdedRelu Exp Log Sqrt Reciprocal Neg Abs Not Floor Ceil Round Sign Sin Cos Tan Asin Acos Atan "
    "Sinh Cosh IsNaN IsInf Identity Cast CastLike Clip Dropout Shrink BitwiseNot").split()))
defbroadcasting(*(f"onnx.{op}" for op in (
    "Add Sub Mul Div Pow Max Min Mean Sum Equal Less LessOrEqual Greater GreaterOrEqual And Or Xor Mod "
    "Where PRelu BitwiseAnd BitwiseOr").split()))


@register("aten.glu")
def _glu(node: Node, ctx: RuleContext) -> None:
    # out = a * sigmoid(b), a and b the two halves of x along dim (the conformer's gate): output
    # channel i reads x's channels i and i + C, so both halves share the output's space. A removed
    # channel's halves are both zero in the masked original, and 0 * sigmoid(0) is 0.
    x, out = node.args[0].name, node.outputs[0]
    dim = ctx.arg(node, 1, "dim", -1) % ctx.rank(x)
    others = [d for d in range(ctx.rank(x)) if d != dim]
    ctx.tie_dims(x, out, others, others)
    half = ctx.shape(out)[dim]
    a, b = ctx.virtual(half, "glu first half"), ctx.virtual(half, "glu second half")
    ctx.concat(ctx.s(x, dim), [a, b])
    ctx.tie(a, ctx.s(out, dim))
    ctx.tie(b, ctx.s(out, dim))
