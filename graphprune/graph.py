"""DependencyGraph: the solved channel spaces of a model, and the group queries."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np

from .blocks import find_blocks
from .boundaries import freeze_boundaries
from .errors import PlanError
from .graph_views import groups_table, op_digraph
from .integer_constants import freeze_integer_constants
from .ir import Graph
from .kinds import group_kinds
from .reasons import OP_ARGUMENT, Reason, at
from .rules.registry import Carry, apply_rules, declare_slots
from .spaces import Solver, Term
from .steps import op_steps


@dataclass(frozen=True, slots=True)
class Member:
    """One parameter/buffer dim that a group cuts through."""

    name: str  # parameter or buffer path, e.g. "layer1.0.conv1.weight"
    dim: int
    value: str  # IR value name
    term: Term = field(repr=False, compare=False)


@dataclass(slots=True)
class Group:
    """An atom: an index space that can shrink on its own.

    Removing index k removes, from every member, the positions :meth:`positions`
    returns (one position, or a whole block when the group is an outer factor
    such as an attention head).
    """

    id: int
    size: int
    members: list[Member]
    frozen: list[Reason]  # why it cannot shrink (str(reason): the sentence users read)
    inexact: list[Reason]  # why the pruned model cannot equal the masked original
    role: str  # "channel" | "outer" (blocks: heads, conv groups) | "inner" (head_dim, channel-in-group)
    _graph: "DependencyGraph" = field(repr=False)

    @property
    def prunable(self) -> bool:
        return not self.frozen and self.size > 1

    @property
    def exact(self) -> bool:
        return not self.inexact

    @property
    def step(self) -> int:  # the channel multiple its ops need (graphprune/steps.py), whatever round_to says
        return op_steps(self._graph).get(self.id, 1) if self._graph is not None else 1  # a group built alone

    @property
    def kind(self) -> str:
        """What the group is: head, query_group, head_dim, hidden, ffn, conv_group, group_channel
        (see :mod:`graphprune.kinds`)."""
        return self._graph.kinds[self.id]

    def positions(self, member: Member | str, index: int, dim: int | None = None) -> np.ndarray:
        """Positions along member's dim that index ``index`` of this group occupies."""
        m = self._graph._member(member, dim) if not isinstance(member, Member) else member
        occurrences = self._graph.solver_coords(m.term, self.id)
        return np.flatnonzero(np.any([c == index for c in occurrences], axis=0))

    def affected(self, index: int) -> list[tuple[str, int, list[int]]]:
        """Every (parameter, dim, positions) that moves with index ``index``."""
        if not 0 <= index < self.size:
            raise PlanError(f"index {index} is out of range for group {self.id} of size {self.size}")
        return [(m.name, m.dim, self.positions(m, index).tolist()) for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "size": self.size, "prunable": self.prunable, "role": self.role, "kind": self.kind,
                "frozen": [str(r) for r in self.frozen], "inexact": [str(r) for r in self.inexact],
                "members": [{"name": m.name, "dim": m.dim, "span": _span(self, m)} for m in self.members]}

    def __str__(self) -> str:
        state = "prunable" if self.prunable else "frozen"
        lines = [f"Group {self.id}: size {self.size}, {self.kind} ({self.role}), {state}"
                 + ("" if self.exact else " (not oracle-exact)")]
        for m in self.members:
            lines.append(f"  {m.name} dim {m.dim} {_span(self, m)}")
        lines += [f"  frozen: {r}" for r in self.frozen[:3]] + [f"  inexact: {r}" for r in self.inexact[:2]]
        return "\n".join(lines)


def _span(group: Group, m: Member) -> str:
    """Compact description of which positions of the member dim the group owns."""
    n = len(group._graph.solver_coords(m.term, group.id)[0])
    block = len(group.positions(m, 0))
    total = block * group.size
    return f"{total}/{n} positions" + (f" ({block} per index)" if block > 1 else "")


class DependencyGraph:
    """The coupled channel spaces of one traced model.

    Example:
        >>> import torch, graphprune
        >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
        >>> g = graphprune.trace(m, (torch.randn(1, 4),))
        >>> [grp.size for grp in g.prunable_groups()]
        [8]
    """

    def __init__(self, graph: Graph, freeze_io: bool = True, program: Any = None, before_groups=None) -> None:
        self.ir = graph
        self.solver = Solver()
        declare_slots(graph, self.solver)
        ctx = apply_rules(graph, self.solver)
        self.carries: list[Carry] = ctx.carries
        self.masked_weights: set[str] = ctx.masked_weights
        self.dead: set[str] = ctx.dead  # nodes whose results reach no output and no state (ir.Graph.dead_nodes)
        self._tie_aliases()
        users = graph.consumers()  # reasons about a value name the node that reads or makes it
        if freeze_io:
            freeze_boundaries(graph, self.solver, users)
        freeze_integer_constants(graph, self.solver, users)  # they pin the channels they index
        self.program = program  # the graphprune.program.Program it was lowered from (None: built from IR)
        self._coords_cache: dict[tuple, np.ndarray] = {}
        if before_groups is not None:  # front-end freezes (sizes its back-end cannot rewrite)
            before_groups(self)
        self._build_groups(users)

    # ---- construction ------------------------------------------------------------------
    def _tie_aliases(self) -> None:
        """Tied weights are one tensor: every name of it shares every space."""
        by_source = {v.source: v for v in self.ir.params() if v.source}
        for v in list(by_source.values()):
            for alias in self.ir.aliases.get(v.source, []):
                other = by_source.get(alias)
                if other is not None and other.name != v.name and other.shape == v.shape:
                    for d in range(v.rank):
                        self.solver.tie((v.name, d), (other.name, d), f"tied weights {v.source} = {alias}")

    def _build_groups(self, users: dict[str, list]) -> None:
        frozen = self.solver.frozen_reasons()
        inexact = self.solver.inexact_reasons()
        hidden = self.solver.hidden_atoms()
        members: dict[int, list[Member]] = {}
        inner: set[int] = set()
        outer: set[int] = set()
        for v in self.ir.params():
            for d in range(v.rank):
                term = self.solver.layout((v.name, d))
                for atom in self.solver.atoms(term):
                    members.setdefault(atom, []).append(Member(v.source or v.name, d, v.name, term))
                _roles(term, inner, outer, frozen, self.solver.atom_size)
        # A channel flows through the computation: an atom no computed tensor carries is an
        # op argument (Resize scales, Clip bounds), not a channel.
        flowing: set[int] = set()
        for v in self.ir.values.values():
            if v.kind in ("act", "input"):
                for d in range(v.rank):
                    flowing.update(self.solver.atoms(self.solver.layout((v.name, d))))
        self.groups: list[Group] = []
        self._by_atom: dict[int, Group] = {}
        for atom in sorted(members):
            if atom in hidden:
                continue
            size = self.solver.atom_size(atom)
            if size is None or size <= 1:
                continue
            role = "inner" if atom in inner else "outer" if atom in outer else "channel"
            reasons = list(frozen.get(atom, []))
            if atom not in flowing:
                m = members[atom][0]
                reader = (users[m.value] or [None])[0]
                reasons.append(at(OP_ARGUMENT, f"carried only by {m.name} dim {m.dim}: no tensor the graph computes "
                                  "carries it (an op argument, not a channel)" if reader is not None else
                                  f"{m.name} is read by no op (kept for later, as Llama's original_inv_freq)", reader))
            g = Group(atom, size, members[atom], reasons, inexact.get(atom, []), role, self)
            self.groups.append(g)
            self._by_atom[atom] = g

    # ---- queries -------------------------------------------------------------------------------
    @property
    def kinds(self) -> dict[int, str]:
        """Group id -> kind, read from the graph's attention sites and residual adds."""
        if getattr(self, "_kinds", None) is None:
            self._kinds = group_kinds(self)
        return self._kinds

    def prunable_groups(self, roles: tuple[str, ...] = ("channel", "outer", "inner")) -> list[Group]:
        return [g for g in self.groups if g.prunable and g.role in roles]

    def group(self, gid: int) -> Group:
        if gid not in self._by_atom:
            raise PlanError(f"no group with id {gid}; ids are {[g.id for g in self.groups][:20]}...")
        return self._by_atom[gid]

    def check_plan(self, plan, misfit: Callable[[int, int], str] | None = None) -> None:
        """Raise PlanError unless every group ``plan`` sizes is in this graph with that size (a
        plan made for another model, or for this one before its code changed). ``misfit(gid, size)``
        words the error for the caller's situation."""
        for gid, size in plan.sizes.items():
            if gid not in self._by_atom or self._by_atom[gid].size != size:
                raise PlanError(misfit(gid, size) if misfit is not None else
                                f"the plan does not fit this model: group {gid} (size {size}) is not in its graph")

    def module_of(self, node: str) -> str:
        """The module path IR node ``node`` ran in ("" for the top module, an ONNX node or an unknown name)."""
        return self._nodes_info().get(node, ("", ""))[0]

    def op_of(self, node: str) -> str:
        """The op of IR node ``node`` ("" for an unknown name)."""
        return self._nodes_info().get(node, ("", ""))[1]

    def _nodes_info(self) -> dict[str, tuple[str, str]]:
        # back-ends ask per carry and per site: one pass over the nodes, kept with the graph
        if getattr(self, "_node_info", None) is None:
            self._node_info = {n.name: (n.meta.module, n.op) for n in self.ir.nodes}
        return self._node_info

    def groups_of(self, name: str, dim: int) -> list[Group]:
        """Every group cutting through parameter ``name`` along ``dim``."""
        m = self._member(name, dim)
        return [self._by_atom[a] for a in self.solver.atoms(m.term) if a in self._by_atom]

    def group_of(self, name: str, dim: int, index: int | None = None, group: int | None = None) -> Group:
        """The group owning ``name``'s dim (at ``index`` when several groups share the dim).

        A position can lie in several groups: a fused q/k/v weight's row is in the q/k/v slab, a
        head and a position within every head. The prunable one is taken where only one is;
        where several are, each is another way to remove the row: ``group=`` picks one, and
        without it the error lists them.

        Example: "what else shrinks if I remove channel 7 of layer1.0.conv1?"
            >>> grp = g.group_of("layer1.0.conv1.weight", 0, 7)     # doctest: +SKIP
            >>> grp.affected(grp.index_of("layer1.0.conv1.weight", 0, 7))  # doctest: +SKIP
        """
        m = self._member(name, dim)
        groups = self.groups_of(name, dim)
        if index is None and group is None:
            if len(groups) != 1:
                raise PlanError(f"{name} dim {dim} is shared by {len(groups)} groups; pass index= to pick one")
            return groups[0]
        here = [g for g in groups if index is None or any(c[index] >= 0 for c in self.solver_coords(m.term, g.id))]
        if group is not None:
            chosen = [g for g in here if g.id == group]
            if not chosen:
                raise PlanError(f"group {group} does not hold position {index} of {name} dim {dim}; the groups that "
                                f"do: {[g.id for g in here]}")
            return chosen[0]
        if not here:
            raise PlanError(f"position {index} of {name} dim {dim} belongs to no group (it cannot be pruned)")
        prunable = [g for g in here if g.prunable]
        if len(prunable) > 1:
            ways = "; ".join(f"{g.id} ({g.kind}, size {g.size})" for g in prunable)
            raise PlanError(f"position {index} of {name} dim {dim} lies in {len(prunable)} prunable groups, each "
                            f"another way to remove it: {ways}; pass group= to choose one")
        return (prunable or here)[0]

    def index_of(self, name: str, dim: int, position: int, group: int | None = None) -> tuple[Group, int]:
        """The group and group index that own ``position`` of ``name``'s ``dim``."""
        grp = self.group_of(name, dim, position, group)
        m = self._member(name, dim)
        return grp, int(next(c[position] for c in self.solver_coords(m.term, grp.id) if c[position] >= 0))

    def affected(self, name: str, dim: int, position: int, group: int | None = None) -> list[tuple[str, int, list[int]]]:
        """Everything that moves if ``position`` of ``name``'s ``dim`` is removed. A position no prune
        can remove (its group frozen: a model input, an op without a rule) is an error naming why;
        ``group(id).affected(index)`` still lists what it is coupled to."""
        grp, idx = self.index_of(name, dim, position, group)
        if grp.frozen:
            raise PlanError(f"position {position} of {name} dim {dim} cannot be removed: group {grp.id} is frozen "
                            f"({grp.frozen[0]}); graph.group({grp.id}).affected({idx}) lists what it is coupled to")
        return grp.affected(idx)

    @property
    def blocks(self) -> list:
        """Residual branches that depth pruning may remove (graphprune/blocks.py)."""
        if getattr(self, "_blocks", None) is None:
            self._blocks = find_blocks(self.ir)
        return self._blocks

    def removed_blocks(self, ids) -> list:
        """The blocks named by a plan's ``blocks`` (add node names); an unknown name is an error."""
        if not ids:
            return []  # finding blocks walks the graph: not for plans without any
        by_id = {b.id: b for b in self.blocks}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise PlanError(f"the plan removes block(s) {missing[:3]} that this model does not have: a plan made for "
                            "another model (its residual adds are named by node)")
        return [by_id[i] for i in ids]

    def param_names(self) -> list[str]:
        return [v.source or v.name for v in self.ir.params()]

    def _member(self, name: str, dim: int | None) -> Member:
        for v in self.ir.params():
            if v.source == name or v.name == name or name in self.ir.aliases.get(v.source or "", []):
                if dim is None or not -v.rank <= dim < v.rank:
                    raise PlanError(f"dim {dim} is out of range for '{name}' of shape {v.shape}")
                d = dim % v.rank
                return Member(v.source or v.name, d, v.name, self.solver.layout((v.name, d)))
        close = [n for n in self.param_names() if name.split(".")[-1] in n][:5]
        raise PlanError(f"unknown parameter '{name}'" + (f"; did you mean one of {close}?" if close else ""))

    def solver_coords(self, term: Term, atom: int) -> list[np.ndarray]:
        """One array per occurrence of the atom in term (cat([y, y]), an outer product y_i*y_j):
        for each position of term, the atom's index there, or -1."""
        key = (term, atom)
        if key not in self._coords_cache:
            self._coords_cache[key] = coords(self.solver, term, atom)
        return self._coords_cache[key]

    # ---- views -------------------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps({"groups": [g.to_dict() for g in self.groups],
                           "nodes": len(self.ir.nodes), "frontend": self.ir.frontend}, indent=1, sort_keys=True)

    def to_networkx(self):
        """The op graph as a networkx.DiGraph: value nodes and op nodes, edges along data flow."""
        return op_digraph(self.ir)

    def summary(self, limit: int | None = 60, width: int | None = 90) -> str:
        """The groups as a table: the first ``limit`` (None: all), reasons cut at ``width`` characters."""
        return groups_table(self, limit, width)

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)


def _roles(term: Term, inner: set[int], outer: set[int], frozen: dict, size_of) -> None:
    """In a product, the outermost factor that can move owns whole blocks (heads) and
    the movable factors inside it are positions within blocks (head_dim). Frozen or
    unit factors (spatial positions after a flatten, a qkv selector) give no role."""
    kind, body = term
    if kind == "c":
        for t in body:
            _roles(t, inner, outer, frozen, size_of)
    elif kind == "p":
        movable = [t for t in body if any(a not in frozen and (size_of(a) or 0) > 1 for a in _atoms_of(t))]
        if len(movable) < 2:
            for t in movable:
                _roles(t, inner, outer, frozen, size_of)
            return
        for i, t in enumerate(movable):
            for a in _atoms_of(t):
                (inner if i else outer).add(a)


def _atoms_of(term: Term) -> list[int]:
    kind, body = term
    if kind == "a":
        return [body]
    return [a for t in body for a in _atoms_of(t)]


def coords(solver: Solver, term: Term, atom: int) -> list[np.ndarray]:
    n, occurrences = _coords(solver, solver.resolve(term), atom)
    return occurrences or [np.full(n, -1)]


def _coords(solver: Solver, term: Term, atom: int) -> tuple[int, list[np.ndarray]]:
    kind, body = term
    if kind == "a":
        n = solver.atom_size(body)
        return n, ([np.arange(n)] if body == atom else [])
    parts = [_coords(solver, t, atom) for t in body]
    sizes = [p[0] for p in parts]
    total = int(sum(sizes)) if kind == "c" else int(np.prod(sizes, dtype=np.int64))
    out: list[np.ndarray] = []
    if kind == "c":
        offset = 0
        for size, occ in parts:
            for arr in occ:
                full = np.full(total, -1)
                full[offset:offset + size] = arr
                out.append(full)
            offset += size
        return total, out
    for j, (size, occ) in enumerate(parts):  # outer-major: factor j repeats per inner block
        inner = int(np.prod(sizes[j + 1:], dtype=np.int64))
        outer = int(np.prod(sizes[:j], dtype=np.int64))
        for arr in occ:
            out.append(np.tile(np.repeat(arr, inner), outer))
    return total, out
