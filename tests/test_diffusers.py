"""Diffusion models from Hugging Face diffusers, built random-initialised from tiny configs (no
weights are downloaded): the default call prunes them, exactly, with nothing model-specific passed."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import graphprune as gp
from graphprune.zoo import diffusion as Z


def test_a_ddpm_unet_loses_its_macs_to_the_default_call():
    """A DDPM UNet's MACs are in its ResNet blocks' convolutions, whose widths sit under GroupNorm:
    whole norm groups are cut (conv_group, exact), beside the attention heads. Its Upsample2D asserts
    its input width against ``self.channels``, which the rewrite sets to the pruned width."""
    model, (args, _) = Z.build("unet2d"), Z.inputs("unet2d")
    macs = gp.count_macs(model, args)
    pruned, report = gp.prune(model, args, budget={"macs": 0.7}, runtime=None, verify=True)
    assert gp.count_macs(pruned, args) <= 0.72 * macs
    assert report.oracle.verdict == "PASS" and len(report.oracle.checked_groups) >= 10
    assert "conv_group" in set(report.kinds.values())
    up = pruned.up_blocks[0].upsamplers[0]
    assert up.channels == up.conv.in_channels < 64
    other = (torch.randn(2, 3, 16, 16), torch.tensor([500, 7]))
    assert pruned(*other).sample.shape == (2, 3, 16, 16)


def test_sd3_keeps_its_position_grid_and_prunes_heads_and_ffn():
    """SD3 crops its position table as a 16 x 16 grid at the literal ``pos_embed_max_size``: the grid's
    rows are no channel a weight makes (kind ``channel``, not a default target), so the default call
    leaves them and cuts heads and FFN units, where it used to cut rows and fail the rewrite."""
    model, (_, kw) = Z.build("sd3"), Z.inputs("sd3")
    graph = gp.trace(model, (), kw)
    grid = {g.kind for g in graph.groups if any(m.name == "pos_embed.pos_embed" for m in g.members)}
    assert grid <= {"channel", "hidden"} and "conv_group" not in grid
    pruned, report = gp.prune(model, (), kw, graph=graph, budget={"macs": 0.7}, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS" and report.macs_after <= 0.71 * report.macs_before
    assert pruned.pos_embed.pos_embed.shape == model.pos_embed.pos_embed.shape


def test_pixart_keeps_the_caption_width_its_forward_spells_and_prunes_the_rest():
    """PixArt views the caption projection at ``hidden_states.shape[-1]``: a number in the trace that
    no rewrite reaches. The default call keeps that group whole, says so, and meets the budget."""
    model, (args, kw) = Z.build("pixart"), Z.inputs("pixart")
    with pytest.warns(gp.PruneWarning, match="planned again"):
        pruned, report = gp.prune(model, args, kw, budget={"macs": 0.7}, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS" and report.macs_after <= 0.71 * report.macs_before
    assert pruned.caption_projection.linear_2.out_features == 32
    two = {**kw, "timestep": torch.tensor([5, 900])}
    assert pruned(torch.randn(2, 4, 8, 8), torch.randn(2, 7, 24), **two).sample.shape == (2, 8, 8, 8)


def test_a_fresh_controlnet_is_not_checked_by_comparing_zeros():
    """ControlNet's output convolutions start at zero: every output is 0 whatever is pruned, so the
    oracle's comparison says nothing, and the verdict says NOT CHECKED, not PASS."""
    model, (args, _) = Z.build("controlnet"), Z.inputs("controlnet")
    _, report = gp.prune(model, args, ratio=0.25, runtime=None, verify=True)
    assert report.oracle.verdict == "NOT CHECKED" and "every output is zero" in str(report.oracle)


def test_flux_exports_with_a_dynamic_batch_from_an_example_of_one(tmp_path):
    """At a batch of 1 the exporter fixed Flux's batch (its position ids have none) and the file ran at 1
    only, with nothing said: it is exported again at 2, where the batch stays a dim."""
    model, (_, kw) = Z.build("flux"), Z.inputs("flux")
    report = gp.export_onnx(model, (), tmp_path / "flux.onnx", kw)
    assert report.dynamic_batch and "batch of 2" in report.note, report
    sess = ort.InferenceSession(str(tmp_path / "flux.onnx"), providers=["CPUExecutionProvider"])
    three = {k: (torch.cat([v] * 3) if k not in ("img_ids", "txt_ids") else v) for k, v in kw.items()}
    got = sess.run(None, {k: v.numpy() for k, v in three.items()})[0]
    with torch.no_grad():
        want = model(**three).sample.numpy()
    assert got.shape == want.shape == (3, 16, 16) and np.abs(got - want).max() <= 1e-4


def test_a_ddpm_unet_exported_to_onnx_prunes_by_default(tmp_path):
    """The same UNet as an ONNX file: torch writes GroupNorm as Reshape + InstanceNormalization with one
    ones/zeros affine shared by several norms, which tied every block's channels into one frozen group
    (the budget was out of reach); each reader now has its own copy, and the default call meets it."""
    model, (args, _) = Z.build("unet2d"), Z.inputs("unet2d")

    class Sample(torch.nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet

        def forward(self, x, t):
            return self.unet(x, t).sample

    gp.export_onnx(Sample(model).eval(), args, tmp_path / "unet.onnx")
    report = gp.prune_onnx(tmp_path / "unet.onnx", tmp_path / "slim.onnx", budget={"macs": 0.7}, verify=True,
                           measure_latency=False)
    assert report.oracle.verdict == "PASS" and report.macs_after <= 0.71 * report.macs_before
    sess = ort.InferenceSession(str(tmp_path / "slim.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)})[0]
    assert out.shape == (1, 3, 16, 16) and np.isfinite(out).all()
