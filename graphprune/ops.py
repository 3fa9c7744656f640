"""Op families: one table of which canonical op ids are convolutions, matrix products,
softmaxes, adds... (in the spirit of tinygrad's ``GroupOp``).

A module that asks "is this node a conv?" reads the answer here, never from a set of its
own, so a new op joins every such test by one edit in one row. Each family is a frozenset
of canonical op ids (``aten.<name>``, ``onnx.<OpType>``, see :mod:`graphprune.ir`); larger
families are unions of smaller ones. Every op listed has a coupling rule
(:mod:`graphprune.rules`); the rules stay keyed by op id, this table only groups them.

Plain data: no torch, no onnx.
"""
from __future__ import annotations


class Ops:
    """Named frozensets of canonical op ids (a namespace, never instantiated)."""

    # ---- an activation contracted with a weight or another activation ----------------------
    Linear = frozenset({"aten.linear", "onnx.Gemm"})  # x @ W.T + b in one op (Gemm: with its transposes)
    MatMul = frozenset({"aten.matmul", "aten.mm", "aten.bmm", "onnx.MatMul"})  # a @ b, operands first
    Einsum = frozenset({"aten.einsum", "onnx.Einsum"})
    # mixture-of-experts rows x per-expert matrices (S, K) x (E, K, N) with offsets: transformers' CPU fallback
    # and torch's kernels
    GroupedMatMul = frozenset({"transformers.grouped_mm_fallback", "aten._grouped_mm", "aten.grouped_mm"})
    # the products that can carry a batch of attention heads (mm is 2-D only)
    BatchedMatMul = (MatMul - {"aten.mm"}) | Einsum
    # bias + a @ b in one op, the product's operands at inputs 1 and 2 (Bloom's alibi.baddbmm(q, k))
    BatchedAddMatMul = frozenset({"aten.baddbmm"})
    Conv = frozenset({"aten.conv1d", "aten.conv2d", "aten.conv3d", "onnx.Conv"})  # not transposed

    # ---- attention --------------------------------------------------------------------------
    Attention = frozenset({"aten.scaled_dot_product_attention"})  # fused: q, k, v are its first inputs
    Softmax = frozenset({"aten.softmax", "aten._softmax", "aten._safe_softmax", "onnx.Softmax"})

    # ---- normalisation ------------------------------------------------------------------------
    BatchNorm = frozenset({"aten.batch_norm", "aten._native_batch_norm_legit_no_training",
                           "aten._native_batch_norm_legit", "onnx.BatchNormalization"})  # weight is input 1

    # ---- elementwise ----------------------------------------------------------------------------
    Add = frozenset({"aten.add", "aten.add_", "onnx.Add"})
    Sub = frozenset({"aten.sub", "aten.sub_", "onnx.Sub"})
    # in place too: Falcon scales its scores by ``scores /= math.sqrt(head_dim)``
    Scale = frozenset({"aten.mul", "aten.div", "aten.mul_", "aten.div_", "onnx.Mul", "onnx.Div"})
    Neg = frozenset({"aten.neg", "onnx.Neg"})
    Mask = frozenset({"aten.masked_fill", "aten.masked_fill_", "aten.where", "onnx.Where"})
    Cast = frozenset({"aten.to", "aten._to_copy", "aten.type_as", "onnx.Cast"})
    Copy = frozenset({"aten.clone", "aten.contiguous", "onnx.Identity"})  # paddle2onnx names outputs through Identity
    Dropout = frozenset({"aten.dropout", "onnx.Dropout"})
    # may hand back their very input tensor (a same-dtype .to(), .contiguous() of a contiguous tensor)
    MayAlias = frozenset({"aten.to", "aten._to_copy", "aten.alias", "aten.contiguous"})

    # ---- movement: the same elements in another shape, order or window --------------------------
    Reshape = frozenset({"aten.view", "aten.reshape", "aten._unsafe_view", "onnx.Reshape"})
    Movement = Reshape | {
        "aten.permute", "aten.transpose", "aten.t", "aten.expand", "aten.squeeze", "aten.unsqueeze",
        "aten.flatten", "aten.unflatten", "aten.roll", "aten.slice", "aten.narrow", "aten.select",
        "aten.constant_pad_nd", "aten.pad",
        "onnx.Transpose", "onnx.Expand", "onnx.Squeeze", "onnx.Unsqueeze", "onnx.Flatten", "onnx.Slice", "onnx.Pad"}

    # ---- properties ---------------------------------------------------------------------------------
    # a zero tensor comes out zero whatever the other operands (a divisor must not be the zero one)
    KeepsZero = Scale | Neg | Movement | Copy | Cast | Dropout | MayAlias
    # what an attention score tensor may pass between its q.k product and the softmax, and between
    # the softmax and the product with v: a scale, a mask or bias (MPNet adds its position bias in
    # place), a soft cap (Gemma 2: cap * tanh(scores / cap)), casts, dropout, copies, reshapes
    # XGLM, OPT: a floor on the scores before the softmax (torch.max(scores, finfo.min))
    ScorePath = Scale | Add | Sub | Mask | Cast | Dropout | Copy | Reshape | {"aten.tanh", "onnx.Tanh"} | {
        "aten.max", "aten.min", "aten.maximum", "aten.minimum", "aten.clamp", "aten.clamp_min", "aten.clamp_max",
        "onnx.Max", "onnx.Min", "onnx.Clip"}
    # attention sinks (GPT-OSS): a learnt logit per head joins the scores before the softmax, and its column
    # is sliced off after; scores -> cat -> softmax -> slice -> @ v is still one attention site
    SinkJoin = frozenset({"aten.cat", "onnx.Concat"})
    SinkDrop = frozenset({"aten.slice", "onnx.Slice"})
    Lookup = frozenset({"aten.index", "aten.index_select", "aten.embedding", "onnx.Gather"})  # rows picked by index


def families() -> dict[str, frozenset[str]]:
    """Family name -> its op ids, every family of :class:`Ops`."""
    return {k: v for k, v in vars(Ops).items() if isinstance(v, frozenset)}


def aten(family: frozenset[str]) -> tuple[str, ...]:
    """A family's aten ops, sorted: for a rule that registers the aten spellings in one line
    (ONNX ops of the family take their arguments another way)."""
    return tuple(sorted(op for op in family if op.startswith("aten.")))
