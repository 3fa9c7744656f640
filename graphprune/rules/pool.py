"""Pooling, resampling and padding: channels pass through one by one; the
spatial dims they act on are positions, frozen."""
from __future__ import annotations

from ..ir import Node
from ..reasons import CHANNEL_MIXING, SPATIAL
from .registry import RuleContext, register


def _spatial(node: Node, ctx: RuleContext, n_spatial: int, window: bool = False) -> None:
    x = node.args[0].name
    rank = ctx.rank(x)
    alone = {rank - n_spatial + i for i in range(n_spatial) if window and _alone(node, ctx, n_spatial, i)}
    for out in node.outputs:  # *_with_indices: the indices follow the same layout
        ctx.tie_dims(x, out, range(rank - n_spatial), range(rank - n_spatial))
        for d in range(rank - n_spatial, rank):
            if d in alone:
                ctx.tie(ctx.s(x, d), ctx.s(out, d))
            else:
                ctx.freeze(ctx.s(out, d), SPATIAL, f"spatial positions at {node.where()}")
    for d in range(rank - n_spatial, rank):
        if d not in alone:
            ctx.freeze(ctx.s(x, d), SPATIAL, f"spatial positions at {node.where()}")


def _alone(node: Node, ctx: RuleContext, n_spatial: int, i: int) -> bool:
    """Whether a pool's window takes each position of its ``i``-th spatial dim alone (kernel 1, stride 1, no
    padding): speechbrain's CRDNN pools a (batch, time, channels, freq) tensor with a (1, 2) kernel, its channels
    in the first window dim, each pooled on its own."""
    def at(index: int, name: str, default):
        v = ctx.arg(node, index, name, default)
        v = list(v) if isinstance(v, (list, tuple)) else [v]
        return v[i] if len(v) == n_spatial else v[0] if len(v) == 1 else None

    kernel = at(1, "kernel_size", None)
    return kernel == 1 and (at(2, "stride", None) or kernel) == 1 and at(3, "padding", 0) == 0


_POOLS = ["max_pool{}d", "max_pool{}d_with_indices", "avg_pool{}d", "adaptive_avg_pool{}d",
          "adaptive_max_pool{}d", "_adaptive_avg_pool{}d", "lp_pool{}d", "fractional_max_pool{}d",
          "reflection_pad{}d", "replication_pad{}d", "upsample_nearest{}d", "_upsample_nearest_exact{}d",
          "upsample_bilinear{}d", "upsample_bicubic{}d", "_upsample_bilinear{}d_aa", "upsample_linear{}d",
          "upsample_trilinear{}d"]


_WINDOWS = ("max_pool{}d", "avg_pool{}d")  # (x, kernel, stride, padding, ...); indices of *_with_indices count positions


def _register_pools() -> None:
    for pattern in _POOLS:
        for k in (1, 2, 3):
            name = "aten." + pattern.format(k)
            register(name)(lambda node, ctx, k=k, w=pattern in _WINDOWS: _spatial(node, ctx, k, w))


_register_pools()


@register("aten.pad", "aten.constant_pad_nd")
def _pad(node: Node, ctx: RuleContext) -> None:
    # pad lists (left, right) pairs from the last dim backwards; only padded dims change.
    x, out = node.args[0].name, node.outputs[0]
    rank = ctx.rank(x)
    pads = list(node.args[1])
    padded = {rank - 1 - i for i in range(len(pads) // 2) if pads[2 * i] or pads[2 * i + 1]}
    for d in range(rank):
        if d in padded:
            reason = f"padded dim at {node.where()}"
            ctx.freeze(ctx.s(x, d), SPATIAL, reason)
            ctx.freeze(ctx.s(out, d), SPATIAL, reason)
        else:
            ctx.tie(ctx.s(x, d), ctx.s(out, d))


@register("aten.pixel_shuffle", "aten.pixel_unshuffle")
def _pixel_shuffle(node: Node, ctx: RuleContext) -> None:
    # Channel c*r*r + i*r + j moves to a spatial offset: channel = prod(c, r, r).
    x, out = node.args[0].name, node.outputs[0]
    r = node.args[1]
    src, dst = (x, out) if node.op.endswith("pixel_shuffle") else (out, x)
    rr = ctx.virtual(r * r, "shuffle")
    ctx.freeze(rr, SPATIAL, f"sub-pixel offsets at {node.where()}")
    ctx.factor(ctx.s(src, -3), [ctx.s(dst, -3), rr])
    ctx.tie_dims(x, out, range(ctx.rank(x) - 3), range(ctx.rank(x) - 3))
    for d in (-2, -1):
        ctx.freeze(ctx.s(x, d), SPATIAL, f"spatial positions at {node.where()}")
        ctx.freeze(ctx.s(out, d), SPATIAL, f"spatial positions at {node.where()}")



@register("onnx.MaxPool", "onnx.AveragePool", "onnx.LpPool", "onnx.GlobalAveragePool", "onnx.GlobalMaxPool",
          "onnx.GlobalLpPool", "onnx.Resize", "onnx.Upsample", "onnx.MaxUnpool")
def _onnx_spatial(node: Node, ctx: RuleContext) -> None:
    # NCHW: batch and channels pass through, every later dim is spatial.
    _spatial(node, ctx, ctx.rank(node.args[0]) - 2)


@register("onnx.Pad")
def _onnx_pad(node: Node, ctx: RuleContext) -> None:
    x, out = node.args[0].name, node.outputs[0]
    rank = ctx.rank(x)
    for d in range(rank):
        if ctx.shape(x)[d] == ctx.shape(out)[d] and _pad_free(node, ctx, d, rank):
            ctx.tie(ctx.s(x, d), ctx.s(out, d))
        else:
            reason = f"padded dim at {node.where()}"
            ctx.freeze(ctx.s(x, d), SPATIAL, reason)
            ctx.freeze(ctx.s(out, d), SPATIAL, reason)


def _pad_free(node: Node, ctx: RuleContext, d: int, rank: int) -> bool:
    pads = ctx.graph.values[node.args[1].name].data if len(node.args) > 1 and node.args[1] is not None else \
        node.kwargs.get("pads")
    axes = ctx.graph.values[node.args[3].name].data if len(node.args) > 3 and node.args[3] is not None else None
    if pads is None:
        return False  # computed pads: cannot tell which dims move
    axes = [a % rank for a in axes] if axes else list(range(rank))
    if d not in axes:
        return True
    j = axes.index(d)
    return pads[j] == 0 and pads[j + len(axes)] == 0


@register("onnx.DepthToSpace", "onnx.SpaceToDepth", "onnx.LRN")
def _onnx_channel_mixing(node: Node, ctx: RuleContext) -> None:
    for name in [node.args[0].name] + node.outputs:
        ctx.freeze_value(name, CHANNEL_MIXING, f"channels rearranged or normalised across by {node.where()}")



@register("aten.grid_sampler", "aten.grid_sampler_2d", "aten.grid_sampler_3d", "onnx.GridSample")
def _grid_sample(node: Node, ctx: RuleContext) -> None:
    # out[n, c, *p] samples x[n, c] at grid[n, *p]: each channel alone (a zeroed one samples zeros under every
    # interpolation and padding mode), as deformable attention (RT-DETR, Deformable DETR) samples each head's
    # values. x's own positions are read at computed coordinates: positions, frozen; so is the grid's coordinate dim.
    x, grid, out = node.args[0].name, node.args[1].name, node.outputs[0]
    rank = ctx.rank(x)
    ctx.tie_dims(x, out, [0, 1], [0, 1])
    ctx.tie(ctx.s(grid, 0), ctx.s(out, 0))
    ctx.tie_dims(grid, out, range(1, rank - 1), range(2, rank))
    ctx.freeze(ctx.s(grid, rank - 1), SPATIAL, f"sampling coordinates at {node.where()}")
    for d in range(2, rank):
        ctx.freeze(ctx.s(x, d), SPATIAL, f"positions sampled at computed coordinates at {node.where()}")


@register("aten.unfold")
def _windows(node: Node, ctx: RuleContext) -> None:
    # Tensor.unfold(dim, size, step), local attention's look-around: dim becomes the windows' starts and a new
    # last dim the offsets inside one (neither a channel); every other dim is copied as it is.
    x, out = node.args[0].name, node.outputs[0]
    rank = ctx.rank(x)
    dim = ctx.arg(node, 1, "dimension") % rank
    for d in range(rank):
        if d == dim:
            for name in (x, out):
                ctx.freeze(ctx.s(name, d), SPATIAL, f"positions cut into windows at {node.where()}")
        else:
            ctx.tie(ctx.s(x, d), ctx.s(out, d))
    ctx.hide(ctx.s(out, rank), f"offsets inside a window at {node.where()}")


@register("aten.im2col", "aten.col2im")
def _patches(node: Node, ctx: RuleContext) -> None:
    # F.unfold: (N, C, *spatial) -> (N, C * kernel, L), channel-major, and F.fold back (overlaps summed per
    # channel): the channel is the outer factor, the kernel offsets the inner one (no channel), positions frozen.
    x, out = node.args[0].name, node.outputs[0]
    images, cols = (x, out) if node.op == "aten.im2col" else (out, x)
    n_spatial = 2
    lead = ctx.rank(images) - n_spatial - 1  # 1 with a batch, 0 without
    size = int(ctx.shape(cols)[lead]) // int(ctx.shape(images)[lead])
    kernel = ctx.virtual(size, "kernel offsets")
    ctx.hide(kernel, f"kernel offsets at {node.where()}")
    ctx.factor(ctx.s(cols, lead), [ctx.s(images, lead), kernel])
    ctx.tie_dims(images, cols, range(lead), range(lead))
    for d in range(lead + 1, ctx.rank(images)):
        ctx.freeze(ctx.s(images, d), SPATIAL, f"spatial positions at {node.where()}")
    ctx.freeze(ctx.s(cols, lead + 1), SPATIAL, f"patch positions at {node.where()}")
