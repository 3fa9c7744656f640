"""Diffusion models from Hugging Face diffusers, built random-initialised from tiny configs (no
weights are downloaded): the default call prunes them, exactly, with nothing model-specific passed."""
from __future__ import annotations

import torch

import graphprune as gp

diffusers = __import__("diffusers")


def _unet() -> torch.nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8).eval()


def test_a_ddpm_unet_loses_its_macs_to_the_default_call():
    """A DDPM UNet's MACs are in its ResNet blocks' convolutions, whose widths sit under GroupNorm:
    whole norm groups are cut (conv_group, exact), beside the attention heads. Its Upsample2D asserts
    its input width against ``self.channels``, which the rewrite sets to the pruned width."""
    model = _unet()
    args = (torch.randn(1, 3, 16, 16), torch.tensor([3]))
    macs = gp.count_macs(model, args)
    pruned, report = gp.prune(model, args, budget={"macs": 0.7}, runtime=None, verify=True)
    assert gp.count_macs(pruned, args) <= 0.72 * macs
    assert report.oracle.verdict == "PASS" and len(report.oracle.checked_groups) >= 10
    assert "conv_group" in set(report.kinds.values())
    up = pruned.up_blocks[0].upsamplers[0]
    assert up.channels == up.conv.in_channels < 64
    other = (torch.randn(2, 3, 16, 16), torch.tensor([500, 7]))
    assert pruned(*other).sample.shape == (2, 3, 16, 16)
