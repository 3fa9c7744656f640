"""Weight norm folded into plain weights before a PyTorch model is traced.

``torch.nn.utils.parametrizations.weight_norm`` (and the older ``torch.nn.utils.weight_norm``)
computes ``w = g * v / ||v||``, the norm over every dim but one. Removing a layer's input channels
changes that norm, so no slice of ``v`` and ``g`` is the same computation, and the traced op
(``aten._weight_norm``) froze every channel it touched: a conformer pitch estimator's residual
stream, wav2vec2's positional convolution. Folded, the layer holds the weight it computed, the
model computes the same function, and its channels prune as any layer's do; what is lost is the
reparametrisation, which matters to training from scratch, not to inference or distillation.
"""
from __future__ import annotations

import torch
from torch.nn.utils import parametrize
from torch.nn.utils.weight_norm import WeightNorm, remove_weight_norm


def fold_weight_norm(model: torch.nn.Module) -> tuple[list[str], int]:
    """Remove every weight-norm parametrisation (new and old API) of ``model`` in place, leaving the
    weight it computes; returns the parameters folded ("encoder.conv.weight") and how many parameters
    the model had more before (the magnitudes g: a user's HuBERT counted 16 more than the report said)."""
    before = sum(p.numel() for p in model.parameters())
    folded = []
    for path, module in model.named_modules():
        chains = dict(module.parametrizations.items()) if parametrize.is_parametrized(module) else {}
        if chains and all(chain and all(type(p).__name__ == "_WeightNorm" for p in chain) for chain in chains.values()):
            # not parametrize.remove_parametrizations: it deletes the weight property from the parametrized
            # class, which deep copies of the module share, so a user's teacher copy lost its weight
            with torch.no_grad():
                values = {name: getattr(module, name).detach().clone() for name in chains}
            grads = {name: chain.original0.requires_grad for name, chain in chains.items()}
            module.__class__ = module.__class__.__bases__[0]  # this instance only: the class it was made from
            del module._modules["parametrizations"]
            for name, value in values.items():
                module.register_parameter(name, torch.nn.Parameter(value, requires_grad=grads[name]))
                folded.append(f"{path}.{name}" if path else name)
            for key, hook in list(module._load_state_dict_pre_hooks.items()):  # loads old weight_g/_v checkpoints
                if "_weight_norm_compat_hook" in getattr(getattr(hook, "hook", hook), "__qualname__", ""):
                    del module._load_state_dict_pre_hooks[key]  # a local function: torch.save could not pickle it
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, WeightNorm):
                trains = getattr(module, hook.name + "_g").requires_grad  # remove_weight_norm makes it trainable
                remove_weight_norm(module, hook.name)
                getattr(module, hook.name).requires_grad_(trains)
                folded.append(f"{path}.{hook.name}" if path else hook.name)
    return folded, before - sum(p.numel() for p in model.parameters()) if folded else 0


def folded_note(folded: list[str], fewer: int = 0) -> str:
    given = (f"; the model as given had {fewer:,} parameter(s) more, its magnitudes g, which params before does not "
             "count") if fewer else ""
    return (f"weight norm folded into the weight of {len(folded)} layer(s) before tracing ({', '.join(folded[:3])}"
            f"{' ...' if len(folded) > 3 else ''}): the same outputs, and the pruned model's weights are plain "
            f"(its input channels could not prune through the norm otherwise){given}")
