"""Layout terms over atoms: the store of index spaces that the channel-space solver
(graphprune/spaces.py) refines.

A term describes a slot's index space in terms of atoms:

    ("a", id)             an atom
    ("c", (t1, t2, ...))  concatenation: t1's indices, then t2's, ...
    ("p", (t1, t2, ...))  product, outer-major: index = i1*|t2..| + i2*|t3..| + ...

An atom may be *bound* to a term over new, smaller atoms (a refinement); :meth:`Layouts.resolve`
substitutes bindings and normalises. This module knows nothing of slots, rules or reasons.
"""
from __future__ import annotations

import numpy as np

Term = tuple  # ("a", int) | ("c", tuple[Term, ...]) | ("p", tuple[Term, ...])


class CouplingError(RuntimeError):
    """A rule asked for a relation that cannot hold (a rule bug, not a model issue)."""


class Layouts:
    """Atoms with their sizes, and the bindings that refine them."""

    def __init__(self) -> None:
        self._size: list[int | None] = []
        self._bound: dict[int, Term] = {}
        self._generation = 0  # bumped by every binding: cached layouts are stale after one

    def new_atom(self, size: int | None) -> Term:
        self._size.append(size)
        return ("a", len(self._size) - 1)

    def atoms(self, term: Term) -> list[int]:
        """Leaf atoms of a term, in first-occurrence order."""
        out: dict[int, None] = {}
        self._collect(self.resolve(term), out)
        return list(out)

    def size(self, term: Term) -> int | None:
        kind, body = term
        if kind == "a":
            if body in self._bound:
                return self.size(self._bound[body])
            return self._size[body]
        sizes = [self.size(t) for t in body]
        if any(s is None for s in sizes):
            return None
        return int(sum(sizes)) if kind == "c" else int(np.prod(sizes, dtype=np.int64))

    def atom_size(self, atom: int) -> int | None:
        return self._size[atom]

    def leaves(self) -> list[int]:
        return [i for i in range(len(self._size)) if i not in self._bound]

    def keep_mask(self, term: Term, pruned: dict[int, np.ndarray]) -> np.ndarray:
        """Boolean mask over the term's positions: False where any pruned atom index sits.

        ``pruned`` maps atom id -> boolean array over the atom's indices (True = pruned).
        """
        term = self.resolve(term)
        kind, body = term
        if kind == "a":
            n = self._size[body]
            return ~pruned[body] if body in pruned else np.ones(n, dtype=bool)
        masks = [self.keep_mask(t, pruned) for t in body]
        if kind == "c":
            return np.concatenate(masks) if masks else np.ones(0, dtype=bool)
        out = masks[0]
        for m in masks[1:]:
            out = np.logical_and.outer(out, m).reshape(-1)
        return out

    def resolve(self, term: Term) -> Term:
        """Substitute bound atoms and normalise (flatten nesting, drop unit factors)."""
        kind, body = term
        if kind == "a":
            if body in self._bound:
                resolved = self.resolve(self._bound[body])
                self._bound[body] = resolved  # path compression
                return resolved
            return term
        parts = tuple(self.resolve(t) for t in body)
        return self._cat(parts) if kind == "c" else self._prod(parts)

    def _cat(self, parts: tuple[Term, ...]) -> Term:
        flat: list[Term] = []
        for p in parts:
            if p[0] == "c":
                flat.extend(p[1])
            elif self.size(p) != 0:
                flat.append(p)
        return flat[0] if len(flat) == 1 else ("c", tuple(flat))

    def _prod(self, parts: tuple[Term, ...]) -> Term:
        flat: list[Term] = []
        for p in parts:
            if p[0] == "p":
                flat.extend(p[1])
            elif self.size(p) != 1:  # a unit factor cannot be pruned (floor of one kept index)
                flat.append(p)
        if not flat:
            return parts[0] if parts else self.new_atom(1)
        return flat[0] if len(flat) == 1 else ("p", tuple(flat))

    def _collect(self, term: Term, out: dict[int, None]) -> None:
        kind, body = term
        if kind == "a":
            out[body] = None
        else:
            for t in body:
                self._collect(t, out)

    def _bind(self, atom: int, term: Term) -> None:
        if atom in self.atoms(term):
            raise CouplingError("cyclic layout")  # impossible with consistent sizes
        self._bound[atom] = term
        self._generation += 1
