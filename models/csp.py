"""CSP / YOLOv8-style backbone: Conv(BN, SiLU) units, C2f blocks (chunk(2, 1)),
an asymmetric CSP split block (torch.split with two different sizes) and SPPF,
all joined with torch.cat. Classification head as in YOLOv8-cls.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._init import check_config, image_input, randomize_norms


class Conv(nn.Module):
    """Conv2d -> BatchNorm2d -> SiLU (the Ultralytics basic unit)."""

    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True):
        super().__init__()
        self.cv1 = Conv(c, c, 3)
        self.cv2 = Conv(c, c, 3)
        self.add = shortcut  # static flag, fixed at build time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nn.Module):
    """cv1 -> chunk into two halves; each bottleneck feeds on the previous output;
    concatenate [half0, half1, m1, m2, ...] -> cv2. forward reads no size attribute."""

    def __init__(self, cin: int, cout: int, n: int = 1, shortcut: bool = True):
        super().__init__()
        c = cout // 2  # hidden width per half (not stored: forward uses chunk)
        self.cv1 = Conv(cin, 2 * c, 1)
        self.m = nn.ModuleList(Bottleneck(c, shortcut) for _ in range(n))
        self.cv2 = Conv((2 + n) * c, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = list(self.cv1(x).chunk(2, 1))
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class CSPSplit(nn.Module):
    """CSPNet partial block with an *uneven* split: the first `bypass_channels`
    skip the bottlenecks, the remaining `process_channels` go through them.

    forward reads self.bypass_channels and self.process_channels (the two split
    sizes; configs keep them different so they are never confused).
    """

    def __init__(self, cin: int, cout: int, bypass: int, process: int, n: int = 1):
        super().__init__()
        self.bypass_channels = bypass
        self.process_channels = process
        self.cv1 = Conv(cin, bypass + process, 1)
        self.m = nn.Sequential(*(Bottleneck(process, shortcut=False) for _ in range(n)))
        self.cv2 = Conv(bypass + process, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(self.cv1(x), [self.bypass_channels, self.process_channels], 1)
        return self.cv2(torch.cat([a, self.m(b)], 1))


class SPPF(nn.Module):
    """Spatial pyramid pooling (fast): three chained 5x5 max-pools, concatenated."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        c = cin // 2
        self.cv1 = Conv(cin, c, 1)
        self.pool = nn.MaxPool2d(5, 1, 2)
        self.cv2 = Conv(4 * c, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv1(x)]
        for _ in range(3):
            y.append(self.pool(y[-1]))
        return self.cv2(torch.cat(y, 1))


class CSPNet(nn.Module):
    def __init__(
        self,
        stem_width: int,
        widths: Sequence[int],
        depths: Sequence[int],
        split: Sequence[int],
        split_depth: int,
        head_width: int,
        num_classes: int,
    ):
        super().__init__()
        layers = [Conv(3, stem_width, 3, 2)]
        cin = stem_width
        for w, n in zip(widths, depths):
            layers += [Conv(cin, w, 3, 2), C2f(w, w, n, shortcut=True)]
            cin = w
        layers += [SPPF(cin, cin), CSPSplit(cin, cin, split[0], split[1], split_depth)]
        self.backbone = nn.Sequential(*layers)
        self.head_conv = Conv(cin, head_width, 1)
        self.linear = nn.Linear(head_width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head_conv(self.backbone(x))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


_CONFIGS = {
    "small": dict(stem_width=4, widths=(8, 12, 16, 16), depths=(1, 2, 1, 1), split=(4, 8), split_depth=1,
                  head_width=32, num_classes=10),
    # YOLOv8-L-sized backbone (widths 64..1024, depths 3/6/6/3) with a 1280-wide cls head.
    "full": dict(stem_width=64, widths=(128, 256, 512, 1024), depths=(3, 6, 6, 3), split=(256, 512),
                 split_depth=3, head_width=1280, num_classes=1000),
}
_INPUT_SIZE = {"small": 64, "full": 224}  # small uses 64px so the last stage is still 2x2


def csp(config: str = "small") -> CSPNet:
    model = CSPNet(**check_config(config, _CONFIGS))
    return randomize_norms(model) if config == "small" else model


def example_inputs(config: str = "small", batch: int = 1) -> tuple:
    return (image_input(batch, 3, check_config(config, _INPUT_SIZE)),)
