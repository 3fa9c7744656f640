"""U-Net: conv encoder, ConvTranspose2d decoder, encoder features concatenated
into the decoder (torch.cat skips). Padded 3x3 convs so the skip shapes match
without cropping (the common "same-padding + BN" variant).
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ._init import check_config, image_input, randomize_norms


class DoubleConv(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(x)))


class Up(nn.Module):
    def __init__(self, cin: int, skip: int, cout: int):
        super().__init__()
        # Learned 2x upsampling that also halves channels, then fuse with the skip.
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = DoubleConv(cin // 2 + skip, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], 1))


class UNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int]):
        super().__init__()
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(DoubleConv(a, b) for a, b in zip(widths[:-1], widths[1:]))
        rev = list(reversed(widths))
        self.ups = nn.ModuleList(Up(a, b, b) for a, b in zip(rev[:-1], rev[1:]))
        self.outc = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inc(x)
        skips = []
        for down in self.downs:
            skips.append(x)
            x = down(F.max_pool2d(x, 2))
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.outc(x)


_CONFIGS = {
    "small": dict(in_channels=3, num_classes=2, widths=(4, 8, 12, 16)),
    # Classic U-Net widths 64..1024 (4 down / 4 up), ~31.0M params.
    "full": dict(in_channels=3, num_classes=2, widths=(64, 128, 256, 512, 1024)),
}
_INPUT_SIZE = {"small": 32, "full": 256}


def unet(config: str = "small") -> UNet:
    model = UNet(**check_config(config, _CONFIGS))
    return randomize_norms(model) if config == "small" else model


def example_inputs(config: str = "small", batch: int = 1) -> tuple:
    return (image_input(batch, 3, check_config(config, _INPUT_SIZE)),)
