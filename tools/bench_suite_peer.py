"""Out of the box on the transformers suite: graphprune beside Torch-Pruning 1.6.1.

Each model of models/hf.py (tiny random-init transformers models, as users build them) is pruned
at ratio 0.3 by each tool with nothing but the model and example inputs:

- graphprune: ``graphprune.hf.prune(model, inputs, ratio=0.3, verify=True)``;
- Torch-Pruning: ``MetaPruner(model, inputs, GroupMagnitudeImportance(p=2), pruning_ratio=0.3,
  ignored_layers=[the output head])`` and ``step()``; no ``num_heads`` (it has to be read off each
  architecture by hand), as a user would first try it.

A pass: the call returns, something was pruned, and the pruned model runs on the example inputs
with the original output shapes (graphprune: and the oracle holds). The table lists the reason of
every failure.

    .venv/bin/python tools/bench_suite_peer.py [--extra]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def shapes(out) -> list:
    import torch

    return [tuple(t.shape) for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def run_graphprune(model, inputs) -> str:
    import torch

    import graphprune as gp

    want = shapes(model(**inputs))
    pruned, report = gp.hf.prune(model, inputs, ratio=0.3, verify=True)
    if report.params_after >= report.params_before:
        return "nothing pruned"
    with torch.no_grad():
        got = shapes(pruned(**inputs))
    if got != want:
        return f"output shapes {got} != {want}"
    return "pass" if report.oracle.passed else f"oracle failed: {report.oracle}"


def head_of(model):
    for name in ("lm_head", "classifier", "qa_outputs", "score", "pooler"):
        mod = getattr(model, name, None)
        if mod is not None:
            return [mod]
    return []


def run_torch_pruning(model, inputs) -> str:
    import torch
    import torch_pruning as tp

    want = shapes(model(**inputs))
    before = params(model)
    pruner = tp.pruner.MetaPruner(model, inputs, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=0.3, ignored_layers=head_of(model))
    pruner.step()
    if params(model) >= before:
        return "nothing pruned"
    with torch.no_grad():
        got = shapes(model(**inputs))
    return "pass" if got == want else f"output shapes {got} != {want}"


def main() -> int:
    import torch

    import models.hf as H
    from graphprune.hf import example_inputs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--extra", action="store_true", help="also the 8 extra architectures")
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "data" / "suite_peer.json")
    p.add_argument("--timeout", type=int, default=60, help="seconds per model and tool (a hang is a failure)")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "TOOL"), help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.one:  # the child: one model, one tool, the verdict on the last line
        name, tool = ns.one
        model = H.build(name)
        inputs = example_inputs(model)
        fn = run_graphprune if tool == "graphprune" else run_torch_pruning
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with torch.no_grad() if tool == "graphprune" else torch.enable_grad():
                    verdict = fn(copy.deepcopy(model), inputs)
        except Exception as exc:  # a failure is a result here: record its last line
            verdict = "error: " + traceback.format_exception_only(type(exc), exc)[-1].strip()[:160]
        print(json.dumps(verdict))
        return 0
    names = list(H.SUITE) + (list(H.EXTRA) if ns.extra else [])
    rows = []
    for name in names:
        row = {"model": name}
        for tool in ("graphprune", "torch-pruning"):
            try:
                r = subprocess.run([sys.executable, __file__, "--one", name, tool], capture_output=True, text=True,
                                   timeout=ns.timeout)
                lines = r.stdout.strip().splitlines()
                row[tool] = json.loads(lines[-1]) if lines else f"crashed (exit {r.returncode})"
            except subprocess.TimeoutExpired:
                row[tool] = f"no result within {ns.timeout} s"
        rows.append(row)
        print(f"{name:14s} graphprune: {row['graphprune'][:70]:70s} torch-pruning: {row['torch-pruning'][:90]}",
              flush=True)
    ns.json.parent.mkdir(parents=True, exist_ok=True)
    ns.json.write_text(json.dumps(rows, indent=1))
    print()
    print(table(rows))
    return 0


def table(rows: list[dict]) -> str:
    ok = {t: sum(r[t] == "pass" for r in rows) for t in ("graphprune", "torch-pruning")}
    lines = ["| model | graphprune | Torch-Pruning 1.6.1 |", "|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['graphprune']} | {r['torch-pruning']} |")
    lines.append(f"| **passed** | **{ok['graphprune']}/{len(rows)}** | **{ok['torch-pruning']}/{len(rows)}** |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
