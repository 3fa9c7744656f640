"""ResNet-18 (BasicBlock) and ResNet-50 (Bottleneck), torchvision layout.

Shortcuts that change shape use a 1x1 conv + BN ("option B"), so every stage
starts with a projection shortcut and the remaining blocks use identity adds.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._init import check_config, image_input, randomize_norms


def conv_bn(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    # bias=False because the following BN has its own shift.
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    # 1x1 reduce -> 3x3 (stride here, "ResNet v1.5") -> 1x1 expand by 4.
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """Generic ResNet trunk; `block_kwargs` lets resnext.py reuse it with grouped blocks."""

    def __init__(
        self,
        block: type,
        layers: Sequence[int],
        planes: Sequence[int] = (64, 128, 256, 512),
        stem_width: int = 64,
        num_classes: int = 1000,
        block_kwargs: Optional[dict] = None,
    ):
        super().__init__()
        block_kwargs = block_kwargs or {}
        # Stem: 7x7/2 conv + 3x3/2 max-pool (total stride 4).
        self.conv1 = nn.Conv2d(3, stem_width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = stem_width
        stages = []
        for i, (n, p) in enumerate(zip(layers, planes)):
            stride = 1 if i == 0 else 2
            cout = p * block.expansion
            # Projection shortcut whenever the block changes resolution or width.
            down = conv_bn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else None
            blocks = [block(cin, p, stride, down, **block_kwargs)]
            blocks += [block(cout, p, 1, None, **block_kwargs) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)  # flatten(1): no hard-coded width
        return self.fc(x)


# "small" keeps the real block counts of ResNet-18 but tiny widths.
# The ResNet-50 small config uses 2 blocks/stage (1 projection + 1 identity block).
_R18 = {
    "small": dict(layers=(2, 2, 2, 2), planes=(4, 8, 12, 16), stem_width=8, num_classes=10),
    "full": dict(layers=(2, 2, 2, 2), planes=(64, 128, 256, 512), stem_width=64, num_classes=1000),
}
_R50 = {
    "small": dict(layers=(2, 2, 2, 2), planes=(2, 4, 6, 8), stem_width=8, num_classes=10),
    "full": dict(layers=(3, 4, 6, 3), planes=(64, 128, 256, 512), stem_width=64, num_classes=1000),
}
_INPUT_SIZE = {"small": 32, "full": 224}


def resnet18(config: str = "small") -> ResNet:
    model = ResNet(BasicBlock, **check_config(config, _R18))
    return randomize_norms(model) if config == "small" else model


def resnet50(config: str = "small") -> ResNet:
    model = ResNet(Bottleneck, **check_config(config, _R50))
    return randomize_norms(model) if config == "small" else model


def example_inputs(config: str = "small", batch: int = 1) -> tuple:
    return (image_input(batch, 3, check_config(config, _INPUT_SIZE)),)
