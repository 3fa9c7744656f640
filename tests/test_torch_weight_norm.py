"""Weight norm folded before tracing (graphprune/frontends/torch_weight_norm.py): aten._weight_norm froze
every channel it touched (a conformer pitch estimator's residual stream, wav2vec2's positional conv)."""
from __future__ import annotations

import copy
import io
import warnings

import torch
import transformers as T
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

import graphprune as gp
from graphprune.frontends.torch_weight_norm import fold_weight_norm
from graphprune.io.checkpoint_doc import PlanStep
from graphprune.io.module_checkpoint import replay


def _normed(old_api: bool = False) -> nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old API is deprecated, and still in checkpoints people load
        last = nn.utils.weight_norm(nn.Linear(32, 4)) if old_api else weight_norm(nn.Linear(32, 4))
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), last).eval()


def test_folding_keeps_the_function_and_leaves_plain_weights():
    x = torch.randn(3, 8)
    for old_api in (False, True):
        model = _normed(old_api)
        with torch.no_grad():
            before = model(x)
        # g is one magnitude per output row of the (4, 32) weight: the model as given had 4 parameters more
        assert fold_weight_norm(model) == (["2.weight"], 4)
        assert not nn.utils.parametrize.is_parametrized(model[2]) and isinstance(model[2].weight, nn.Parameter)
        with torch.no_grad():
            assert torch.allclose(model(x), before, atol=1e-6)
        assert fold_weight_norm(model) == ([], 0)  # nothing left to fold
        buffer = io.BytesIO()
        torch.save(model, buffer)  # weight norm's state-dict hook is a local function torch.save cannot pickle
        buffer.seek(0)
        with torch.no_grad():
            assert torch.equal(torch.load(buffer, weights_only=False)(x), model(x))


def test_channels_into_a_weight_normed_layer_prune_exactly():
    x = torch.randn(2, 8)
    pruned, rep = gp.prune(copy.deepcopy(_normed()), (x,), ratio=0.5, round_to=1, runtime=None, verify=True)
    assert rep.oracle.passed and pruned[0].weight.shape == (16, 8) and pruned[2].weight.shape == (4, 16)
    note = next(n for n in rep.notes if n.startswith("weight norm folded into the weight of 1 layer(s) before tracing "
                                                         "(2.weight)"))
    given = sum(p.numel() for p in _normed().parameters())  # the user's count, g and v both
    assert rep.params_before == given - 4 and "the model as given had 4 parameter(s) more" in note


def test_a_deep_copy_kept_as_the_teacher_still_runs():
    """Deep copies of a parametrized module share its class, and torch's remove_parametrizations deletes the
    weight property from that class: a user's teacher copy raised "'ParametrizedLinear' object has no attribute
    'weight'" after the prune folded the student."""
    x = torch.randn(3, 8)
    student = _normed()
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        want = teacher(x)
    gp.prune(student, (x,), ratio=0.5, round_to=1, runtime=None)
    with torch.no_grad():
        assert torch.equal(teacher(x), want)
    assert nn.utils.parametrize.is_parametrized(teacher[2])


def test_every_way_in_sees_the_folded_graph():
    """The fold lived in prune() alone: a plan made on gp.trace's graph did not fit the prune's, prune_iterative
    and a checkpoint's replay traced the norm and froze every channel, hf.prune kept wav2vec2's normed conv."""
    x = torch.randn(2, 8)
    model = _normed()
    plan = gp.plan(gp.trace(model, (x,)), model, ratio=0.5)
    pruned, _ = gp.prune(model, (x,), plan_=plan, runtime=None)
    assert pruned[2].weight.shape == (4, 16)
    stepped, reports = gp.prune_iterative(_normed(), (x,), ratio=0.5, steps=2, runtime=None)
    assert stepped[2].weight.shape[1] < 32 and reports
    replayed = replay(_normed(), [PlanStep(plan)], (x,), {}, lambda gid, size: f"group {gid} missing")
    assert replayed[2].weight.shape == (4, 16)
    cfg = T.Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
                           num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    speech = T.Wav2Vec2ForCTC(cfg).eval()
    assert nn.utils.parametrize.is_parametrized(speech.wav2vec2.encoder.pos_conv_embed.conv)
    slim, rep = gp.hf.prune(speech, measure_latency=False)
    assert not nn.utils.parametrize.is_parametrized(slim.wav2vec2.encoder.pos_conv_embed.conv)
    assert any(n.startswith("weight norm folded") for n in rep.notes)


def test_a_frozen_normed_weight_stays_frozen():
    for old_api in (False, True):
        model = _normed(old_api)
        for p in model[2].parameters():
            p.requires_grad_(False)
        fold_weight_norm(model)
        assert not model[2].weight.requires_grad and model[0].weight.requires_grad
