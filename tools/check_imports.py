"""Import hygiene of the graphprune package, run by `make check` and by the suite.

Reports, and exits non-zero on any of:
  * a circle in the module-level import graph of the package's own modules;
  * a function-level import of the package's own modules (allowed only to defer a heavy
    optional dependency: those modules are listed in DEFERRED);
  * a private name (leading underscore) imported from another module of the package.

Usage: python tools/check_imports.py [--verbose]
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "graphprune"

# own modules that may be imported inside a function (prefix -> why): each pulls in a heavy
# optional dependency that a prune without it must not need
DEFERRED: dict[str, str] = {
    "graphprune.hf": "transformers (the hf extra)",
    "graphprune.report.plots": "matplotlib (the report extra)",
}


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    zoo = sorted((root / "models").rglob("*.py"))  # installed as graphprune.zoo (pyproject's package-dir)
    for path in sorted((root / PACKAGE).rglob("*.py")) + zoo:
        rel = path.relative_to(root).with_suffix("")
        parts = list(rel.parts)
        if parts[0] == "models":
            parts = [PACKAGE, "zoo"] + parts[1:]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


class Imports(ast.NodeVisitor):
    """(target module, imported names, line, at module level) for each import of the package."""

    def __init__(self, mod: str, is_pkg: bool, known: set[str]):
        self.mod, self.is_pkg, self.known = mod, is_pkg, known
        self.depth = 0
        self.found: list[tuple[str, list[str], int, bool]] = []

    def _target(self, name: str) -> str | None:
        while name and name not in self.known:
            name = name.rpartition(".")[0]
        return name or None

    def visit_If(self, node: ast.If) -> None:
        if _type_checking(node):
            return  # annotations only: no import at run time
        self.generic_visit(node)

    def _scope(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _scope

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name.split(".")[0] == PACKAGE and (t := self._target(alias.name)):
                self.found.append((t, [], node.lineno, self.depth == 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _resolve(self.mod, self.is_pkg, node)
        if base.split(".")[0] != PACKAGE:
            return
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.known:  # `from . import x` imports the module x
                self.found.append((sub, [], node.lineno, self.depth == 0))
            elif (t := self._target(base)):
                self.found.append((t, [alias.name], node.lineno, self.depth == 0))


def scan(root: Path = ROOT) -> tuple[dict[str, set[str]], list[str], list[str]]:
    mods = modules(root)
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    late, private = [], []
    for mod, path in mods.items():
        v = Imports(mod, path.name == "__init__.py", known)
        v.visit(ast.parse(path.read_text(), str(path)))
        for target, names, line, top in v.found:
            where = f"{path.relative_to(root)}:{line}"
            if target != mod:  # a deferred import is still a dependency: circles count every edge
                edges[mod].add(target)
                # importing a.b.c runs a/__init__ and a/b/__init__ first: those are needed too
                parts = target.split(".")
                for k in range(1, len(parts)):
                    parent = ".".join(parts[:k])
                    if parent in known and not mod.startswith(parent + ".") and parent != mod:
                        edges[mod].add(parent)
            if not top and not target.startswith(tuple(DEFERRED)):
                late.append(f"{where}: function-level import of {target}")
            for name in names:
                if name.startswith("_") and not name.startswith("__") and target != mod:
                    private.append(f"{where}: imports private name {name} from {target}")
    return edges, late, private


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on.add(root)
        while work:
            node, it = work[-1]
            nxt = next(it, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on.add(nxt)
                    work.append((nxt, iter(sorted(edges.get(nxt, ())))))
                elif nxt in on:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def unlisted_packages() -> list[str]:
    """Package folders missing from pyproject's explicit package list (graphprune.zoo is
    mapped from models/, so setuptools cannot find packages by itself)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    have = {".".join(d.relative_to(ROOT).parts) for d in (ROOT / PACKAGE).rglob("*")
            if d.is_dir() and (d / "__init__.py").exists()}
    return sorted(have - listed)


def main(argv: list[str]) -> int:
    edges, late, private = scan()
    missing = unlisted_packages()
    for name in missing:
        print(f"pyproject.toml: package {name} is not in [tool.setuptools] packages")
    found = circles(edges)
    for comp in found:
        print("import circle: " + " <-> ".join(comp))
    for line in late + private:
        print(line)
    print(f"{len(found)} import circles, {len(late)} function-level imports of the package, "
          f"{len(private)} private names imported across modules")
    return 1 if (found or late or private or missing) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
