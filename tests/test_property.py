"""Property-based test over random architectures (see tests/random_arch.py).

For every generated model and a drawn ratio in [0.1, 0.7], with every role:
trace succeeds, the oracle passes, prune keeps the output shapes and never adds
parameters (and equals the masked original when every pruned group is exact),
and an empty plan (ratio 0) leaves the output bit-identical.

More examples: GRAPHPRUNE_PROPERTY_EXAMPLES=2000 pytest tests/test_property.py
Replay one recipe outside hypothesis: check_property(recipe, ratio, importance).
"""
from __future__ import annotations

import copy
import os

import torch
from helpers import measured_macs, n_params
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

import graphprune as gp

try:  # tests/ may or may not be a package
    from . import random_arch as ra
except ImportError:
    import random_arch as ra

N_EXAMPLES = int(os.environ.get("GRAPHPRUNE_PROPERTY_EXAMPLES", "200"))
ROLES = ("channel", "outer", "inner")
RECURRENT = {"lstm", "gru", "rnn"}
ATOL = 1e-4

# Ratios in [0.1, 0.7]. About half the draws are 0.3-0.7 grid points: tiny models
# have many groups of size 2 or 3, which small ratios leave untouched.
RATIOS = st.sampled_from((0.5, 0.7, 0.6, 0.4, 0.3)) | st.floats(0.1, 0.7)
SETTINGS = settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    derandomize=True)


def _leaves(out) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _equal(a, b) -> bool:
    la, lb = _leaves(a), _leaves(b)
    return len(la) == len(lb) and all(torch.equal(x, y) for x, y in zip(la, lb))


def _max_diff(a, b) -> float:
    la, lb = _leaves(a), _leaves(b)
    assert [t.shape for t in la] == [t.shape for t in lb]
    return max(float((x.double() - y.double()).abs().max()) for x, y in zip(la, lb))


def _outputs(model, args):
    with torch.no_grad():
        return model(*args)


def _quiet(_: str) -> None:
    pass


def check_property(recipe: dict, ratio: float, importance: str, log=_quiet, explain=_quiet) -> dict:
    """The whole property on one recipe. ``log`` receives statistics events and
    ``explain`` failure context (hypothesis' event/note inside the test)."""
    for k in sorted(ra.block_kinds(recipe)):
        log(f"block: {k}")

    model, args = ra.build(recipe)
    before = _outputs(model, args)
    params_before, macs_before = n_params(model), measured_macs(model, args)

    # 1. trace succeeds
    g = gp.trace(model, args)

    # 2. the oracle passes (and verify leaves the model alone)
    plan = gp.plan(g, model, ratio=ratio, importance=importance, roles=ROLES)
    explain(f"plan: {plan.to_json()}")
    pruned_groups = [gid for gid, idx in plan.pruned.items() if idx]
    log(f"pruned groups: {min(len(pruned_groups), 5)}{'+' if len(pruned_groups) >= 5 else ''}")
    for gid in pruned_groups:
        log(f"pruned role: {g.group(gid).role}")
    rep = gp.verify(model, args, plan, g, atol=ATOL)
    explain(str(rep))
    assert rep.passed, str(rep)
    assert _equal(_outputs(model, args), before), "verify modified the model"

    # LayerNorm (a minority of examples) normalises over its hidden dim: that group
    # is inexact, and when it is pruned the oracle must name it, not check it.
    ln_pruned = 0
    for path in ra.layernorm_paths(model):
        for grp in g.groups_of(f"{path}.weight", 0):
            assert grp.inexact, f"group {grp.id} through LayerNorm {path} is not marked inexact"
            if plan.pruned.get(grp.id):
                assert grp.id in rep.inexact_groups, (grp.id, rep.inexact_groups)
                ln_pruned += 1
                log("layernorm group pruned, reported inexact")

    model0 = copy.deepcopy(model)  # for step 4

    # 3. prune in place: same output shapes, no more parameters
    pruned_model, report = gp.prune(model, args, graph=g, plan_=plan)
    after = _outputs(pruned_model, args)
    assert [t.shape for t in _leaves(after)] == [t.shape for t in _leaves(before)]
    assert report.params_after <= report.params_before
    assert n_params(pruned_model) == report.params_after and report.params_before == params_before
    if not ra.block_kinds(recipe) & RECURRENT:  # FlopCounterMode does not see inside CPU recurrent kernels
        assert (report.macs_before, report.macs_after) == (macs_before, measured_macs(pruned_model, args))
    if pruned_groups:
        assert n_params(pruned_model) < params_before, "a non-empty plan removed no parameter"
    if not rep.inexact_groups:
        # The in-place result is the verified computation, too.
        diff = _max_diff(after, gp.masked_original(g, plan, args))
        assert diff <= ATOL, f"pruned model differs from the masked original by {diff}"

    # 4. ratio 0: an empty plan leaves the model bit-identical
    plan0 = gp.plan(g, model0, ratio=0.0, importance=importance, roles=ROLES)
    assert plan0.empty
    model0, report0 = gp.prune(model0, args, graph=g, plan_=plan0)
    assert report0.params_after == report0.params_before
    assert n_params(model0) == params_before
    assert _equal(_outputs(model0, args), before), "an empty plan changed the model's output"
    return {"prunable": len(g.prunable_groups(ROLES)), "pruned": len(pruned_groups),
            "inexact": len(rep.inexact_groups), "layernorm_pruned": ln_pruned}


@SETTINGS
@given(recipe=ra.recipes(), ratio=RATIOS, importance=st.sampled_from(("random", "random", "l2")))
def test_random_architectures_prune_exactly(recipe, ratio, importance):
    note(ra.describe(recipe))
    check_property(recipe, ratio, importance, log=event, explain=note)


def test_generator_covers_every_block_kind():
    """The generator alone (no engine, so cheap): every block kind occurs within as
    many recipes as the property draws."""
    seen: set[str] = set()

    @settings(SETTINGS, max_examples=max(N_EXAMPLES, 200))
    @given(recipe=ra.recipes())
    def collect(recipe):
        seen.update(ra.block_kinds(recipe))

    collect()
    missing = set(ra.BLOCK_KINDS) - seen
    assert not missing, f"block kinds never generated: {sorted(missing)}"


def _prune_and_compare(model, args, plan, g) -> None:
    rep = gp.verify(model, args, plan, g, atol=ATOL)
    assert rep.passed, str(rep)
    expected = gp.masked_original(g, plan, args)
    model, _ = gp.prune(model, args, graph=g, plan_=plan)
    assert _max_diff(_outputs(model, args), expected) <= ATOL


def test_repeat_kv_early_return_after_pruning():
    """Regression found by the property. The generator's repeat_kv has the HF/llama
    early return for n_rep == 1; keeping one query head per kv head makes the pruned
    forward take it, so it has fewer ops than the traced one. The rewrite must still
    be accepted (its shape check once matched nodes by name across the two graphs)."""
    assert ra.REPEAT_KV_EARLY_RETURN
    torch.manual_seed(0)
    model = ra.Attention(e=4, cout=4, heads=3, kv_heads=1, head_dim=4, sdpa=True, bias=True).eval()
    args = (torch.randn(1, 5, 4),)
    g = gp.trace(model, args)
    # The query-heads-per-kv-head space: on q and o only (k/v have one head).
    (grp,) = [gr for gr in g.prunable_groups(ROLES)
              if gr.size == 3 and {m.name for m in gr.members} == {"q.weight", "q.bias", "o.weight"}]
    plan = gp.PrunePlan({grp.id: [1, 2]}, {grp.id: 3})  # n_rep 3 -> 1
    _prune_and_compare(model, args, plan, g)
    assert model.n_rep == 1


def test_gqa_head_dim_equal_to_heads():
    """Regression found by the property: with GQA and head_dim == heads (4 heads over 2 kv
    heads, head_dim 4), constants equal to 4 ask for two new values (query heads 4 -> 1
    via repeat_kv, head_dim 4 -> 2 via the views); the rewrite must try each."""
    torch.manual_seed(0)
    model = ra.Attention(e=5, cout=5, heads=4, kv_heads=2, head_dim=4, sdpa=True, bias=False).eval()
    args = (torch.randn(1, 5, 5),)
    g = gp.trace(model, args)
    plan = gp.plan(g, model, ratio=0.5, importance="random", roles=ROLES)
    _prune_and_compare(model, args, plan, g)


class _TwoAttentions(torch.nn.Module):
    """Two layers of one attention class, run on (batch 2, seq 4): a.head_dim (4)
    equals the seq len and b.head_dim (2) the batch size, so both are ambiguous."""

    def __init__(self) -> None:
        super().__init__()
        self.a = ra.Attention(e=6, cout=6, heads=1, kv_heads=1, head_dim=4, sdpa=True, bias=True)
        self.b = ra.Attention(e=6, cout=6, heads=1, kv_heads=1, head_dim=2, sdpa=True, bias=True)

    def forward(self, x):
        return self.b(self.a(x))


def test_layers_of_one_class_need_different_values():
    """Regression found by the property: two layers of one class needing different new
    values for the same attribute (a.head_dim 4 -> 2, b.head_dim 2 -> 1) decide apart."""
    torch.manual_seed(0)
    model = _TwoAttentions().eval()
    args = (torch.randn(2, 4, 6),)
    g = gp.trace(model, args)
    plan = gp.plan(g, model, ratio=0.7, importance="random", roles=ROLES)
    _prune_and_compare(model, args, plan, g)


def test_gqa_head_dim_probe_moves_constants_that_want_different_values():
    """Regression found by tools/fuzz.py: bumping a GQA block's head_dim on the probe copy also
    moves the repeated-heads reshape (its -1 resolves anew), so the moved constants want two
    values (head_dim 2 -> 1, heads 3 -> 2). The attribute was dropped instead of decided by
    value, and the rewrite was refused."""
    recipe = {"input_shape": (2, 6, 7), "seed": 184, "aux_at": None, "blocks": [
        {"type": "proj", "kind": "seq", "cin": 7, "cout": 4, "act": "tanh", "bias": False},
        {"type": "token_mix", "s": 6},
        {"type": "residual", "body": [{"type": "attn", "e": 4, "cout": 4, "heads": 3, "kv_heads": 1, "head_dim": 2,
                                       "sdpa": True, "bias": True, "interleave": False}]},
        {"type": "residual", "body": [{"type": "attn", "e": 4, "cout": 4, "heads": 3, "kv_heads": 3, "head_dim": 2,
                                       "sdpa": False, "bias": True, "interleave": False}]},
        {"type": "proj", "kind": "seq", "cin": 4, "cout": 11, "act": "relu", "bias": True},
        {"type": "proj", "kind": "seq", "cin": 11, "cout": 12, "act": "gelu", "bias": True}]}
    out = check_property(recipe, 0.6, "random")
    assert out["pruned"] > 0
