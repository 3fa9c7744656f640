"""The channel-space solver on its own: ties, concats, factorisations, refinement."""
import numpy as np
import pytest

from graphprune.reasons import MODEL_IO, NORMALISED, SHAPE_CONFLICT, SYMBOLIC, Reason
from graphprune.spaces import CouplingError, Solver


def _solver(**slots: int) -> Solver:
    s = Solver()
    for name, size in slots.items():
        s.declare(name, size)
    return s


def _kept(s: Solver, key, pruned: dict) -> list[int]:
    masks = {}
    for atom, idx in pruned.items():
        m = np.zeros(s.atom_size(atom), dtype=bool)
        m[idx] = True
        masks[atom] = m
    return np.flatnonzero(s.keep_mask(s.layout(key), masks)).tolist()


def test_tie_makes_one_space():
    s = _solver(a=4, b=4, c=4)
    s.tie("a", "b")
    s.tie("b", "c")
    assert s.layout("a") == s.layout("c")
    assert len(s.atoms(s.layout("a"))) == 1


def test_broadcast_size_one_does_not_tie():
    s = _solver(a=1, b=4)
    s.tie("a", "b")
    assert s.layout("a") != s.layout("b")


def test_tie_size_mismatch_is_a_rule_bug():
    s = _solver(a=3, b=4)
    with pytest.raises(CouplingError, match="sizes 3 and 4"):
        s.tie("a", "b")


def test_concat_positions():
    # out = cat(p[2], q[3]): pruning q's index 1 removes out position 2 + 1 = 3.
    s = _solver(out=5, p=2, q=3)
    s.concat("out", ["p", "q"])
    (q_atom,) = s.atoms(s.layout("q"))
    assert _kept(s, "out", {q_atom: [1]}) == [0, 1, 2, 4]


def test_factor_outer_prunes_blocks_inner_prunes_strided():
    # flat[6] = (heads[2], dim[3]) outer-major: head 1 owns positions 3..5; dim 0 owns 0 and 3.
    s = _solver(flat=6, heads=2, dim=3)
    s.factor("flat", ["heads", "dim"])
    (h,) = s.atoms(s.layout("heads"))
    (d,) = s.atoms(s.layout("dim"))
    assert _kept(s, "flat", {h: [1]}) == [0, 1, 2]
    assert _kept(s, "flat", {d: [0]}) == [1, 2, 4, 5]


def test_concat_meets_concat_with_other_boundaries_refines_both():
    # x = cat(a[2], b[4]) and x = cat(c[3], d[3]): common refinement cuts at 2 and 3,
    # so b splits into b1[1] (shared with c's tail) and b2[3] (= d).
    s = _solver(x=6, a=2, b=4, c=3, d=3)
    s.concat("x", ["a", "b"])
    s.concat("x", ["c", "d"])
    b = s.layout("b")
    assert b[0] == "c" and b[1][1] == s.layout("d")
    atoms_x = s.atoms(s.layout("x"))
    assert [s.atom_size(a) for a in atoms_x] == [2, 1, 3]


def test_split_of_product_at_block_boundary_splits_outer():
    # flat = (h[4], d[2]); cut flat at 4 -> two halves of 2 heads each, d shared.
    s = _solver(flat=8, h=4, d=2, left=4, right=4)
    s.factor("flat", ["h", "d"])
    s.concat("flat", ["left", "right"])
    (d,) = s.atoms(s.layout("d"))
    assert d in s.atoms(s.layout("left")) and d in s.atoms(s.layout("right"))
    assert s.atoms(s.layout("left"))[0] != s.atoms(s.layout("right"))[0]


def test_product_regrouping_refines_factors():
    # (6,4) viewed as (2,12): 6 = 2*3 refines the outer factor; 12 = 3*4.
    s = _solver(a=6, b=4, c=2, e=12, flat=24)
    s.factor("flat", ["a", "b"])
    s.factor("flat", ["c", "e"])
    assert [s.atom_size(x) for x in s.atoms(s.layout("flat"))] == [2, 3, 4]
    assert s.atoms(s.layout("c"))[0] == s.atoms(s.layout("a"))[0]


def test_incompatible_reshapes_freeze_instead_of_guessing():
    # (4,6) vs (6,4): no common factor refinement -> every atom involved is frozen.
    s = _solver(flat=24, a=4, b=6, c=6, d=4)
    s.factor("flat", ["a", "b"])
    s.factor("flat", ["c", "d"])
    frozen = s.frozen_reasons()
    for key in ("a", "b", "c", "d"):
        for atom in s.atoms(s.layout(key)):
            assert atom in frozen and frozen[atom][0].kind == SHAPE_CONFLICT
            assert "incompatibly" in str(frozen[atom][0])


def test_concat_of_equal_parts_factorises():
    # cat(p[4], q[4]) = (2, 4) -> outer (p-block, q-block), inner shared by p and q.
    s = _solver(x=8, p=4, q=4, outer=2, inner=4)
    s.concat("x", ["p", "q"])
    s.factor("x", ["outer", "inner"])
    assert s.layout("p") == s.layout("q") == s.layout("inner")


def test_rope_rotate_half_ties_the_two_halves():
    # q (d=4) = cat(x1[2], x2[2]); rotate_half = cat(x2, x1); q + rotate_half ties them,
    # so pruning pair index i removes positions i and i + 2 together.
    s = _solver(q=4, x1=2, x2=2, rot=4)
    s.concat("q", ["x1", "x2"])
    s.concat("rot", ["x2", "x1"])
    s.tie("q", "rot")
    (pair,) = s.atoms(s.layout("q"))
    assert _kept(s, "q", {pair: [0]}) == [1, 3]


def test_freeze_and_inexact_reach_every_atom_of_the_slot():
    s = _solver(x=5, p=2, q=3)
    s.concat("x", ["p", "q"])
    s.freeze("x", Reason(MODEL_IO, "model output"))
    s.inexact("p", Reason(NORMALISED, "layer_norm"))
    frozen, inexact = s.frozen_reasons(), s.inexact_reasons()
    assert all(a in frozen for a in s.atoms(s.layout("x")))
    assert list(inexact) == s.atoms(s.layout("p"))
    assert {str(r) for rs in frozen.values() for r in rs} == {"model output"}
    with pytest.raises(TypeError, match="Reason"):  # a bare string would lose its kind
        s.freeze("q", "model output")


def test_symbolic_dims_are_frozen():
    s = _solver(batch=None)
    s.declare("other", None)
    s.tie("batch", "other")
    assert s.atoms(s.layout("batch")) == s.atoms(s.layout("other"))
    (reason,) = s.frozen_reasons()[s.atoms(s.layout("batch"))[0]]
    assert reason.kind == SYMBOLIC and str(reason) == "symbolic (dynamic) size"
