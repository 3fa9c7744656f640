"""torch's own attention: nn.TransformerEncoder / Decoder / Transformer, the default call, beside Torch-Pruning.

torch.nn.MultiheadAttention ties its q/k/v widths to its input's (its forward divides the input's width
into heads), so cutting heads needs graphprune's SlimMultiheadAttention (backends/torch_mha.py). Small
random-init models, nothing passed but the model and its example inputs. Per model:

  macs      MACs after / before of ``graphprune.prune(model, args, budget={"macs": 0.5}, verify=True)``
  oracle    the report's verdict
  heads     attention heads before -> after, summed over the attention modules
  kept      groups kept whole after a failed rewrite before planning again (0: none)
  params    parameters before -> after
  speedup   eager PyTorch latency before / after at the example inputs (the report's, one thread)
  other     the pruned model on another batch and length, under no_grad (torch's fused path): output shape
  twice     the same call on a fresh copy gives the same state dict, bit for bit
  tp        Torch-Pruning 1.6 (MetaPruner, magnitude, ``pruning_ratio=0.5``, ``prune_num_heads=True``,
            ``head_pruning_ratio=0.5``, the attention modules' head counts given, the output layer ignored): MACs
            after / before, heads after, and whether it runs on the other input ("-" where it is not installed:
            ``make bench-deps``). Its MultiheadAttention pruner narrows ``embed_dim`` with the model width and
            keeps every head.

    .venv/bin/python tools/bench_torch_attention.py --json docs/data/torch_attention.json
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from json_rows import default_row, suite_main, suite_row, twice  # noqa: E402

MODELS = ("encoder", "encoder_seq_first", "decoder", "transformer")


def build(name: str):
    """(model, example inputs, other inputs), seeded."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)

    class Encoder(nn.Module):
        def __init__(self, batch_first: bool) -> None:
            super().__init__()
            self.batch_first = batch_first
            self.inp = nn.Linear(16, 128)
            layer = nn.TransformerEncoderLayer(128, 8, 512, dropout=0.0, batch_first=batch_first)
            self.enc = nn.TransformerEncoder(layer, 4, enable_nested_tensor=False)
            self.out = nn.Linear(128, 10)

        def forward(self, x):
            h = self.inp(x if self.batch_first else x.transpose(0, 1))
            return self.out(self.enc(h).mean(1 if self.batch_first else 0))

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.src, self.tgt = nn.Linear(16, 128), nn.Linear(12, 128)
            self.dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(128, 8, 512, dropout=0.0, batch_first=True), 3)
            self.out = nn.Linear(128, 10)

        def forward(self, tgt, memory):
            mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
            return self.out(self.dec(self.tgt(tgt), self.src(memory), tgt_mask=mask, tgt_is_causal=True))

    class Full(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.src, self.tgt = nn.Linear(16, 128), nn.Linear(12, 128)
            self.t = nn.Transformer(128, 8, 2, 2, 512, dropout=0.0, batch_first=True)
            self.out = nn.Linear(128, 10)

        def forward(self, src, tgt):
            return self.out(self.t(self.src(src), self.tgt(tgt)))

    if name.startswith("encoder"):
        m = Encoder(name == "encoder")
        return m.eval(), (torch.randn(2, 32, 16, generator=g),), (torch.randn(3, 20, 16, generator=g),)
    m = Decoder() if name == "decoder" else Full()
    a, b = (torch.randn(2, 24, 12, generator=g), torch.randn(2, 32, 16, generator=g)) if name == "decoder" else \
        (torch.randn(2, 32, 16, generator=g), torch.randn(2, 24, 12, generator=g))
    other = (torch.randn(3, 10, 12, generator=g), torch.randn(3, 14, 16, generator=g)) if name == "decoder" else \
        (torch.randn(3, 14, 16, generator=g), torch.randn(3, 10, 12, generator=g))
    return m.eval(), (a, b), other


def _heads(model) -> int:
    from torch import nn

    return sum(m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention))


def run_one(name: str) -> dict:
    return suite_row(name, lambda row: _fill(row, name))


def _fill(row: dict, name: str) -> None:
    import torch

    import graphprune as gp

    model, args, other = build(name)
    before = _heads(model)
    pruned, report = default_row(row, model, args, {"macs": 0.5})
    row["heads"] = f"{before} -> {_heads(pruned)}"
    if report.latency_before_ms and report.latency_after_ms:
        row["speedup"] = f"{report.latency_before_ms / report.latency_after_ms:.2f}x"
    row["stage"] = "other input"
    with torch.no_grad():
        row["other"] = "ok" if pruned(*other).shape == build(name)[0](*other).shape else "FAIL"
    twice(row, pruned, report, lambda: gp.prune(build(name)[0], args, budget={"macs": 0.5}, verify=True)[0])
    row["stage"] = "peer"
    row["tp"] = _peer(name)


def _peer(name: str) -> str:
    try:
        import torch_pruning as tp
    except ImportError:
        return "-"
    import torch
    from torch import nn

    model, args, other = build(name)
    heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    macs0 = tp.utils.count_ops_and_params(model, args)[0]
    try:
        pruner = tp.pruner.MetaPruner(model, args, importance=tp.importance.MagnitudeImportance(p=2),
                                      pruning_ratio=0.5, num_heads=heads, prune_num_heads=True, head_pruning_ratio=0.5,
                                      ignored_layers=[model.out])
        pruner.step()
        macs = tp.utils.count_ops_and_params(model, args)[0]
        with torch.no_grad():
            model(*other)
        return f"{macs / macs0:.3f}, {_heads(model)} heads, runs"
    except Exception as exc:  # noqa: BLE001 - the peer's failure is a cell of the table
        return f"{type(exc).__name__}: {str(exc)[:80]}"


def main() -> None:
    cols = ["model", "macs", "oracle", "heads", "kept", "params", "speedup", "other", "twice", "tp", "time"]
    suite_main(__doc__, MODELS, lambda name, *_: run_one(name), cols)


if __name__ == "__main__":
    main()
