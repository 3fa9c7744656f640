"""Every exact rewrite ``fuse=True`` makes for onnxruntime, in the order they depend on."""
from __future__ import annotations

import onnx

from .onnx_affine import fold_conv_affine
from .onnx_channel_affine import affine_as_batchnorm
from .onnx_fuse import Fused, fuse_activations
from .onnx_softmax import softmax_ahead_of_transpose
from .onnx_split_conv import split_conv_pieces
from .onnx_subnormal import flush_subnormal_weights


def rewrite_for_onnxruntime(model: onnx.ModelProto) -> Fused:
    """Rewrite ``model`` in place (each module's doc says why and why it is exact); returns what changed."""
    fused = fuse_activations(model)  # spelled activations first: the later passes see single ops
    fused.softmax = softmax_ahead_of_transpose(model)
    fused.affine = fold_conv_affine(model)  # before the flush: scaling may make subnormals
    fused.channel_affine = affine_as_batchnorm(model)  # what did not fold
    fused.split_conv = split_conv_pieces(model)  # after the folds: a Split's chain then ends at its Conv
    fused.subnormal = flush_subnormal_weights(model)  # last: it sees every weight the others wrote
    return fused
