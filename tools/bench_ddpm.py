"""A DDPM UNet at CIFAR-10's size, pruned by the default call beside Torch-Pruning at the same MACs, timed.

The model is diffusers' ``UNet2DModel`` with google/ddpm-cifar10-32's configuration (35.7M parameters,
32x32 images; the architecture Diff-Pruning prunes with Torch-Pruning), random-initialised: no weights are
downloaded, so this measures speed and exactness, not image quality. Per MACs budget:

  graphprune   ``graphprune.prune(unet, (x, t), budget={"macs": m}, verify=True)`` (runtime "auto": eager
               PyTorch), and the same call with ``runtime="onnxruntime"`` for the ONNX file
  torch-pruning MetaPruner, L2 magnitude, ``conv_out`` ignored (its channels are the image's), the ratio
               bisected to the same MACs as graphprune counts them; GroupNorm needs whole groups, so it runs
               with ``round_to`` = the norms' 32 groups where its plain call leaves a model that fails

Timed at batch 1 on 1 and 2 threads, the models taking turns (tools/bench_eager.py's and
tools/bench_runtime.py's timing: median of rounds of best-of-runs; onnxruntime over fresh sessions).

    .venv/bin/python tools/bench_ddpm.py --json docs/data/ddpm.json
    .venv/bin/python tools/bench_ddpm.py --macs 0.5 --no-peer
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bench_eager  # noqa: E402  (after the path)
import bench_runtime  # noqa: E402
import torch  # noqa: E402
from json_rows import append_rows  # noqa: E402

import graphprune as gp  # noqa: E402

CIFAR = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2, block_out_channels=(128, 256, 256, 256),
             down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32,
             attention_head_dim=None, dropout=0.1)
THREADS = (1, 2)


class Fixed(torch.nn.Module):
    """The UNet at a fixed timestep, as a one-input module for the timing helpers and the ONNX export."""

    def __init__(self, unet, t):
        super().__init__()
        self.unet, self.t = unet, t

    def forward(self, x):
        return self.unet(x, self.t).sample


def build():
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(**CIFAR).eval()
    return unet, (torch.randn(1, 3, 32, 32), torch.tensor([500]))


def macs_of(model, args) -> int:
    return gp.count_macs(gp.trace(model, args).ir)


def tp_prune(model, args, macs: float) -> tuple[torch.nn.Module | None, str]:
    """Torch-Pruning at ``macs`` of the original's MACs: (model or None, how it went)."""
    import torch_pruning as tp

    base = macs_of(model, args)
    why = ""
    for round_to in (None, 32):
        lo, hi, best, failed = 0.0, 0.95, None, False
        for _ in range(10):
            mid = (lo + hi) / 2
            m = copy.deepcopy(model)
            try:
                pruner = tp.pruner.MetaPruner(m, args, importance=tp.importance.MagnitudeImportance(p=2),
                                              pruning_ratio=mid, ignored_layers=[m.conv_out],
                                              **({"round_to": round_to} if round_to else {}))
                pruner.step()
                with torch.no_grad():
                    m(*args)
            except Exception as exc:  # its pruned model does not run: try whole groups
                why, failed = f"round_to={round_to}: {type(exc).__name__} {str(exc)[:80]}".strip(), True
                break
            got = macs_of(m, args) / base
            if got <= macs:
                best, hi = (m, f"ratio {mid:.3f}, round_to={round_to}, MACs kept {got:.3f}"), mid
            else:
                lo, why = mid, f"round_to={round_to}: at ratio {mid:.3f} it keeps {got:.3f} of the MACs"
        if best is not None:
            return best
        if not failed:
            return None, f"no ratio up to 0.95 reaches {macs} of the MACs ({why})"
    return None, f"its pruned model does not run ({why})"


def one(macs: float, peer: bool, tmp: Path) -> dict:
    unet, args = build()
    row = {"macs_target": macs, "params_before": sum(p.numel() for p in unet.parameters())}
    models = {"original": unet}
    for runtime in ("auto", "onnxruntime"):
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruned, report = gp.prune(copy.deepcopy(unet), args, budget={"macs": macs}, verify=True, runtime=runtime)
        models[f"graphprune ({runtime})"] = pruned
        row[f"graphprune_{runtime}"] = {"prune_s": time.perf_counter() - start, "oracle": report.oracle.verdict,
                                        "macs_kept": report.macs_after / report.macs_before,
                                        "params_after": report.params_after,
                                        "report_speedup": report.latency.speedup if report.latency else None}
    if peer:
        start = time.perf_counter()
        tp_model, how = tp_prune(unet, args, macs)
        row["torch_pruning"] = {"prune_s": time.perf_counter() - start, "how": how}
        if tp_model is not None:
            models["torch-pruning"] = tp_model
    fixed = {k: Fixed(m, args[1]).eval() for k, m in models.items()}
    for threads in THREADS:
        ms = bench_eager.timed(list(fixed.values()), args[0], threads)
        row[f"eager_t{threads}"] = dict(zip(fixed, ms))
    paths = {}
    for k, m in fixed.items():
        paths[k] = tmp / f"{len(paths)}.onnx"
        gp.export_onnx(m, (args[0],), paths[k])
    feeds = bench_runtime.feeds_for(paths["original"], 1, None)
    for threads in THREADS:
        ms = bench_runtime.timed(list(paths.values()), feeds, threads)
        row[f"ort_t{threads}"] = dict(zip(paths, ms))
    return row


def show(row: dict) -> None:
    print(f"\nMACs budget {row['macs_target']}: " + "; ".join(
        f"{k}: {v}" for k, v in row.items() if k.startswith(("graphprune", "torch_pruning"))))
    for key in [k for k in row if k.startswith(("eager", "ort"))]:
        base = row[key]["original"]
        print(f"  {key}: " + ", ".join(f"{k} {ms:.1f} ms ({base / ms:.2f}x)" for k, ms in row[key].items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--macs", type=float, nargs="*", default=[0.7, 0.5])
    ap.add_argument("--no-peer", action="store_true", help="leave Torch-Pruning out")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in a.macs:
            rows.append(one(m, not a.no_peer, Path(tmp)))
            show(rows[-1])
    if a.json:
        append_rows(a.json, rows)


if __name__ == "__main__":
    main()
