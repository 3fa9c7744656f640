"""``uniform=True``: head counts a transformers config can hold.

One width per kind is not enough for ``from_pretrained``: the config class validates its numbers
(transformers 5's Llama and Qwen2 refuse ``hidden_size % num_attention_heads != 0`` even with
``head_dim`` given, so 24 of Llama-3-8B's 32 heads cannot be saved while 16 can). The head ratio is
therefore moved to the nearest kept kv-group count the config class itself accepts, asked by
building that config, not by a rule copied here.
"""
from __future__ import annotations

from ..errors import PlanError, warn
from ..options import PruneOptions
from ..planning.plan import kept_count

HEAD_KEYS = ("heads", "kv_heads", "head")


def _accepts(cfg, heads: int, kv: int) -> bool:
    values = {**cfg.to_dict(), "num_attention_heads": heads, "num_key_value_heads": kv}
    try:
        type(cfg)(**values)
    except Exception:  # noqa: BLE001 -- whatever the config's own validation raises means "not expressible"
        return False
    return True


def loadable_heads(model, opts: PruneOptions) -> tuple[PruneOptions, str | None]:
    """``opts`` with a ``heads`` ratio whose kept count the model's config accepts, and a note when it
    moved (a head_dim target is refused: the config would rescale attention). Left alone: no
    uniform, a budget (it chooses the counts), heads not pruned or given a ratio."""
    if opts.uniform and opts.targets is not None and "head_dim" in opts.targets:
        raise PlanError("uniform=True is for output from_pretrained loads; a pruned head_dim loads with the wrong "
                        "attention scale there: drop 'head_dim' from targets or uniform=True")
    cfg = getattr(model, "config", None)
    if not opts.uniform or opts.budget is not None or cfg is None:
        return opts, None
    if opts.targets is not None and not {"heads", "kv_heads"} & set(opts.targets):
        return opts, None
    if opts.ratios and any(k in opts.ratios for k in HEAD_KEYS):
        return opts, None
    heads = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    if not isinstance(heads, int) or not isinstance(kv, int) or kv < 1 or heads % kv:
        return opts, None
    rep, want = heads // kv, kept_count(kv, opts.ratio)
    if _accepts(cfg, want * rep, want):
        return opts, None
    legal = [k for k in range(1, kv + 1) if _accepts(cfg, k * rep, k)]
    if not legal:
        return opts, None
    k = min(legal, key=lambda n: (abs(n - want), -n))
    note = (f"uniform: {k} of {kv} kv head groups kept ({k * rep} heads) instead of {want}: "
            f"{type(cfg).__name__} refuses {want * rep} heads on hidden size {getattr(cfg, 'hidden_size', '?')}")
    return opts.replace(ratios={**(opts.ratios or {}), "heads": (kv - k) / kv}), note


def warn_unloadable(opts: PruneOptions, sync) -> None:
    """uniform=True promised a config-loadable model: say so loudly where the config check failed."""
    if opts.uniform and sync is not None and not sync.loadable:
        warn(f"uniform=True, but from_pretrained cannot rebuild the pruned model ({sync.reason}); save it "
             "with graphprune.hf.save_pruned and reload it with load_pruned")
