"""MobileNetV2: inverted residuals (1x1 expand -> 3x3 depthwise -> 1x1 linear project)."""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._init import check_config, image_input, randomize_norms


def conv_bn_relu6(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(inplace=False),  # ReLU6 as in the paper; not inplace so export sees a pure graph
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = cin * expand_ratio
        # Residual only when the block preserves shape (decided once, at build time).
        self.use_res_connect = stride == 1 and cin == cout
        layers = []
        if expand_ratio != 1:  # t=1 blocks skip the expansion conv
            layers.append(conv_bn_relu6(cin, hidden, 1))
        layers.append(conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden))  # depthwise
        # Linear bottleneck: no activation after the projection.
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, setting: Sequence[Sequence[int]], stem_width: int, last_width: int, num_classes: int):
        super().__init__()
        layers = [conv_bn_relu6(3, stem_width, 3, 2)]
        cin = stem_width
        for t, c, n, s in setting:  # expansion, out channels, repeats, first stride
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(conv_bn_relu6(cin, last_width, 1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(last_width, num_classes)  # dropout omitted (deterministic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


_CONFIGS = {
    # small still has a t=1 block, stride-2 blocks and shape-preserving residual blocks.
    "small": dict(
        setting=[[1, 4, 1, 1], [6, 8, 2, 2], [6, 12, 2, 2], [6, 16, 2, 1]],
        stem_width=8, last_width=32, num_classes=10,
    ),
    "full": dict(
        setting=[[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2],
                 [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]],
        stem_width=32, last_width=1280, num_classes=1000,
    ),
}
_INPUT_SIZE = {"small": 32, "full": 224}


def mobilenetv2(config: str = "small") -> MobileNetV2:
    model = MobileNetV2(**check_config(config, _CONFIGS))
    return randomize_norms(model) if config == "small" else model


def example_inputs(config: str = "small", batch: int = 1) -> tuple:
    return (image_input(batch, 3, check_config(config, _INPUT_SIZE)),)
