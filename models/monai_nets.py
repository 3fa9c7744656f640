"""Small random-init MONAI networks (medical imaging, mostly 3-D): the MONAI suite.

Each entry builds the class a user would import from ``monai.networks.nets`` at a small size, so the
suite runs in minutes on a CPU; nothing is downloaded. ``inputs(name, seed)`` gives the forward's
one input at batch 1 (seed 0: the example a prune traces; other seeds: fresh inputs).
"""
from __future__ import annotations

import torch

D3, D2 = (1, 1, 32, 32, 32), (1, 1, 64, 64)

# name -> (builder given monai.networks.nets, input shape)
MODELS = {
    "unet3d": (lambda N: N.UNet(3, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2), D3),
    "unet2d": (lambda N: N.UNet(2, 1, 2, channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2), D2),
    "basicunet3d": (lambda N: N.BasicUNet(3, 1, 2, features=(8, 16, 32, 64, 128, 8)), D3),
    "basicunet2d": (lambda N: N.BasicUNet(2, 1, 2, features=(16, 32, 64, 128, 256, 16)), D2),
    "attentionunet3d": (lambda N: N.AttentionUnet(3, 1, 2, channels=(8, 16, 32, 64), strides=(2, 2, 2)), D3),
    "segresnet3d": (lambda N: N.SegResNet(3, init_filters=8, in_channels=1, out_channels=2), D3),
    "segresnetds3d": (lambda N: N.SegResNetDS(3, init_filters=8, in_channels=1, out_channels=2), D3),
    "dynunet3d": (lambda N: N.DynUNet(3, 1, 2, kernel_size=[3, 3, 3, 3], strides=[1, 2, 2, 2],
                                      upsample_kernel_size=[2, 2, 2], filters=[16, 32, 64, 128]), D3),
    "unetr3d": (lambda N: N.UNETR(1, 2, img_size=32, feature_size=8, hidden_size=192, mlp_dim=384, num_heads=4), D3),
    "vit3d": (lambda N: N.ViT(1, img_size=32, patch_size=8, hidden_size=96, mlp_dim=384, num_layers=4, num_heads=4,
                              classification=True, num_classes=2), D3),
    "swinunetr2d": (lambda N: N.SwinUNETR(1, 2, feature_size=12, spatial_dims=2), D2),
    "vnet3d": (lambda N: N.VNet(3, 1, 2), D3),
    "densenet121_3d": (lambda N: N.DenseNet121(spatial_dims=3, in_channels=1, out_channels=2), D3),
    "efficientnetb0_3d": (lambda N: N.EfficientNetBN("efficientnet-b0", pretrained=False, spatial_dims=3,
                                                     in_channels=1, num_classes=2), D3),
    "highresnet3d": (lambda N: N.HighResNet(3, 1, 2), D3),
    "varautoencoder2d": (lambda N: N.VarAutoEncoder(2, in_shape=(1, 64, 64), out_channels=1, latent_size=16,
                                                    channels=(8, 16, 32), strides=(2, 2, 2)), D2),
    "mednext3d": (lambda N: N.MedNeXt(3, init_filters=8, in_channels=1, out_channels=2, kernel_size=3), D3),
}


def build(name: str) -> torch.nn.Module:
    from monai.networks import nets

    torch.manual_seed(0)
    return MODELS[name][0](nets).eval()


def inputs(name: str, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """A smooth random volume or image (a box filter over noise, standardised): closer to a scan than noise."""
    shape = (batch,) + MODELS[name][1][1:]
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    pool = torch.nn.functional.avg_pool3d if len(shape) == 5 else torch.nn.functional.avg_pool2d
    x = pool(torch.nn.functional.pad(x, (2,) * 2 * (len(shape) - 2), mode="replicate"), 5, 1)
    return (x - x.mean()) / (x.std() + 1e-6)
