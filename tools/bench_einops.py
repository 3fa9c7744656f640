"""The einops suite: the default call on small random-init transformers whose heads einops splits, as a table.

x-transformers (its attention splits q, k and v with ``Rearrange(..., h=heads)`` layers and repeats GQA keys to
``(r kvh)``) and MONAI's ViT (``Rearrange("b h (qkv l d) -> qkv b l h d", l=num_heads)``): the head count lives in
an einops layer. Nothing is passed but the model and its example inputs. Per model:

  macs      MACs after / before of ``graphprune.prune(model, args, budget={"macs": 0.7}, verify=True)``
  oracle    the report's verdict (PASS, PARTIAL, NOT CHECKED, FAIL)
  heads     attention heads (kind ``head``: with GQA, kv heads) before -> after, summed over the layers
  kept      groups the rewrite could not carry, kept whole before planning again (planning/unreached.py)
  params    parameters before -> after
  other     the pruned model on another batch and length: output shape as the original's
  twice     the same call on a fresh copy gives the same state dict, bit for bit

x-transformers is in the bench extra (``make bench-deps``); MONAI and einops in the test extra.

    .venv/bin/python tools/bench_einops.py --json docs/data/einops.json
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from json_rows import default_row, suite_main, suite_row, twice  # noqa: E402

V = 64


def _ids(b: int, n: int, seed: int):
    import torch

    return (torch.randint(0, V, (b, n), generator=torch.Generator().manual_seed(seed)),)


def build(name: str):
    """(model, example inputs, other inputs), seeded."""
    import torch

    torch.manual_seed(0)
    if name == "monai_vit":
        from monai.networks import nets

        m = nets.ViT(1, img_size=16, patch_size=4, hidden_size=48, mlp_dim=192, num_layers=2, num_heads=4,
                     classification=True, num_classes=2)
        g = torch.Generator().manual_seed(1)
        return m.eval(), (torch.randn(1, 1, 16, 16, 16, generator=g),), (torch.randn(2, 1, 16, 16, 16, generator=g),)
    from loguru import logger
    from x_transformers import ContinuousTransformerWrapper, Decoder, Encoder, TransformerWrapper

    logger.remove()  # x-transformers logs advice for training at these tiny sizes

    attn = dict(dim=64, depth=2, heads=8, attn_dim_head=8)
    if name == "xt_continuous":
        m = ContinuousTransformerWrapper(dim_in=12, dim_out=5, max_seq_len=64, attn_layers=Encoder(**attn))
        g = torch.Generator().manual_seed(1)
        return m.eval(), (torch.randn(2, 16, 12, generator=g),), (torch.randn(3, 20, 12, generator=g),)
    layers = {"xt_decoder": Decoder(**attn), "xt_encoder": Encoder(**attn),
              "xt_gqa": Decoder(**attn, attn_kv_heads=4),
              "xt_rotary_gqa_swiglu": Decoder(**attn, attn_kv_heads=4, rotary_pos_emb=True, ff_glu=True, ff_swish=True,
                                              use_rmsnorm=True)}[name]
    m = TransformerWrapper(num_tokens=V, max_seq_len=64, attn_layers=layers)
    return m.eval(), _ids(2, 16, 1), _ids(3, 24, 2)


MODELS = ("xt_decoder", "xt_encoder", "xt_gqa", "xt_rotary_gqa_swiglu", "xt_continuous", "monai_vit")


def run_one(name: str) -> dict:
    return suite_row(name, lambda row: _fill(row, name))


def _fill(row: dict, name: str) -> None:
    import graphprune as gp

    model, args, other = build(name)
    heads = {g.id: g.size for g in gp.trace(model, args).groups if g.kind == "head"}
    pruned, report = default_row(row, model, args, {"macs": 0.7})
    row["heads"] = f"{sum(heads.values())} -> {sum(report.kept.get(i, (n, n))[0] for i, n in heads.items())}"
    row["stage"] = "other input"
    row["other"] = "ok" if _shape(pruned(*other)) == _shape(build(name)[0](*other)) else "FAIL"
    twice(row, pruned, report, lambda: gp.prune(build(name)[0], args, budget={"macs": 0.7}, verify=True)[0])


def _shape(out) -> tuple:
    return tuple((out[0] if isinstance(out, (tuple, list)) else out).shape)  # MONAI's ViT: (logits, hidden states)


def main() -> None:
    cols = ["model", "macs", "oracle", "heads", "kept", "params", "other", "twice", "time"]
    suite_main(__doc__, MODELS, lambda name, *_: run_one(name), cols)


if __name__ == "__main__":
    main()
