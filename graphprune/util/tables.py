"""Tables: plain text, or rich on a terminal (the CLI turns rich on)."""
from __future__ import annotations

from typing import Any, Iterable, Sequence

_STYLE = {"rich": False}  # the CLI turns rich tables on when it prints to a terminal


def use_rich(on: bool) -> None:
    """Render :func:`table` with rich (boxes, bold headers, colour) instead of plain text."""
    _STYLE["rich"] = bool(on)


def _numeric(c: str) -> bool:
    return c.replace(".", "").replace("%", "").replace("-", "").replace(",", "").isdigit()


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    if _STYLE["rich"]:
        return _rich_table(cells)
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r) for r in cells[1:]])


def _rich_table(cells: list[list[str]]) -> str:
    import io
    import shutil

    from rich import box
    from rich.console import Console
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAVY, header_style="bold cyan", pad_edge=False)
    for i, h in enumerate(cells[0]):
        numeric = len(cells) > 1 and all(_numeric(r[i]) or r[i] in ("", "-") for r in cells[1:])
        t.add_column(h, justify="right" if numeric else "left")
    for r in cells[1:]:
        t.add_row(*r)
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, width=max(100, shutil.get_terminal_size((120, 40)).columns)).print(t)
    return buf.getvalue().rstrip("\n")


def human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return str(int(n))


def shapes_text(named: Iterable[tuple[str, Any]]) -> str:
    """Named arrays' shapes as a report prints them: "x 1x3x224x224, mask 1x16"."""
    return ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in named if hasattr(v, "shape"))
