"""The codebase's own rules (docs/architecture.md), held in the suite as well as in `make check`:
no import circle, no function-level import of the package's own modules (beyond the listed heavy
optional ones), no private name imported across modules, and the size limits. The checkers are
themselves tested on a small package with one planted fault of each kind."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import check_imports  # noqa: E402
import check_sizes  # noqa: E402


def test_graphprune_has_no_import_circle_late_import_or_private_import():
    edges, late, private = check_imports.scan()
    assert check_imports.circles(edges) == []
    assert late == [] and private == []
    assert check_imports.unlisted_packages() == []


def test_no_file_or_function_over_the_size_limits():
    assert check_sizes.offenders() == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def planted(tmp_path):
    """graphprune/{a,b,c,d}.py: a and b import each other (b only inside a function, which still
    makes a circle), c imports a private name from d, d imports c's module inside a function;
    importing sub.x pulls in sub/__init__, which imports a: a circle through a package init."""
    _write(tmp_path, {
        "graphprune/__init__.py": "",
        "graphprune/a.py": "from .b import f\n",
        "graphprune/b.py": "def f():\n    from .a import f\n    return f\n",
        "graphprune/c.py": "from .d import _hidden\n",
        "graphprune/d.py": "_hidden = 1\n\ndef g():\n    from . import c\n    return c\n",
        "graphprune/sub/__init__.py": "from .x import y\n",
        "graphprune/sub/x.py": "y = 1\n",
        "graphprune/e.py": "from .sub.x import y\n",
        "graphprune/f.py": "from .e import y\n",
    })
    return tmp_path


def test_the_import_checker_finds_each_planted_fault(planted):
    edges, late, private = check_imports.scan(planted)
    found = check_imports.circles(edges)
    assert ["graphprune.a", "graphprune.b"] in found
    assert ["graphprune.c", "graphprune.d"] in found
    assert len(found) == 2  # e -> sub.x runs sub/__init__, which does not import e: no circle there
    assert sorted(line.split(": ", 1)[1] for line in late) == ["function-level import of graphprune.a",
                                                              "function-level import of graphprune.c"]
    assert [line.split(": ", 1)[1] for line in private] == ["imports private name _hidden from graphprune.d"]


def test_the_import_checker_sees_a_circle_through_a_package_init(tmp_path):
    _write(tmp_path, {
        "graphprune/__init__.py": "",
        "graphprune/program/__init__.py": "from .runner import run\n",
        "graphprune/program/runner.py": "from ..calib import collect\n\ndef run():\n    return collect\n",
        "graphprune/program/walk.py": "W = 1\n",
        "graphprune/calib.py": "from .program.walk import W\n\ncollect = W\n",
    })
    edges, _, _ = check_imports.scan(tmp_path)
    # calib needs program.walk, and so program/__init__, which needs runner, which needs calib
    assert check_imports.circles(edges) == [["graphprune.calib", "graphprune.program", "graphprune.program.runner"]]


def test_the_size_checker_counts_files_and_functions(tmp_path, monkeypatch):
    body = "\n".join(f"    x{i} = {i}" for i in range(check_sizes.MAX_FUNCTION))  # def line + MAX lines
    _write(tmp_path, {"graphprune/long.py": f"def long():\n{body}\n" + "\n" * check_sizes.MAX_FILE,
                      "graphprune/short.py": "def short():\n    return 1\n"})
    monkeypatch.setattr(check_sizes, "ROOT", tmp_path)
    found = check_sizes.offenders()
    assert any(f.startswith("graphprune/long.py:1: function long is") for f in found)
    assert any(f.startswith("graphprune/long.py: ") and "lines (limit" in f for f in found)
    assert not any("short" in f for f in found)
