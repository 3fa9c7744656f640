"""Channel-space solver: ties, concats and factorisations -> atoms.

Every dim slot of every tensor starts as a fresh *atom* (an independent index
space). Rules state relations between slots; the solver keeps, for each slot, a
*layout* term (graphprune/layouts.py) describing its index space in terms of atoms:

    ("a", id)             an atom
    ("c", (t1, t2, ...))  concatenation: t1's indices, then t2's, ...
    ("p", (t1, t2, ...))  product, outer-major: index = i1*|t2..| + i2*|t3..| + ...

Unifying two layouts refines atoms (an atom may be rebound to a concat or a
product of new, smaller atoms) until both sides are the same term. Refinement is
always sound: it only splits an index space into independent pieces, and the
substitution applies everywhere the atom occurs. When two layouts admit no
common refinement (a reshape whose blocks do not line up with a concat, say),
every atom on both sides is frozen with the reason, which is safe: frozen atoms
are never pruned.

Pruning index k of atom A removes every position of every slot whose layout
coordinate for A is k (a whole block when A is an outer factor).
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Hashable, Iterable, Sequence

import numpy as np

from .layouts import CouplingError, Layouts, Term
from .reasons import SHAPE_CONFLICT, SYMBOLIC, Reason

__all__ = ["CouplingError", "SlotKey", "Solver", "Term"]

SlotKey = Hashable


class Solver(Layouts):
    """Incremental unifier over slot layouts."""

    def __init__(self) -> None:
        super().__init__()
        self._slot: dict[SlotKey, Term] = {}
        self._slot_size: dict[SlotKey, int | None] = {}
        self._frozen: list[tuple[Term, Reason]] = []
        self._inexact: list[tuple[Term, Reason]] = []
        self._hidden: list[Term] = []
        self._virtual = itertools.count()
        self.origin: dict[str, str] = {}  # Reason fields of the node whose rule runs: conflicts name it
        self._slot_atoms: tuple[int, dict[SlotKey, tuple[Term, frozenset[int]]]] = (-1, {})

    # ---- construction -------------------------------------------------------------
    def declare(self, key: SlotKey, size: int | None) -> None:
        """Register a slot with its size (None for a symbolic dim)."""
        if key in self._slot:
            return
        self._slot[key] = self.new_atom(size)
        self._slot_size[key] = size
        if size is None:
            self._frozen.append((self._slot[key], Reason(SYMBOLIC, "symbolic (dynamic) size")))

    def virtual(self, size: int, label: str = "v") -> SlotKey:
        """A slot that belongs to no tensor (the group count of a grouped conv, say)."""
        key = ("~virtual", label, next(self._virtual))
        self.declare(key, size)
        return key

    def has(self, key: SlotKey) -> bool:
        return key in self._slot

    def slot_size(self, key: SlotKey) -> int | None:
        return self._slot_size[key]

    # ---- relations --------------------------------------------------------------------
    def tie(self, a: SlotKey, b: SlotKey, where: str = "") -> None:
        """Same index space, index by index. A size-1 side is broadcasting: no tie."""
        sa, sb = self._slot_size[a], self._slot_size[b]
        if sa is None or sb is None:
            if sa is None and sb is None:
                self._unify(self._slot[a], self._slot[b], where)
            elif (sa or sb) != 1:
                self._conflict([self._slot[a], self._slot[b]], SYMBOLIC, f"static and symbolic sizes meet at {where}")
            return
        if sa == 1 or sb == 1 or sa == 0 or sb == 0:
            return
        if sa != sb:
            raise CouplingError(f"cannot tie dims of sizes {sa} and {sb} at {where}")
        self._unify(self._slot[a], self._slot[b], where)

    def concat(self, out: SlotKey, parts: Sequence[SlotKey], where: str = "") -> None:
        """out's indices are parts[0]'s, then parts[1]'s, ..."""
        sizes = [self._slot_size[p] for p in parts]
        if any(s is None for s in sizes) or self._slot_size[out] is None:
            self._conflict([self._slot[out]] + [self._slot[p] for p in parts], SYMBOLIC,
                           f"symbolic concat at {where}")
            return
        if sum(sizes) != self._slot_size[out]:
            raise CouplingError(f"concat sizes {sizes} do not add up to {self._slot_size[out]} at {where}")
        terms = tuple(self._slot[p] for p, s in zip(parts, sizes) if s)
        self._unify(self._slot[out], self._cat(terms), where)

    def factor(self, flat: SlotKey, parts: Sequence[SlotKey], where: str = "") -> None:
        """flat = product of parts, outer-major (a reshape that splits or merges dims)."""
        sizes = [self._slot_size[p] for p in parts]
        if any(s is None for s in sizes) or self._slot_size[flat] is None:
            self._conflict([self._slot[flat]] + [self._slot[p] for p in parts], SYMBOLIC,
                           f"symbolic reshape at {where}")
            return
        if int(np.prod(sizes, dtype=np.int64)) != self._slot_size[flat]:
            raise CouplingError(f"factor sizes {sizes} do not multiply to {self._slot_size[flat]} at {where}")
        self._unify(self._slot[flat], self._prod(tuple(self._slot[p] for p in parts)), where)

    def freeze(self, key: SlotKey, reason: Reason) -> None:
        self._frozen.append((self._slot[key], _checked(reason)))

    def inexact(self, key: SlotKey, reason: Reason) -> None:
        """Prunable, but the pruned model cannot equal the masked original (a norm over it)."""
        self._inexact.append((self._slot[key], _checked(reason)))

    def hide(self, key: SlotKey, reason: Reason) -> None:
        """Freeze a slot that is not a channel at all (a kernel window): never a group."""
        self._frozen.append((self._slot[key], _checked(reason)))
        self._hidden.append(self._slot[key])

    # ---- queries --------------------------------------------------------------------------
    def layout(self, key: SlotKey) -> Term:
        return self.resolve(self._slot[key])

    def slot_atoms(self, key: SlotKey) -> tuple[Term, frozenset[int]]:
        """(layout, its atoms) of a slot, cached until the next binding: planning asks for
        every slot of the graph several times (masks, shapes, the rewrite)."""
        gen, cache = self._slot_atoms
        if gen != self._generation:
            cache = {}
            self._slot_atoms = (self._generation, cache)
        got = cache.get(key)
        if got is None:
            term = self.layout(key)
            got = cache[key] = (term, frozenset(self.atoms(term)))
        return got

    def frozen_reasons(self) -> dict[int, list[Reason]]:
        return self._reasons(self._frozen)

    def inexact_reasons(self) -> dict[int, list[Reason]]:
        return self._reasons(self._inexact)

    def hidden_atoms(self) -> set[int]:
        out: set[int] = set()
        for t in self._hidden:
            out.update(self.atoms(t))
        return out

    # ---- internals ----------------------------------------------------------------------------
    def _reasons(self, items: Iterable[tuple[Term, Reason]]) -> dict[int, list[Reason]]:
        out: dict[int, list[Reason]] = defaultdict(list)
        for term, reason in items:
            for atom in self.atoms(term):
                if reason not in out[atom]:
                    out[atom].append(reason)
        return dict(out)

    def _conflict(self, terms: list[Term], kind: str, detail: str) -> None:
        reason = Reason(kind, detail, **self.origin)
        for t in terms:
            self._frozen.append((t, reason))

    def _unify(self, a: Term, b: Term, where: str) -> None:
        a, b = self.resolve(a), self.resolve(b)
        if a == b:
            return
        sa, sb = self.size(a), self.size(b)
        if sa != sb:
            raise CouplingError(f"cannot unify layouts of sizes {sa} and {sb} at {where}")
        if sa is None:
            if a[0] == "a" and b[0] == "a":
                self._bind(a[1], b)
            else:
                self._conflict([a, b], SYMBOLIC, f"symbolic layouts at {where}")
            return
        if sa <= 1:
            return
        if a[0] == "a":
            self._bind(a[1], b)
        elif b[0] == "a":
            self._bind(b[1], a)
        elif a[0] == "p" and b[0] == "p":
            self._unify_prod(list(a[1]), list(b[1]), a, b, where)
        else:
            self._unify_cat(list(a[1]) if a[0] == "c" else [a], list(b[1]) if b[0] == "c" else [b], a, b, where)

    def _unify_cat(self, pa: list[Term], pb: list[Term], a: Term, b: Term, where: str) -> None:
        while pa and pb:
            x, y = self.resolve(pa[0]), self.resolve(pb[0])
            sx, sy = self.size(x), self.size(y)
            if sx == sy:
                self._unify(x, y, where)
                pa.pop(0)
                pb.pop(0)
                continue
            big, small_size, side = (x, sy, pa) if sx > sy else (y, sx, pb)
            pieces = self._split(big, small_size, where)
            if pieces is None:
                self._conflict([a, b], SHAPE_CONFLICT,
                               f"concat/split boundaries do not align with a reshape at {where}")
                return
            side[0:1] = list(pieces)

    def _unify_prod(self, fa: list[Term], fb: list[Term], a: Term, b: Term, where: str) -> None:
        while fa and fb:
            x, y = self.resolve(fa[0]), self.resolve(fb[0])
            sx, sy = self.size(x), self.size(y)
            if sx == sy:
                self._unify(x, y, where)
                fa.pop(0)
                fb.pop(0)
                continue
            big, small, side, other = (x, sy, fa, fb) if sx > sy else (y, sx, fb, fa)
            pieces = self._factor(big, small, where) if big and small and self.size(big) % small == 0 else None
            if pieces is None:
                self._conflict([a, b], SHAPE_CONFLICT, f"reshapes regroup dims incompatibly at {where}")
                return
            side[0:1] = list(pieces)

    def _split(self, term: Term, k: int, where: str) -> tuple[Term, Term] | None:
        """Refine term into cat(left[k], right[n-k])."""
        term = self.resolve(term)
        n = self.size(term)
        kind, body = term
        if kind == "a":
            left, right = self.new_atom(k), self.new_atom(n - k)
            self._bind(body, ("c", (left, right)))
            return left, right
        if kind == "c":
            acc = 0
            for i, part in enumerate(body):
                s = self.size(part)
                if acc + s == k:
                    return self._cat(body[: i + 1]), self._cat(body[i + 1 :])
                if acc + s > k:
                    pieces = self._split(part, k - acc, where)
                    if pieces is None:
                        return None
                    return self._cat(body[:i] + (pieces[0],)), self._cat((pieces[1],) + body[i + 1 :])
                acc += s
            return None
        outer, rest = body[0], self._prod(body[1:])
        inner = self.size(rest)
        q, r = divmod(k, inner)
        if r == 0:
            pieces = self._split(outer, q, where)
            if pieces is None:
                return None
            return self._prod((pieces[0], rest)), self._prod((pieces[1], rest))
        # The cut falls inside block q: peel whole blocks, then split the shared inner
        # layout itself (a refinement that holds in every block).
        before: Term | None = None
        tail = outer
        if q > 0:
            pieces = self._split(tail, q, where)
            if pieces is None:
                return None
            before, tail = pieces
        after: Term | None = None
        if self.size(tail) > 1:
            pieces = self._split(tail, 1, where)
            if pieces is None:
                return None
            tail, after = pieces
        inner_pieces = self._split(rest, r, where)
        if inner_pieces is None:
            return None
        left = [self._prod((before, rest))] if before is not None else []
        right = [self._prod((after, rest))] if after is not None else []
        return (self._cat(tuple(left) + (self._prod((tail, inner_pieces[0])),)),
                self._cat((self._prod((tail, inner_pieces[1])),) + tuple(right)))

    def _factor(self, term: Term, k: int, where: str) -> tuple[Term, Term] | None:
        """Refine term (size n, k | n) into prod(outer[k], inner[n/k])."""
        term = self.resolve(term)
        n = self.size(term)
        kind, body = term
        if kind == "a":
            outer, inner = self.new_atom(k), self.new_atom(n // k)
            self._bind(body, ("p", (outer, inner)))
            return outer, inner
        if kind == "p":
            first, rest = body[0], self._prod(body[1:])
            s0 = self.size(first)
            if s0 == k:
                return first, rest
            if s0 > k and s0 % k == 0:
                pieces = self._factor(first, k, where)
                return None if pieces is None else (pieces[0], self._prod((pieces[1], rest)))
            if s0 < k and k % s0 == 0:
                pieces = self._factor(rest, k // s0, where)
                return None if pieces is None else (self._prod((first, pieces[0])), pieces[1])
            return None
        # cat(p1, p2, ...) = prod(cat(o1, o2, ...), inner) when every part factors with
        # the same inner layout.
        inner_size = n // k
        outers, inners = [], []
        for part in body:
            s = self.size(part)
            if s % inner_size:
                return None
            if s == inner_size:
                outers.append(self.new_atom(1))
                inners.append(part)
                continue
            pieces = self._factor(part, s // inner_size, where)
            if pieces is None:
                return None
            outers.append(pieces[0])
            inners.append(pieces[1])
        for other in inners[1:]:
            self._unify(inners[0], other, where)
        return ("c", tuple(outers)), inners[0]


def _checked(reason: Reason) -> Reason:
    if not isinstance(reason, Reason):  # a plain string would lose its kind silently
        raise TypeError(f"a freeze or inexact reason is a graphprune.reasons.Reason, not {type(reason).__name__}")
    return reason
