"""ResNeXt: ResNet bottleneck whose 3x3 conv is grouped (cardinality C, width d).

Reuses the ResNet trunk from resnet.py; only the block differs. Full config is
ResNeXt-50 32x4d.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ._init import check_config, image_input, randomize_norms
from .resnet import ResNet


class ResNeXtBottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        cin: int,
        planes: int,
        stride: int = 1,
        downsample: Optional[nn.Module] = None,
        groups: int = 32,
        width_per_group: int = 4,
        base_planes: int = 64,
    ):
        super().__init__()
        # Inner width grows with the stage: groups * width_per_group at the first
        # stage (planes == base_planes), doubling each stage (torchvision formula).
        width = groups * width_per_group * planes // base_planes
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False)  # grouped 3x3
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


# small: 4 groups x 2 channels per group at stage 1 (so groups are not depthwise).
_CONFIGS = {
    "small": dict(
        layers=(2, 2, 2, 2), planes=(4, 8, 16, 32), stem_width=8, num_classes=10,
        block_kwargs=dict(groups=4, width_per_group=2, base_planes=4),
    ),
    "full": dict(
        layers=(3, 4, 6, 3), planes=(64, 128, 256, 512), stem_width=64, num_classes=1000,
        block_kwargs=dict(groups=32, width_per_group=4, base_planes=64),
    ),
}
_INPUT_SIZE = {"small": 32, "full": 224}


def resnext(config: str = "small") -> ResNet:
    model = ResNet(ResNeXtBottleneck, **check_config(config, _CONFIGS))
    return randomize_norms(model) if config == "small" else model


def example_inputs(config: str = "small", batch: int = 1) -> tuple:
    return (image_input(batch, 3, check_config(config, _INPUT_SIZE)),)
