"""DenseNet-121: dense blocks concatenate all previous feature maps (torch.cat),
transitions halve channels (1x1 conv) and resolution (2x2 avg-pool).
All convs use pre-activation order BN -> ReLU -> Conv.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._init import check_config, image_input, randomize_norms


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)  # bottleneck
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(self.norm1(x)))
        return self.conv2(F.relu(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, num_layers: int, cin: int, growth: int, bn_size: int):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(cin + i * growth, growth, bn_size) for i in range(num_layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            # Each layer sees the concatenation of the block input and all earlier outputs.
            features.append(layer(torch.cat(features, 1)))
        return torch.cat(features, 1)


class Transition(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)
        self.pool = nn.AvgPool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(F.relu(self.norm(x))))


class DenseNet(nn.Module):
    def __init__(self, growth: int, block_config: Sequence[int], init_features: int, bn_size: int, num_classes: int):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, init_features, 7, 2, 3, bias=False),
            nn.BatchNorm2d(init_features),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        blocks = []
        c = init_features
        for i, n in enumerate(block_config):
            blocks.append(DenseBlock(n, c, growth, bn_size))
            c += n * growth
            if i != len(block_config) - 1:  # no transition after the last block
                blocks.append(Transition(c, c // 2))
                c //= 2
        self.blocks = nn.Sequential(*blocks)
        self.norm_final = nn.BatchNorm2d(c)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = F.relu(self.norm_final(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


_CONFIGS = {
    "small": dict(growth=4, block_config=(2, 3, 2, 2), init_features=8, bn_size=2, num_classes=10),
    "full": dict(growth=32, block_config=(6, 12, 24, 16), init_features=64, bn_size=4, num_classes=1000),
}
_INPUT_SIZE = {"small": 32, "full": 224}


def densenet121(config: str = "small") -> DenseNet:
    model = DenseNet(**check_config(config, _CONFIGS))
    return randomize_norms(model) if config == "small" else model


def example_inputs(config: str = "small", batch: int = 1) -> tuple:
    return (image_input(batch, 3, check_config(config, _INPUT_SIZE)),)
