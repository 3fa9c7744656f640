"""The diagnostic tools' ``--json FILE``: their rows appended to the JSON list already there, so runs
of several variants one after another build one file (docs/data/*.json)."""
from __future__ import annotations

import json
from pathlib import Path


def append_rows(path: Path, rows: list) -> None:
    """``rows`` added to the end of the JSON list in ``path`` (a new list where there is none)."""
    old = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(old + list(rows), indent=1))


def failed(row: dict, stage: str, exc: BaseException, width: int = 150) -> None:
    """Mark a benchmark table's row failed at ``stage``, its reason the exception's first line (the tables
    show every model's outcome rather than stop at one)."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    row["ok"], row["reason"] = False, f"{stage}: {type(exc).__name__}: {msg[:width]}"
