"""Fourier neural operators (neuraloperator's FNO and TFNO, random weights): the default call at half the MACs.

neuraloperator is not in any extra (it pulls wandb and h5py); install it into the project's environment first:

    .venv/bin/pip install neuraloperator==2.0.0
    .venv/bin/python tools/bench_fno.py

Per model: parameters before -> after of ``graphprune.prune(model, (x,), budget={"macs": 0.5}, verify=True)``,
the oracle's verdict, the report's PyTorch eager latency before and after (one thread, the example shape), the
pruned model on another resolution, and the process's peak resident memory (VmHWM) after the call.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODELS = {  # name -> (class, constructor arguments, example side)
    "fno": ("FNO", dict(n_modes=(16, 16), hidden_channels=64, in_channels=2, out_channels=1, n_layers=4), 64),
    "tfno": ("TFNO", dict(n_modes=(12, 12), hidden_channels=32, in_channels=2, out_channels=1, n_layers=2), 32),
}


def main() -> None:
    import torch

    import graphprune as gp
    from graphprune.planning.memory import peak_rss

    try:
        import neuralop.models as nm
    except ImportError:
        sys.exit("neuraloperator is not installed: .venv/bin/pip install neuraloperator==2.0.0")
    print("| model | params | oracle | latency before -> after | speedup | other size | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, (cls, kw, side) in MODELS.items():
        torch.manual_seed(0)
        model = getattr(nm, cls)(**kw).eval()
        x = torch.randn(1, 2, side, side)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned, rep = gp.prune(model, (x,), budget={"macs": 0.5}, verify=True)
        other = tuple(pruned(torch.randn(2, 2, side * 3 // 2, side * 3 // 2)).shape)
        before, after = rep.latency_before_ms, rep.latency_after_ms
        print(f"| {name} | {rep.params_before:,} -> {rep.params_after:,} | {rep.oracle.verdict} | "
              f"{before:.2f} -> {after:.2f} ms | {before / after:.2f}x | {other} | "
              f"{peak_rss() / 2**30:.1f} GiB |", flush=True)


if __name__ == "__main__":
    main()
