"""The diagnostic tools' ``--json FILE``: their rows appended to the JSON list already there, so runs
of several variants one after another build one file (docs/data/*.json)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable


def append_rows(path: Path, rows: list) -> None:
    """``rows`` added to the end of the JSON list in ``path`` (a new list where there is none)."""
    old = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(old + list(rows), indent=1))


def failed(row: dict, stage: str, exc: BaseException, width: int = 150) -> None:
    """Mark a benchmark table's row failed at ``stage``, its reason the exception's first line (the tables
    show every model's outcome rather than stop at one)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    row["ok"], row["reason"] = False, f"{stage}: {type(exc).__name__}: {msg[:width]}"


def run_suite(names: list[str], run_one, cols: list[str], json_path: Path | None) -> list[dict]:
    """The model suites' table (tools/bench_diffusers.py, tools/bench_monai.py): ``run_one(name, tmp)`` per
    model, a markdown row printed as each finishes (a failure's reason in the third column), the pass count,
    and the rows appended to ``json_path`` where given."""
    import tempfile

    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            row = run_one(name, Path(tmp))
            rows.append(row)
            line = [str(row.get(c, "-")) for c in cols]
            if not row["ok"] and "reason" in row:
                line[2] = f"FAIL ({row['reason']})"
            print("| " + " | ".join(line) + " |", flush=True)
    print(f"\n{sum(r['ok'] for r in rows)}/{len(rows)} pass")
    if json_path:
        append_rows(json_path, rows)
    return rows


def suite_main(doc: str, models, run_one, cols: list[str]) -> None:
    """A model suite's command line: ``--only NAME ...`` and ``--json FILE``, then :func:`run_suite`."""
    import argparse

    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=sorted(models), help="these models only")
    ap.add_argument("--json", type=Path, help="append the rows to this JSON list")
    a = ap.parse_args()
    run_suite(a.only or list(models), run_one, cols, a.json)


def suite_row(name: str, fill: Callable[[dict], None]) -> dict:
    """A model suite's row: ``fill(row)`` fills it, naming what it is at in ``row["stage"]``; a failure marks
    the row failed at that stage (the table shows every model's outcome), and the row gets its time."""
    row, t0 = {"model": name, "stage": "prune"}, time.perf_counter()
    try:
        fill(row)
    except Exception as exc:  # noqa: BLE001 - any failure is a row of the table, never the end of the run
        failed(row, row["stage"], exc, 160)
    del row["stage"]
    row["time"] = f"{time.perf_counter() - t0:.1f}s"
    return row


def default_row(row: dict, model, args: tuple, budget: dict):
    """A suite row's default call, ``graphprune.prune(model, args, budget=budget, verify=True)`` with its warnings
    kept out of the output: fills the MACs kept, the oracle's verdict, the groups kept whole to plan again and the
    parameters; returns (pruned, report)."""
    import warnings

    import graphprune as gp

    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        pruned, report = gp.prune(model, args, budget=budget, verify=True)
    row["macs"] = f"{report.macs_after / report.macs_before:.3f}"
    row["oracle"] = report.oracle.verdict
    row["kept"] = sum(n.startswith("kept ") and "planned again" in n for n in report.notes)
    row["params"] = f"{report.params_before:,} -> {report.params_after:,}"
    return pruned, report


def twice(row: dict, model, report, again: Callable[[], object]) -> None:
    """The suite row's last checks: the same call on a fresh copy (``again()``, warnings kept out of the
    output) gives the same state dict, bit for bit; ``ok`` where the oracle passed and another input ran."""
    import warnings

    row["stage"] = "twice"
    with warnings.catch_warnings(record=True):  # the same call: a plan chosen by timing is kept per machine
        warnings.simplefilter("always")
        other = again()
    row["twice"] = same_state(model, other)
    row["ok"] = report.oracle.verdict in ("PASS", "NOT CHECKED") and row["other"] == "ok"


def same_state(a, b) -> str:
    """"same" where two modules' state dicts are equal bit for bit, else "DIFFERENT"."""
    import torch

    a, b = a.state_dict(), b.state_dict()
    return "same" if a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) else "DIFFERENT"
