"""Small residual CNN with squeeze-and-excitation (SE) channel gating."""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._init import check_config, image_input, randomize_norms


class SqueezeExcite(nn.Module):
    """s = sigmoid(fc2(relu(fc1(avgpool(x))))); return x * s.

    fc1 is a 1x1 conv (stays 4-D), fc2 is an nn.Linear (needs flatten + view back),
    so both forms of SE appear in the zoo. No sizes stored: the view uses -1.
    """

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.fc2 = nn.Linear(reduced, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)          # squeeze: B,C,1,1
        s = F.relu(self.fc1(s)).flatten(1)      # B,R
        s = torch.sigmoid(self.fc2(s))           # B,C
        return x * s.view(x.shape[0], -1, 1, 1)  # excite: per-channel gate


class SEBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, reduction: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.se = SqueezeExcite(cout, max(cout // reduction, 2))
        # 1x1 conv+BN shortcut only where the shape changes.
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))  # SE gates the residual branch before the add
        return F.relu(out + identity)


class SECNN(nn.Module):
    def __init__(self, widths: Sequence[int], blocks: Sequence[int], reduction: int, num_classes: int, stem_stride: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stem_stride, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        layers = []
        cin = widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                layers.append(SEBlock(cin, w, 2 if (j == 0 and i > 0) else 1, reduction))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


_CONFIGS = {
    "small": dict(widths=(8, 12, 16), blocks=(2, 1, 2), reduction=4, num_classes=10),
    # SE-ResNet-18-like widths.
    "full": dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), reduction=16, num_classes=1000, stem_stride=2),
}
_INPUT_SIZE = {"small": 32, "full": 224}


def se_cnn(config: str = "small") -> SECNN:
    model = SECNN(**check_config(config, _CONFIGS))
    return randomize_norms(model) if config == "small" else model


def example_inputs(config: str = "small", batch: int = 1) -> tuple:
    return (image_input(batch, 3, check_config(config, _INPUT_SIZE)),)
