"""Tiny random-init Hugging Face ``diffusers`` models: the diffusion suite.

Each entry builds the class a user would load (UNets, VAE, DiT, PixArt, SD3, Flux, ControlNet)
from a small config, so the suite runs in seconds on a CPU; nothing is downloaded. ``inputs(name,
seed)`` gives (args, kwargs) for the forward: seed 0 is the example a prune traces, other seeds
are fresh inputs to check the pruned model on.
"""
from __future__ import annotations

from typing import Callable

import torch

UNET = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8)


def _unet2d(D):
    return D.UNet2DModel(sample_size=16, in_channels=3, out_channels=3, attention_head_dim=8, **UNET,
                         down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"))


def _unet2d_cond(D):
    return D.UNet2DConditionModel(sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=32,
                                  attention_head_dim=8, **UNET, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                  up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))


def _unet3d(D):
    return D.UNet3DConditionModel(sample_size=16, in_channels=4, out_channels=4, cross_attention_dim=32,
                                  attention_head_dim=8, **UNET, down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
                                  up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"))


def _vae(D):
    return D.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=16, **UNET,
                           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)


def _dit(D):
    return D.DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                   num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10,
                                   norm_num_groups=8)


def _pixart(D):
    return D.PixArtTransformer2DModel(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                                      num_layers=2, sample_size=8, patch_size=2, cross_attention_dim=32,
                                      caption_channels=24, norm_num_groups=8)


def _sd3(D):
    return D.SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                   num_attention_heads=4, joint_attention_dim=32, caption_projection_dim=32,
                                   pooled_projection_dim=16, out_channels=4, pos_embed_max_size=16)


def _flux(D):
    return D.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                    attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                    pooled_projection_dim=16, axes_dims_rope=(4, 6, 6))


def _controlnet(D):
    return D.ControlNetModel(in_channels=4, cross_attention_dim=32, attention_head_dim=8, **UNET,
                             conditioning_embedding_out_channels=(8, 16),
                             down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"))


def _unet1d(D):
    return D.UNet1DModel(sample_size=32, in_channels=2, out_channels=2, extra_in_channels=16, block_out_channels=(32, 64),
                         time_embedding_dim=16, down_block_types=("DownBlock1DNoSkip", "DownBlock1D"),
                         up_block_types=("UpBlock1D", "UpBlock1DNoSkip"), mid_block_type="UNetMidBlock1D",
                         out_block_type=None, act_fn="silu", use_timestep_embedding=False, flip_sin_to_cos=False,
                         time_embedding_type="fourier", layers_per_block=1)


MODELS: dict[str, Callable] = {
    "unet2d": _unet2d, "unet2d-cond": _unet2d_cond, "unet3d-cond": _unet3d, "vae": _vae,
    "vae-decoder": lambda D: _vae(D).decoder, "dit": _dit, "pixart": _pixart, "sd3": _sd3, "flux": _flux,
    "controlnet": _controlnet, "unet1d": _unet1d,
}


def build(name: str) -> torch.nn.Module:
    import diffusers

    torch.manual_seed(0)
    return MODELS[name](diffusers).eval()


def inputs(name: str, seed: int = 0) -> tuple[tuple, dict]:
    """(args, kwargs) of the forward at batch 1; each seed draws other values (timesteps included)."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)
    t = torch.tensor([10 + 37 * seed])
    if name in ("unet2d-cond", "controlnet"):
        extra = (r(1, 3, 32, 32),) if name == "controlnet" else ()
        return (r(1, 4, 16, 16), t, r(1, 7, 32)) + extra, {}
    if name == "unet3d-cond":
        return (r(1, 4, 2, 16, 16), t, r(1, 7, 32)), {}
    if name == "unet2d":
        return (r(1, 3, 16, 16), t), {}
    if name == "vae":
        return (r(1, 3, 16, 16),), {}
    if name == "vae-decoder":
        return (r(1, 4, 8, 8),), {}
    if name == "dit":
        return (r(1, 4, 8, 8), t, torch.tensor([1 + seed % 5])), {}
    if name == "pixart":
        return (r(1, 4, 8, 8), r(1, 7, 24)), {"timestep": t, "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    if name == "sd3":
        return (), {"hidden_states": r(1, 4, 8, 8), "encoder_hidden_states": r(1, 7, 32),
                    "pooled_projections": r(1, 16), "timestep": t}
    if name == "flux":
        ids = torch.stack([torch.zeros(16), torch.arange(16) // 4, torch.arange(16) % 4], 1).float()
        return (), {"hidden_states": r(1, 16, 16), "encoder_hidden_states": r(1, 7, 32), "pooled_projections": r(1, 16),
                    "timestep": torch.tensor([0.5 + 0.1 * seed]), "img_ids": ids, "txt_ids": torch.zeros(7, 3)}
    if name == "unet1d":
        return (r(1, 2, 32), t), {}
    raise KeyError(f"unknown diffusion model {name!r}; the suite has {sorted(MODELS)}")
