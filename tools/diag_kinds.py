"""What the heads-or-FFN choice (graphprune/planning/kinds.py) would pick, scored on each kind of text.

Runs the default SmolLM2-135M prune (news calibration, the sampled text hf.prune adds) up to the
choice, then scores its two candidates, the uniform cut and the heads kept with FFN units cut to the
same parameter count, by next-token loss on: the calibration batches spread over news and sampled
text (in-sample and held out), the first and all news batches (held out), and the evaluation text of
each source (never calibrated on). Prints a markdown table (docs/llm_pruning.md, runs of 2026-12-05)
and stops before the prune is applied. About 12 minutes on 2 cores.

    .venv/bin/python tools/diag_kinds.py --ratio 0.5
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import llm_data as L  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import graphprune as gp  # noqa: E402
import graphprune.pipeline as pipeline  # noqa: E402
from graphprune.calib.collect import calib_batches  # noqa: E402
from graphprune.metrics import count_params  # noqa: E402
from graphprune.planning import kinds  # noqa: E402
from graphprune.planning.allocate import Repair, removed_params  # noqa: E402
from graphprune.planning.plan import make_plan  # noqa: E402
from graphprune.planning.scoring import output_errors  # noqa: E402


class Scored(Exception):
    """Raised once the table is printed: the prune itself is not needed."""


def spread(batches: list, n: int) -> list:
    return [batches[k] for k in sorted(set(np.round(np.linspace(0, len(batches) - 1, n)).astype(int).tolist()))]


def table(evals: dict, given: int):
    def score(program, dg, groups, scores, ratio, round_to, batches, mode, stats, lams, loss, max_ratio, notes):
        uniform = make_plan(groups, scores, ratio, round_to)
        before = count_params(dg.ir)
        other = kinds.spend_elsewhere(dg, groups, scores, ratio, round_to, removed_params(dg, uniform, before),
                                      max_ratio, before)
        plans = (uniform, make_plan(groups, scores, ratio, round_to, other))
        repair = Repair(program, dg, uniform, batches, mode, stats, lams)
        rows = [("calibration batches spread over news and sampled text, in-sample refit", spread(batches, 4), False),
                ("the same, refit on half the items and scored on the other half", spread(batches, 4), True),
                ("the first 4 news batches (the user's text), held out the same way", batches[:4], True),
                (f"all {given} news batches, held out", batches[:given], True)]
        for s, ids in evals.items():
            cut = [{"input_ids": ids[i:i + 8], "attention_mask": torch.ones_like(ids[i:i + 8])}
                   for i in range(0, len(ids), 8)]
            rows.append((f"{s} evaluation text (never calibrated on)", calib_batches(program, cut, None), False))
        print("| scored on | uniform cut | heads kept | picks |\n|---|---|---|---|")
        for name, used, held in rows:
            if held:
                err = kinds.heldout_scores(program, repair, used, plans, loss)[0]
            else:
                err = [float(output_errors(program, used, [repair.variant(p)], name, loss=loss)[0]) for p in plans]
            print(f"| {name} | {err[0]:.3f} | {err[1]:.3f} | {'kept' if err[1] < err[0] else 'uniform'} |", flush=True)
        raise Scored

    return score


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=2)
    ns = p.parse_args()
    torch.set_num_threads(ns.threads)
    os.environ.setdefault("GRAPHPRUNE_PROGRESS", "0")
    model, tok = L.load_smollm2()
    calib = L.calib_batches(tok, n=64, seq_len=128, batch_size=8, source="news")
    evals = {s: L.eval_ids(tok, s)[: 32 * 128].reshape(32, 128) for s in ("news", "licences", "pydoc")}
    pipeline.choose_kinds = table(evals, len(calib))
    try:
        gp.hf.prune(model, ratio=ns.ratio, calib=calib, targets=("heads", "ffn"))
    except Scored:
        return 0
    print("the prune made no heads-or-FFN choice at this ratio (no head is cut)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
