"""Vision Transformer (ViT-B/16 layout, timm naming): conv patch embedding,
cls token, learned position embedding, pre-norm blocks with fused-qkv MHSA.
"""
import torch
from torch import nn

from ._init import check_config, image_input, randomize_norms


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection.

    forward reads: self.num_heads, self.head_dim (qkv reshape) and self.scale
    (float). B and N come from x.shape; the output merge uses -1.
    """

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)  # layout: [q heads | k heads | v heads]
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N = x.shape[0], x.shape[1]
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each B, H, N, D
        attn = (q @ k.transpose(-2, -1)) * self.scale
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, -1)
        return self.proj(x)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))  # pre-norm residual
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    def __init__(self, img_size: int, patch: int, dim: int, depth: int, num_heads: int, mlp_hidden: int,
                 num_classes: int):
        super().__init__()
        num_patches = (img_size // patch) ** 2
        self.patch_embed = nn.Conv2d(3, dim, patch, stride=patch)  # non-overlapping patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        # In-place normal_ works on the meta device too (no data-dependent init).
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*(Block(dim, num_heads, mlp_hidden) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # B, N, C
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])  # classify from the cls token


_CONFIGS = {
    "small": dict(img_size=32, patch=8, dim=64, depth=2, num_heads=4, mlp_hidden=128, num_classes=10),
    "full": dict(img_size=224, patch=16, dim=768, depth=12, num_heads=12, mlp_hidden=3072, num_classes=1000),
}


def vit(config: str = "small") -> VisionTransformer:
    model = VisionTransformer(**check_config(config, _CONFIGS))
    if config == "small":
        randomize_norms(model)
        nn.init.normal_(model.cls_token, std=0.02)  # make cls token non-negligible for tests
    return model


def example_inputs(config: str = "small", batch: int = 1) -> tuple:
    return (image_input(batch, 3, check_config(config, _CONFIGS)["img_size"]),)
