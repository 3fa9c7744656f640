"""Regenerate the measured tables of docs/benchmarks.md in one command.

Each section runs its benchmark script (fresh processes, conditions in that script's docstring),
then the table between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->`` in docs/benchmarks.md
is replaced by the script's own rendering of its JSON in docs/data/, with the date it was measured.
The prose around a table (what the figures mean) is written by hand: re-read it when they move.

    make bench                                           # every section (about half an hour on 2 cores)
    .venv/bin/python tools/bench_docs.py --only speed    # one section
    .venv/bin/python tools/bench_docs.py --from-json     # re-render from docs/data/*.json, no runs
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_speed  # noqa: E402  (the scripts beside this one render their own tables)
import bench_speedup  # noqa: E402
import bench_suite_peer  # noqa: E402

DOC = ROOT / "docs" / "benchmarks.md"
DATES = ROOT / "docs" / "data" / "dates.json"  # section -> day it was last measured
_REST = [k for k in bench_speed.MODELS if k not in bench_speed.HEADLINE]

# name -> (commands, JSON the commands write, how the JSON renders as a table)
SECTIONS = {
    "speed": ([["tools/bench_speed.py", "--models", *bench_speed.HEADLINE, "--repeat", "5"],
               ["tools/bench_speed.py", "--models", *_REST, "--repeat", "3"]],
              "docs/data/speed.json", bench_speed.table),
    "speedup": ([["tools/bench_speedup.py", "--ratios", "0.5"]], "docs/data/speedup.json", bench_speedup.table),
    "suite": ([["tools/bench_suite_peer.py"]], "docs/data/suite_peer.json", bench_suite_peer.table),
}


def block(name: str, text: str, day: str) -> str:
    commands = " then ".join(f"`.venv/bin/python {' '.join(c)}`" for c in SECTIONS[name][0])
    return (f"<!-- table:{name} -->\n_Measured {day} by {commands}; rendered by `tools/bench_docs.py` from "
            f"{SECTIONS[name][1]}._\n\n{text}\n<!-- /table:{name} -->")


def render(doc: str, name: str, day: str) -> str:
    """``doc`` with section ``name``'s table replaced (its markers must be there once)."""
    _, path, table = SECTIONS[name]
    text = table(json.loads((ROOT / path).read_text()))
    pattern = re.compile(rf"<!-- table:{name} -->.*?<!-- /table:{name} -->", re.S)
    if len(pattern.findall(doc)) != 1:
        raise SystemExit(f"docs/benchmarks.md: expected one '<!-- table:{name} -->' ... '<!-- /table:{name} -->' "
                         "block; put the markers back where the table goes")
    return pattern.sub(lambda _: block(name, text, day), doc)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--from-json", action="store_true", help="render the stored figures; run nothing")
    ns = p.parse_args()
    dates = json.loads(DATES.read_text()) if DATES.exists() else {}
    doc = DOC.read_text()
    for name in ns.only:
        if not ns.from_json:
            for cmd in SECTIONS[name][0]:
                print(f"[{name}] {' '.join(cmd)}", flush=True)
                subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True)
            dates[name] = datetime.date.today().isoformat()
        doc = render(doc, name, dates.get(name, "(date not recorded)"))
    DOC.write_text(doc)
    if not ns.from_json:
        DATES.write_text(json.dumps(dates, indent=1, sort_keys=True) + "\n")
    print(f"updated {DOC.relative_to(ROOT)}: {', '.join(ns.only)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
