"""Reference model zoo for graphprune tests and benchmarks.

Every model comes in a "small" config (tiny, runs in milliseconds on CPU, norm
layers randomised so they are not identities) and a "full" config with the real
architecture sizes (build those under `with torch.device("meta"):` when you only
need shapes). llama additionally has "full_gqa" (Llama-7B with 8 kv heads).

Conventions shared by all models (the pruning engine rewrites parameters in place):
  * forward() never hard-codes a channel/head/feature size: it uses -1, x.shape,
    or an attribute of the module doing the reshape (documented per module);
  * no randomness in forward, no tensor-value-dependent control flow, so every
    model is torch.export-able with strict=False.
"""
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch
from torch import nn

from . import csp, densenet, efficientnet_lite, llama, mixer, mobilenetv2, resnet, resnext, se_cnn, unet, vit


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[..., nn.Module]                       # build(config: str = "small") -> nn.Module
    example_inputs: Callable[..., Tuple[torch.Tensor, ...]]  # example_inputs(config="small", batch=1)
    description: str


def _entry(name: str, module, builder: Callable[..., nn.Module], description: str) -> ZooEntry:
    return ZooEntry(name=name, build=builder, example_inputs=module.example_inputs, description=description)


ZOO: Dict[str, ZooEntry] = {
    e.name: e
    for e in [
        _entry("resnet18", resnet, resnet.resnet18, "ResNet-18: BasicBlocks, 1x1 conv+BN projection shortcuts"),
        _entry("resnet50", resnet, resnet.resnet50, "ResNet-50: Bottleneck blocks (x4 expansion)"),
        _entry("resnext", resnext, resnext.resnext, "ResNeXt-50 32x4d: bottleneck with grouped 3x3 conv"),
        _entry("mobilenetv2", mobilenetv2, mobilenetv2.mobilenetv2,
               "MobileNetV2: inverted residuals, depthwise conv, ReLU6"),
        _entry("efficientnet_lite0", efficientnet_lite, efficientnet_lite.efficientnet_lite0,
               "EfficientNet-Lite0: inverted residuals, 3x3/5x5 depthwise, TF SAME padding (real weights: tools/)"),
        _entry("densenet121", densenet, densenet.densenet121,
               "DenseNet-121: torch.cat dense blocks, BN-ReLU-Conv, 1x1 conv+avgpool transitions"),
        _entry("unet", unet, unet.unet, "U-Net: encoder/decoder, ConvTranspose2d up, torch.cat skips"),
        _entry("se_cnn", se_cnn, se_cnn.se_cnn, "Residual CNN with squeeze-and-excitation channel gating"),
        _entry("csp", csp, csp.csp, "YOLOv8-style CSP backbone: C2f (chunk), uneven torch.split, SPPF"),
        _entry("vit", vit, vit.vit, "ViT-B/16: fused-qkv MHSA, cls token, learned pos embedding, pre-norm"),
        _entry("mixer", mixer, mixer.mixer, "MLP-Mixer B/16: token-mixing (transposed) + channel-mixing MLPs"),
        _entry("llama", llama, llama.llama,
               "Llama decoder: RMSNorm, RoPE, GQA (repeat_kv), causal SDPA, SwiGLU, tied lm_head"),
    ]
}


def build(name: str, config: str = "small", seed: int = 0) -> Tuple[nn.Module, Tuple[torch.Tensor, ...]]:
    """Seed torch, build ZOO[name] in `config`, return (model.eval(), example_inputs).

    Example inputs come from a fixed private generator, so they do not depend on `seed`.
    """
    entry = ZOO[name]
    torch.manual_seed(seed)
    model = entry.build(config)
    return model.eval(), entry.example_inputs(config)


__all__ = ["ZooEntry", "ZOO", "build"]
