"""MONAI's medical-imaging networks (3-D convolutions, InstanceNorm without weights, modules registered
twice, einops attention), random weights, through the default call: what a new user's trial found
(docs/real_models.md, "A seventh trial"). tests/test_monai_trial.py holds each failure in plain torch."""
from __future__ import annotations

import warnings

import pytest
import torch

import graphprune as gp

nets = pytest.importorskip("monai.networks.nets", reason="monai is in the test extra; this environment lacks it")


def _x(*shape, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_dynunet_whose_blocks_sit_under_two_paths_prunes_exactly():
    torch.manual_seed(0)
    m = nets.DynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2],
                     filters=[8, 16, 32]).eval()
    assert m.input_block is m.skip_layers.downsample  # one module, two paths
    x = _x(1, 1, 16, 16, 16)
    pruned, report = gp.prune(m, (x,), budget={"macs": 0.7}, verify=True, measure_latency=False)
    assert report.oracle.verdict == "PASS" and 0.65 <= report.macs_after / report.macs_before <= 0.71
    assert all(p.device.type == "cpu" for p in pruned.parameters())
    assert pruned(_x(2, 1, 24, 24, 24, seed=2)).shape == (2, 2, 24, 24, 24)


def test_unet_with_instance_norm_keeps_its_norms_in_step_and_refits_3d_convolutions():
    torch.manual_seed(0)
    m = nets.UNet(3, 1, 2, channels=(8, 16, 32), strides=(2, 2), num_res_units=1).eval()
    x = _x(1, 1, 16, 16, 16)
    calib = [(_x(2, 1, 16, 16, 16, seed=s).cumsum(-1) * 0.3,) for s in range(3)]
    pruned, report = gp.prune(m, (x,), budget={"macs": 0.7}, calib=calib, measure_latency=False)
    norms = [mod for mod in pruned.modules() if isinstance(mod, torch.nn.InstanceNorm3d)]
    assert norms and report.compensation.sites  # Conv3d inputs have Grams now: refit, not skipped
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stale num_features makes torch warn on every forward
        assert pruned(x).shape == (1, 2, 16, 16, 16)


def test_vit_whose_heads_einops_splits_prunes_them():
    """MONAI's ViT splits q, k, v and the heads with ``Rearrange("b h (qkv l d) -> qkv b l h d", l=num_heads)``:
    the head count lives in the einops layer, which the rewrite now updates (before: heads kept whole)."""
    pytest.importorskip("einops", reason="MONAI's ViT needs einops (in the test extra)")
    torch.manual_seed(0)
    m = nets.ViT(1, img_size=16, patch_size=4, hidden_size=48, mlp_dim=384, num_layers=2, num_heads=4,
                 classification=True, num_classes=2).eval()
    x = _x(1, 1, 16, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error", gp.PruneWarning)  # no group kept whole after a failed proof
        pruned, report = gp.prune(m, (x,), budget={"macs": 0.8}, verify=True, measure_latency=False)
    assert report.oracle.verdict == "PASS"
    heads = [b.attn.input_rearrange.axes_lengths["l"] for b in pruned.blocks]
    assert min(heads) < 4 and [b.attn.qkv.out_features for b in pruned.blocks] == [3 * 12 * h for h in heads]
    assert any(b.mlp.linear1.out_features < 384 for b in pruned.blocks)
    assert pruned(_x(2, 1, 16, 16, 16, seed=2))[0].shape == (2, 2)


def test_the_same_code_in_another_layer_is_told_apart_from_other_calls_of_a_shared_line():
    """Every einops ``Rearrange`` runs one library line: a failed head split stands for the same split in
    the other blocks (kept whole in one round), not for a token rearrange elsewhere on that line."""
    einops_torch = pytest.importorskip("einops.layers.torch", reason="einops is in the test extra")
    from graphprune.backends.torch_proof import _alike

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(48, 144)
            self.split = einops_torch.Rearrange("b n (qkv l d) -> qkv b l n d", qkv=3, l=4)

        def forward(self, t):
            q, k, v = self.split(self.qkv(t))
            return t + (torch.softmax(q @ k.transpose(-1, -2), -1) @ v).transpose(1, 2).flatten(2)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Conv2d(3, 48, 3, padding=1)
            self.tok = einops_torch.Rearrange("b c h w -> b (h w) c")
            self.blocks = torch.nn.Sequential(Block(), Block())

        def forward(self, x):
            return self.blocks(self.tok(self.c(x)))

    dg = gp.trace(Net().eval(), (_x(1, 3, 4, 4),))
    einops_nodes = [n for n in dg.ir.nodes if "einops" in n.meta.source and dg.op_of(n.name) == "aten.reshape"]
    keys = {n.meta.module: _alike(dg, n) for n in einops_nodes}
    assert keys["blocks.0.split"] == keys["blocks.1.split"]
    assert keys["tok"] != keys["blocks.0.split"] and keys["tok"][0] == keys["blocks.0.split"][0]  # one line
