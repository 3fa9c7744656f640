"""File and function sizes of the graphprune package, run by `make check`.

No file over MAX_FILE lines and no function over MAX_FUNCTION lines, except the ones listed in
EXCEPTIONS with their reason (also in docs/architecture.md). Lines are physical lines; a
function's lines run from its ``def`` (decorators excluded) to its last statement.

Usage: python tools/check_sizes.py
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE, MAX_FUNCTION = 400, 80
EXCEPTIONS: dict[str, str] = {}  # "path" or "path:function" -> why it stays long


def offenders() -> list[str]:
    out = []
    for path in sorted((ROOT / "graphprune").rglob("*.py")) + sorted((ROOT / "models").rglob("*.py")):
        rel = str(path.relative_to(ROOT))
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_FILE and rel not in EXCEPTIONS:
            out.append(f"{rel}: {n} lines (limit {MAX_FILE})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION and f"{rel}:{node.name}" not in EXCEPTIONS:
                    out.append(f"{rel}:{node.lineno}: function {node.name} is {length} lines (limit {MAX_FUNCTION})")
    return out


def main() -> int:
    found = offenders()
    for line in found:
        print(line)
    print(f"{len(found)} over the size limits")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
