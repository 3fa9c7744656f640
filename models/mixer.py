"""MLP-Mixer: patch embedding, then blocks of token-mixing MLP (applied across
patches on the transposed tensor) and channel-mixing MLP, pre-LayerNorm.
"""
import torch
from torch import nn

from ._init import check_config, image_input, randomize_norms


class MlpBlock(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MixerBlock(nn.Module):
    def __init__(self, num_tokens: int, dim: int, token_hidden: int, channel_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_tokens = MlpBlock(num_tokens, token_hidden)  # Linear over the token axis
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp_channels = MlpBlock(dim, channel_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Token mixing: B,N,C -> B,C,N so nn.Linear acts on N, then back.
        x = x + self.mlp_tokens(self.norm1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.mlp_channels(self.norm2(x))


class MlpMixer(nn.Module):
    def __init__(self, img_size: int, patch: int, dim: int, depth: int, token_hidden: int, channel_hidden: int,
                 num_classes: int):
        super().__init__()
        num_tokens = (img_size // patch) ** 2
        self.stem = nn.Conv2d(3, dim, patch, stride=patch)
        self.blocks = nn.Sequential(
            *(MixerBlock(num_tokens, dim, token_hidden, channel_hidden) for _ in range(depth))
        )
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x).flatten(2).transpose(1, 2)  # B, N, C
        x = self.norm(self.blocks(x))
        return self.head(x.mean(dim=1))  # global average pool over tokens


_CONFIGS = {
    # 16 tokens; token_hidden (24) and channel_hidden (64) chosen distinct from N and C.
    "small": dict(img_size=32, patch=8, dim=32, depth=2, token_hidden=24, channel_hidden=64, num_classes=10),
    # Mixer-B/16.
    "full": dict(img_size=224, patch=16, dim=768, depth=12, token_hidden=384, channel_hidden=3072,
                 num_classes=1000),
}


def mixer(config: str = "small") -> MlpMixer:
    model = MlpMixer(**check_config(config, _CONFIGS))
    return randomize_norms(model) if config == "small" else model


def example_inputs(config: str = "small", batch: int = 1) -> tuple:
    return (image_input(batch, 3, check_config(config, _CONFIGS)["img_size"]),)
