"""Shared helpers for the model zoo: non-trivial norm statistics and example inputs."""
import torch
from torch import nn

# Fixed seed for example inputs so that two calls return identical tensors,
# independently of whatever the global RNG has been used for.
_INPUT_SEED = 1234


def _is_norm(m: nn.Module) -> bool:
    # RMSNorm is hand-written in llama.py; match it by name to avoid an import cycle.
    return isinstance(m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)) or (
        type(m).__name__.endswith("RMSNorm")
    )


@torch.no_grad()
def randomize_norms(model: nn.Module) -> nn.Module:
    """Give every normalisation layer non-trivial statistics and affine params.

    Freshly built BatchNorm has mean=0/var=1/weight=1/bias=0 (an identity in eval
    mode) and LayerNorm/RMSNorm have weight=1, which hides bugs where a pruning
    pass forgets to slice a norm. Uses the global RNG, so it is deterministic
    given torch.manual_seed.
    """
    for m in model.modules():
        if not _is_norm(m):
            continue
        if getattr(m, "running_mean", None) is not None:
            m.running_mean.normal_(0.0, 0.1)
        if getattr(m, "running_var", None) is not None:
            m.running_var.uniform_(0.5, 1.5)
        if getattr(m, "weight", None) is not None:
            m.weight.uniform_(0.5, 1.5)
        if getattr(m, "bias", None) is not None:
            m.bias.normal_(0.0, 0.1)
    return model


def _target_device() -> torch.device:
    # Inputs are generated on CPU (where the generator lives) and then moved to the
    # default device, so example_inputs also works under `with torch.device("meta")`.
    return torch.get_default_device()


def image_input(batch: int, channels: int, size: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(_INPUT_SEED)
    x = torch.randn(batch, channels, size, size, generator=g, device="cpu")
    return x.to(_target_device())


def token_input(batch: int, seq_len: int, vocab_size: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(_INPUT_SEED)
    x = torch.randint(0, vocab_size, (batch, seq_len), generator=g, device="cpu", dtype=torch.long)
    return x.to(_target_device())


def check_config(config: str, configs: dict) -> dict:
    if config not in configs:
        raise ValueError(f"unknown config {config!r}; expected one of {sorted(configs)}")
    return configs[config]
