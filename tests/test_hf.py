"""Hugging Face transformers out of the box: the architecture suite, group kinds,
config sync and loadable checkpoints. Models are random-init from tiny configs
(models/hf.py); nothing is downloaded."""
from __future__ import annotations

import copy
import json
import re

import pytest
import torch
import transformers as T

import graphprune as gp
from graphprune.api.torch_models import max_abs_diff
from graphprune.kinds import attention_sites
from graphprune.zoo import hf as H

ATTENTION_FREE = {"convnext", "mobilenetv2", "resnet"}


def _leaves(out):
    return [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _sites(graph):
    shape = lambda name: tuple(graph.ir.values[name.removeprefix("T:")].shape)
    return [(shape(q), shape(k), shape(v)) for _, q, k, v in attention_sites(graph)]


def _kinds(graph):
    out: dict[str, int] = {}
    for g in graph.groups:
        if g.prunable:
            out[g.kind] = out.get(g.kind, 0) + 1
    return out


@pytest.mark.parametrize("name", list(H.SUITE))
def test_suite_architecture_prunes_heads_and_ffn(name, tmp_path):
    model = gp.hf.prepare(H.build(name))
    inputs = gp.hf.example_inputs(model)
    with torch.no_grad():
        ref = model(**inputs)
    graph = gp.trace(model, (), inputs)
    plan = gp.plan(graph, model, 0.3, targets=("heads", "ffn"))
    kinds = {graph.group(gid).kind for gid, idx in plan.pruned.items() if idx}
    assert "ffn" in kinds, graph.summary()
    if name not in ATTENTION_FREE:
        assert "head" in kinds, graph.summary()  # heads found from the graph, none passed by hand
    assert kinds <= {"head", "ffn"}

    oracle = gp.verify(copy.deepcopy(model), (), plan, graph, inputs)
    assert oracle.passed and oracle.checked_groups, oracle

    before = _sites(graph)
    model, report = gp.hf.prune(model, inputs, plan_=plan, graph=graph)
    assert report.params_after < report.params_before
    with torch.no_grad():
        got = model(**inputs)
    assert [t.shape for t in _leaves(got)] == [t.shape for t in _leaves(ref)]

    # whole heads: every site keeps its head_dim; under GQA the query heads still share the kv heads evenly
    after = _sites(gp.trace(model, (), inputs))
    assert len(after) == len(before)
    cut = sum(q0[-3 if len(q0) >= 4 else 0] - q1[-3 if len(q1) >= 4 else 0] for (q0, _, _), (q1, _, _) in
              zip(before, after))
    assert cut > 0 or name in ATTENTION_FREE
    for (q0, _, v0), (q1, k1, v1) in zip(before, after):
        assert (q1[-1], v1[-1]) == (q0[-1], v0[-1])
        if len(q1) >= 4 and len(k1) >= 4:
            assert q1[-3] % k1[-3] == 0

    exported = gp.export_onnx(model, (), tmp_path / f"{name}.onnx", kwargs=inputs)
    assert exported.max_abs_diff <= 1e-4 and exported.dynamic_batch, exported


def test_kinds_read_from_the_graph():
    # BERT, 2 layers, 4 heads: per layer one head group, q/k and v head_dim, one FFN;
    # the residual stream is a model output, so it is there but frozen.
    bert = gp.hf.prepare(H.build("bert"))
    g = gp.trace(bert, (), gp.hf.example_inputs(bert))
    assert _kinds(g) == {"head": 2, "head_dim": 4, "ffn": 2}
    assert [grp.size for grp in g.groups if grp.kind == "head" and grp.prunable] == [4, 4]
    hidden = [grp for grp in g.groups if grp.kind == "hidden"]
    assert len(hidden) == 1 and not hidden[0].prunable and hidden[0].size == 64
    # Llama, 8 query heads over 4 kv heads: kv heads (4) and queries per kv head (2) per layer;
    # head_dim 64/8 = 8: v head_dim per layer plus one q/k head_dim shared by all layers through
    # the RoPE table, in rotation pairs (8/2 = 4); the residual stream is prunable (the output is
    # the vocabulary).
    llama = gp.hf.prepare(H.build("llama-gqa"))
    g = gp.trace(llama, (), gp.hf.example_inputs(llama))
    assert _kinds(g) == {"head": 2, "query_group": 2, "head_dim": 3, "ffn": 2, "hidden": 1}
    assert sorted(grp.size for grp in g.groups if grp.kind == "head_dim" and grp.prunable) == [4, 8, 8]
    assert [grp.size for grp in g.groups if grp.kind == "query_group"] == [2, 2]
    assert [grp.size for grp in g.groups if grp.kind == "head"] == [4, 4]


def test_default_target_is_heads_and_ffn_and_unknown_targets_fail():
    model = gp.hf.prepare(H.build("vit"))
    inputs = gp.hf.example_inputs(model)
    g = gp.trace(model, (), inputs)
    plan = gp.plan(g, model, 0.5)
    assert {g.group(gid).kind for gid in plan.pruned} == {"head", "ffn"}
    with pytest.raises(gp.PlanError, match="unknown target 'neurons'"):
        gp.plan(g, model, 0.5, targets=("neurons",))
    cnn = gp.hf.prepare(H.build("resnet"))
    g_cnn = gp.trace(cnn, (), gp.hf.example_inputs(cnn))
    with pytest.raises(gp.PlanError, match=r"no prunable group of kind \['head'\]; its prunable kinds are \['ffn', 'hidden'\]"):
        gp.plan(g_cnn, cnn, 0.5, targets="heads")
    with pytest.raises(gp.PlanError, match="either targets"):
        gp.plan(g, model, 0.5, targets=("heads",), roles=("channel",))


def test_gqa_query_heads_stay_a_multiple_of_kv_heads():
    model = gp.hf.prepare(H.build("llama-gqa"))
    inputs = gp.hf.example_inputs(model)
    ref = copy.deepcopy(model)
    model, report = gp.hf.prune(model, inputs, ratio=0.5, targets=("query_heads",), verify=True)
    assert report.oracle.passed, report.oracle
    attn = model.model.layers[0].self_attn
    # 8 query heads over 4 kv heads -> 4 over 4: one query head left per kv head
    assert (attn.q_proj.out_features, attn.k_proj.out_features) == (4 * 8, 4 * 8)
    assert attn.num_key_value_groups == 1
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (4, 4)
    assert ref.model.layers[0].self_attn.num_key_value_groups == 2
    with torch.no_grad():
        assert model(**inputs).logits.shape == ref(**inputs).logits.shape


def _falcon():
    torch.manual_seed(0)
    cfg = T.FalconConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                         new_decoder_architecture=True, use_cache=False)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def test_falcon_fused_gqa_heads_keep_their_ratio():
    """Falcon splits its fused projection as (key/value groups, queries per group + 2, head_dim) with
    num_heads // num_kv_heads: halving the groups must leave 2 query heads over 1 group. The config
    sync counted the groups as the query heads and set num_heads to 1: a model that did not run,
    returned without an error."""
    model = _falcon()
    inputs = {"input_ids": torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))}
    ref = copy.deepcopy(model)
    model, report = gp.hf.prune(model, inputs, ratio=0.5, targets=("heads",))
    attn = model.transformer.h[0].self_attention
    assert (attn.num_heads, attn.num_kv_heads) == (2, 1)  # 4 over 2 groups -> 2 over 1
    assert attn.query_key_value.out_features == 1 * (2 + 2) * 16  # one group: 2 queries, a key, a value
    with torch.no_grad():
        assert model(**inputs).logits.shape == ref(**inputs).logits.shape


def test_a_config_sync_that_breaks_the_forward_is_taken_back(monkeypatch, tmp_path):
    """The sync's own attribute updates are not proven by a trace: if the pruned model no longer runs
    with them, they are undone and the report says so."""
    import graphprune.hf.sync as sync_module

    sync = sync_module.sync_config

    def breaking(model, dg, plan):
        out = sync(model, dg, plan)
        attn = model.model.layers[0].self_attn
        out.attributes.append(("model.layers.0.self_attn", "head_dim", attn.head_dim, attn.head_dim + 1))
        attn.head_dim += 1  # a view by this head_dim no longer fits
        return out

    monkeypatch.setattr(sync_module, "sync_config", breaking)
    model = gp.hf.prepare(H.build("llama-gqa"))
    inputs = gp.hf.example_inputs(model)
    want = model.model.layers[0].self_attn.head_dim
    model, report = gp.hf.prune(model, inputs, ratio=0.5, targets=("ffn",))
    assert model.model.layers[0].self_attn.head_dim == want and report.sync.attributes == []
    taken = [n for n in report.notes if n.startswith("config sync: ")]  # the FFN sizes it set too
    assert len(taken) == 1 and "module attribute(s) taken back" in taken[0] and "RuntimeError" in taken[0]
    with torch.no_grad():
        want_out = model(**inputs).logits
    # the reload replays the plan and the sync: it must take them back alike (DAB-DETR's hidden_size did not,
    # and its reload failed on its first forward)
    gp.hf.save_pruned(model, tmp_path / "p")
    back = gp.hf.load_pruned(tmp_path / "p")
    assert back.model.layers[0].self_attn.head_dim == want
    with torch.no_grad():
        torch.testing.assert_close(back(**inputs).logits, want_out)


def _gpt_neox():
    torch.manual_seed(0)
    cfg = T.GPTNeoXConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, use_cache=False)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("name", ["vit", "gpt_neox"])
def test_load_pruned_reads_the_names_save_pretrained_writes(name, tmp_path):
    """transformers 5 saves some weights under their older names (ViT's q_proj as
    attention.attention.query, GPT-NeoX's lm_head as embed_out); load_pruned read the file's names
    as the model's and refused the folder it had just saved."""
    model = gp.hf.prepare(H.build("vit") if name == "vit" else _gpt_neox())
    inputs = gp.hf.example_inputs(model)
    model, _ = gp.hf.prune(model, inputs, budget={"params": 0.8})
    gp.hf.save_pruned(model, tmp_path)
    loaded = gp.hf.load_pruned(tmp_path)
    with torch.no_grad():
        for got, want in zip(_leaves(loaded(**inputs)), _leaves(model(**inputs))):
            torch.testing.assert_close(got, want)


def test_an_encoder_decoder_gets_decoder_inputs_by_default():
    """T5 does not make decoder ids from input_ids (BART does): the default call without inputs failed
    to trace, blaming example inputs the user had not passed."""
    torch.manual_seed(0)
    cfg = T.T5Config(vocab_size=128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, use_cache=False,
                     decoder_start_token_id=0)
    model = T.AutoModelForSeq2SeqLM.from_config(cfg).eval()
    inputs = gp.hf.example_inputs(model)
    assert inputs["decoder_input_ids"].shape == (2, 7) and inputs["input_ids"].shape == (2, 14)
    model, report = gp.hf.prune(model, budget={"params": 0.8}, verify=True)
    assert report.oracle.passed and report.params_after < report.params_before


def _scored_attention(name: str):
    torch.manual_seed(0)
    if name == "gemma2-softcap":  # cap * tanh(scores / cap) between q.k and the softmax, as real Gemma 2 checkpoints
        return T.Gemma2ForCausalLM(T.Gemma2Config(vocab_size=128, hidden_size=64, intermediate_size=128,
                                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                                  head_dim=16, use_cache=False, attn_logit_softcapping=50.0)).eval()
    if name == "mpnet":  # scores += position_bias, in place
        return T.MPNetForSequenceClassification(T.MPNetConfig(vocab_size=128, hidden_size=64, num_hidden_layers=2,
                                                              num_attention_heads=4, intermediate_size=128,
                                                              max_position_embeddings=64)).eval()
    return T.BloomForCausalLM(T.BloomConfig(vocab_size=128, hidden_size=64, n_layer=2, n_head=4, use_cache=False)).eval()


@pytest.mark.parametrize("name", ["gemma2-softcap", "mpnet"])
def test_heads_are_found_through_a_soft_cap_and_an_in_place_bias(name):
    """Gemma 2's soft cap (tanh) and MPNet's in-place position bias sit between q.k and the softmax:
    no attention was found there, and the default call cut the hidden size instead."""
    model = _scored_attention(name)
    inputs = gp.hf.example_inputs(model)
    hidden = model.get_input_embeddings().weight.shape[1]
    graph = gp.trace(model, (), inputs)
    assert "head" in _kinds(graph), graph.summary()
    model, report = gp.hf.prune(model, inputs, budget={"params": 0.8}, verify=True)
    assert report.oracle.passed and set(report.kinds.values()) <= {"head", "ffn"}
    assert model.get_input_embeddings().weight.shape[1] == hidden  # the hidden size stays


def test_frozen_heads_leave_the_ffn_not_the_hidden_size():
    """Bloom's ALiBi slopes are computed per head (arange): its heads freeze with that reason, and the
    default call cuts its FFN units alone, as for any transformer (it cut the hidden size and head_dim)."""
    model = _scored_attention("bloom")
    inputs = gp.hf.example_inputs(model)
    graph = gp.trace(model, (), inputs)
    assert "head" not in _kinds(graph)
    model, report = gp.hf.prune(model, inputs, budget={"params": 0.8})
    assert set(report.kinds.values()) == {"ffn"} and report.params_after < report.params_before
    assert model.get_input_embeddings().weight.shape[1] == 64


def _phi3():
    torch.manual_seed(0)
    cfg = T.Phi3Config(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, use_cache=False, max_position_embeddings=64,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


def test_layers_that_spell_config_sizes_are_kept_whole_by_the_default_call():
    """Phi-3 splits its fused q/k/v at config.num_attention_heads * head_dim, a size no trace carries:
    cutting heads cannot be rewritten. Asked for explicitly, the error names the nodes, the source line
    and the modules to ignore; the default call keeps the heads those layers spell whole, plans again and
    says so."""
    model = _phi3()
    inputs = gp.hf.example_inputs(model)
    with pytest.raises(gp.errors.RewriteError, match=r"modeling_phi3\.py.*ignore=\['model\.layers\.") as err:
        gp.hf.prune(copy.deepcopy(model), inputs, ratio=0.5, targets=("heads",))
    assert err.value.modules and all(m.endswith(".self_attn") for m in err.value.modules)
    ref = copy.deepcopy(model)
    model, report = gp.hf.prune(model, inputs, ratio=0.5)  # half of 2 key/value heads: one is cut
    assert any(n.startswith("kept 7 group(s) whole (model.layers.0.self_attn.o_proj.weight[1] (3 groups)")
               and "planned again" in n for n in report.notes), report.notes
    assert set(report.kinds.values()) == {"ffn"} and report.params_after < report.params_before
    with torch.no_grad():
        assert model(**inputs).logits.shape == ref(**inputs).logits.shape


def test_a_budget_with_uniform_keeps_every_layer_alike():
    """budget= with uniform=True was always refused (blaming ratios= the user had not passed): the
    budget's last refinement gave units back layer by layer. They now go back to every layer at once."""
    full = H.build("llama-gqa").model.layers[0]
    model = gp.hf.prepare(H.build("llama-gqa"))
    inputs = gp.hf.example_inputs(model)
    ffn, report = gp.hf.prune(copy.deepcopy(model), inputs, budget={"params": 0.8}, uniform=True, targets=("ffn",))
    assert report.params_after <= 0.8 * report.params_before and report.sync.loadable, report.sync
    assert len({layer.mlp.up_proj.out_features for layer in ffn.model.layers}) == 1
    assert ffn.model.layers[0].mlp.up_proj.out_features < full.mlp.up_proj.out_features
    with pytest.warns(gp.errors.PruneWarning, match="from_pretrained cannot rebuild"):  # 6 of 8 heads on hidden 64
        both, report = gp.hf.prune(model, inputs, budget={"params": 0.8}, uniform=True)
    assert report.params_after <= 0.8 * report.params_before
    for width in (lambda layer: layer.mlp.up_proj.out_features, lambda layer: layer.self_attn.q_proj.out_features):
        assert len({width(layer) for layer in both.model.layers}) == 1


def _bert_classifier():
    torch.manual_seed(0)
    cfg = T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                       vocab_size=128, max_position_embeddings=64, num_labels=3)
    return T.BertForSequenceClassification(cfg).eval()


@pytest.mark.parametrize("case", ["bert-ffn", "bert-heads-ffn-hidden", "llama-heads-ffn"])
def test_uniform_pruning_round_trips_through_from_pretrained(case, tmp_path):
    if case == "bert-ffn":
        model, targets, ratio = H.build("bert"), ("ffn",), 0.25
    elif case == "bert-heads-ffn-hidden":
        # BERT derives head size as hidden/heads: 3 heads of 16 need hidden 48, i.e. the same ratio
        model, targets, ratio = _bert_classifier(), ("heads", "ffn", "hidden"), 0.25
    else:  # Llama: 8 -> 4 query heads, 4 -> 2 kv heads (transformers requires hidden % heads == 0)
        model, targets, ratio = H.build("llama-gqa"), ("heads", "ffn"), 0.5
    inputs = gp.hf.example_inputs(model)
    model, report = gp.hf.prune(model, inputs, ratio=ratio, targets=targets)
    assert report.sync.loadable, report.sync
    with torch.no_grad():
        want = model(**inputs)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert max_abs_diff(loaded(**inputs), want) == 0.0
    assert loaded.num_parameters() == model.num_parameters()


def test_config_values_after_uniform_llama_pruning():
    model = H.build("llama-gqa")
    model, report = gp.hf.prune(model, ratio=0.5, targets=("heads", "ffn"))
    # 8 q heads over 4 kv heads at 50%: 2 kv heads with their 2 queries each; FFN 128 -> 64
    c = model.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size, c.head_dim) == (4, 2, 64, 8)
    assert model.model.layers[1].mlp.intermediate_size == 64


def test_heads_bert_cannot_be_expressed_by_its_config_but_reloads_with_the_plan(tmp_path):
    model = gp.hf.prepare(H.build("bert"))
    inputs = gp.hf.example_inputs(model)
    original = model.config.to_dict()
    model, report = gp.hf.prune(model, inputs, ratio=0.25, targets=("heads",))
    assert not report.sync.loadable and "not a multiple" in report.sync.reason
    assert model.config.to_dict() == original  # left valid, so save_pretrained still works
    assert model.encoder.layer[0].attention.self.num_attention_heads == 3
    gp.hf.save_pruned(model, tmp_path)
    loaded = gp.load_pruned(tmp_path)
    with torch.no_grad():
        assert max_abs_diff(loaded(**inputs), model(**inputs)) == 0.0


def test_uneven_per_layer_pruning_reloads_with_load_pruned(tmp_path):
    model = gp.hf.prepare(H.build("llama-gqa"))
    inputs = gp.hf.example_inputs(model)
    g = gp.trace(model, (), inputs)
    heads = [grp.id for grp in g.groups if grp.kind == "head" and grp.prunable]
    ffn = [grp.id for grp in g.groups if grp.kind == "ffn" and grp.prunable]
    # layer 0 keeps 3 of 4 kv heads and 96 FFN units, layer 1 keeps 1 kv head and 32 units
    ratios = {heads[0]: 0.25, heads[1]: 0.75, ffn[0]: 0.25, ffn[1]: 0.75}
    model, report = gp.hf.prune(model, inputs, targets=("heads", "ffn"), ratios=ratios, ratio=0.0, graph=g)
    assert not report.sync.loadable and "differ between layers" in report.sync.reason
    layers = model.model.layers
    assert [layer.self_attn.k_proj.out_features // 8 for layer in layers] == [3, 1]
    assert [layer.mlp.up_proj.out_features for layer in layers] == [96, 32]
    gp.save_pruned(model, tmp_path)
    loaded = gp.load_pruned(tmp_path)
    with torch.no_grad():
        assert max_abs_diff(loaded(**inputs), model(**inputs)) == 0.0
    assert [layer.self_attn.k_proj.out_features for layer in loaded.model.layers] == [24, 8]


def test_inputs_example_inputs_cannot_build_say_so():
    torch.manual_seed(0)
    s2t = T.Speech2TextModel(T.Speech2TextConfig(d_model=32, encoder_layers=1, decoder_layers=1,
                                                 encoder_attention_heads=2, decoder_attention_heads=2,
                                                 encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=64))
    with pytest.raises(gp.TraceError, match="takes 'input_features' as its main input"):
        gp.hf.prune(s2t)


def test_whisper_gets_its_log_mel_frames_and_decoder_ids():
    """hf.prune(whisper) without inputs was refused; its encoder takes exactly 2 x max_source_positions frames."""
    torch.manual_seed(0)
    whisper = T.WhisperForConditionalGeneration(T.WhisperConfig(
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
        encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=64, num_mel_bins=16, max_source_positions=16,
        max_target_positions=32, pad_token_id=1, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2,
        use_cache=False)).eval()
    inputs = gp.hf.example_inputs(whisper, batch=3)
    assert inputs["input_features"].shape == (3, 16, 32) and inputs["decoder_input_ids"].shape == (3, 4)
    _, rep = gp.hf.prune(whisper, measure_latency=False, verify=True)
    assert rep.oracle.verdict == "PASS" and rep.params_after < rep.params_before


def test_save_pruned_needs_a_graphprune_model(tmp_path):
    with pytest.raises(gp.GraphpruneError, match="graphprune.hf.prune"):
        gp.save_pruned(H.build("bert"), tmp_path)
    with pytest.raises(gp.GraphpruneError, match="graphprune.json"):
        gp.load_pruned(tmp_path)


def test_eager_attention_sites_are_found_too():
    # matmul -> scale/mask -> softmax -> matmul, instead of fused SDPA
    model = gp.hf.prepare(H.build("llama-gqa"))
    model.set_attn_implementation("eager")
    g = gp.trace(model, (), gp.hf.example_inputs(model))
    assert len(attention_sites(g)) == 2
    assert _kinds(g) == {"head": 2, "query_group": 2, "head_dim": 3, "ffn": 2, "hidden": 1}


@pytest.mark.parametrize("method", ["record", "export"])
def test_no_grad_blocks_in_forward_are_traced_through(method, monkeypatch):
    # torch.export wraps a no_grad region in a higher-order op; its body must be seen, or the
    # channels it touches would freeze (HF computes RoPE tables this way). The recorder sees
    # the body's ops as any others.
    monkeypatch.setenv("GRAPHPRUNE_TRACE", "export" if method == "export" else "auto")
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)
            self.register_buffer("s", torch.rand(8) + 0.5)

        def forward(self, x):
            with torch.no_grad():
                s = self.s * 2.0 + 1.0
            return self.b(self.a(x) * s)

    m = M().eval()
    args = (torch.randn(3, 4),)
    g = gp.trace(m, args)
    assert g.program.trace().method == method
    if method == "export":
        assert any(n.name.count("/") for n in g.ir.nodes)  # inlined body
    grp = g.group_of("a.weight", 0)
    assert grp.prunable and {"s", "b.weight"} <= {mem.name for mem in grp.members}
    plan = gp.plan(g, m, 0.5)
    assert gp.verify(m, args, plan, g).passed


def test_rope_head_dim_goes_in_rotation_pairs_exactly():
    model = gp.hf.prepare(H.build("llama-gqa"))
    inputs = gp.hf.example_inputs(model)
    g = gp.trace(model, (), inputs)
    rope = next(grp for grp in g.groups if grp.kind == "head_dim" and "model.rotary_emb.inv_freq" in
                {m.name for m in grp.members})
    # dropping rotation pair k removes dims k and k + 4 of every q/k head (rotate_half pairs them)
    q_rows = rope.positions("model.layers.0.self_attn.q_proj.weight", 1, dim=0)
    assert q_rows[:2].tolist() == [1, 5] and len(q_rows) == 16  # the pair (2 rows) in each of 8 query heads
    model, report = gp.hf.prune(model, inputs, ratio=0.5, targets=("head_dim",), verify=True)
    assert report.oracle.passed and rope.id in report.oracle.checked_groups, report.oracle
    attn = model.model.layers[0].self_attn
    assert (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features) == (32, 16, 16)
    assert model.model.rotary_emb.inv_freq.shape == (2,)
    assert not report.sync.loadable and "rescale" in report.sync.reason


def test_a_speech_model_gets_a_waveform_and_prunes_without_given_inputs():
    """hf.prune(wav2vec2) with no inputs raised "takes 'input_values' as its main input, which example_inputs
    does not build"; it now builds a quarter second of waveform, and the prune holds the oracle."""
    cfg = T.Wav2Vec2Config(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, conv_dim=(16, 16), conv_stride=(5, 4), conv_kernel=(10, 4),
                                      num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    torch.manual_seed(0)
    model = T.Wav2Vec2ForCTC(cfg).eval()
    inputs = gp.hf.example_inputs(model, batch=3)
    assert list(inputs) == ["input_values"] and inputs["input_values"].shape == (3, 4000)
    _, rep = gp.hf.prune(model, measure_latency=False, verify=True)
    assert rep.oracle.passed and rep.params_after < rep.params_before


def test_config_sync_names_only_sizes_the_prune_changed():
    """MobileViT's stages have head dims 16, 20 and 24; a prune that cut FFN units alone said the config
    was left as it was because "head dims differ between layers", sizes it had not touched."""
    torch.manual_seed(0)
    model = T.MobileViTModel(T.MobileViTConfig(image_size=64, hidden_sizes=[32, 40, 48],
                                               neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64], num_attention_heads=2))
    _, rep = gp.hf.prune(model.eval(), ratio=0.25, targets=("ffn",), measure_latency=False)
    assert not rep.sync.loadable and "FFN sizes differ between layers" in rep.sync.reason
    assert re.search(r"differ between layers \(\d+ -> \d+, \d+ -> \d+", rep.sync.reason), rep.sync.reason  # before -> after
    assert "head" not in rep.sync.reason


def test_a_model_built_with_eager_attention_reloads_with_it(tmp_path):
    """config.to_dict() leaves out the attention implementation; eager and SDPA attention trace into different graphs,
    so a model rebuilt with the default (SDPA) took none of the saved plan's group ids: load_pruned refused the
    checkpoint of a model built with attn_implementation="eager", with the same transformers version."""
    torch.manual_seed(0)
    config = T.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=128, vocab_size=128, max_position_embeddings=64, use_cache=False,
                           attn_implementation="eager")
    model = T.LlamaForCausalLM(config).eval()
    inputs = {"input_ids": torch.randint(3, 128, (2, 16)), "attention_mask": torch.ones(2, 16, dtype=torch.long)}
    model, _ = gp.hf.prune(model, inputs, ratio=0.3, measure_latency=False)
    gp.hf.save_pruned(model, tmp_path)
    loaded = gp.hf.load_pruned(tmp_path)
    assert loaded.config._attn_implementation == "eager"
    with torch.no_grad():
        assert max_abs_diff(loaded(**inputs), model(**inputs)) == 0.0


def test_a_nested_text_config_is_run_without_its_cache():
    """Llava's language model reads its text_config's use_cache, which stayed True: the trace met a DynamicCache."""
    torch.manual_seed(0)
    sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    config = T.LlavaConfig(vision_config=dict(model_type="clip_vision_model", **sizes, image_size=32, patch_size=8,
                                              projection_dim=32),
                           text_config=dict(model_type="llama", **sizes, vocab_size=128, max_position_embeddings=64,
                                            num_key_value_heads=2, use_cache=True),
                           image_token_id=127, vision_feature_layer=-2, vision_feature_select_strategy="default")
    model = T.LlavaForConditionalGeneration(config).eval()
    ids = torch.randint(3, 120, (2, 24))
    ids[:, 2:18] = 127  # the 16 patches of a 32x32 image at patch size 8
    inputs = {"input_ids": ids, "attention_mask": torch.ones(2, 24, dtype=torch.long),
              "pixel_values": torch.randn(2, 3, 32, 32)}
    model, report = gp.hf.prune(model, inputs, verify=True, measure_latency=False)
    assert report.oracle.passed and model.config.text_config.use_cache is False
    assert any(n < k for n, k in report.kept.values())


def test_sub_configs_built_with_their_own_attention_reload_with_it():
    """Llava built with eager text and SDPA vision attention came back SDPA throughout (review)."""
    from graphprune.io.checkpoint_doc import config_dict

    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    config = T.LlavaConfig(text_config=dict(model_type="llama", **sizes, num_key_value_heads=2, vocab_size=64),
                           vision_config=dict(model_type="clip_vision_model", **sizes, image_size=28, patch_size=14),
                           image_token_index=63,
                           attn_implementation={"text_config": "eager", "vision_config": "sdpa", "": "sdpa"})
    again = T.LlavaConfig.from_dict(config_dict(config))
    assert (again.text_config._attn_implementation, again.vision_config._attn_implementation) == ("eager", "sdpa")
    plain = T.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, attn_implementation="eager")
    assert config_dict(plain)["attn_implementation"] == "eager"


class _TwoMainInputs(torch.nn.Module):
    main_input_name = ["pixel_values", "task_inputs"]  # OneFormer names two

    def forward(self, pixel_values, task_inputs):
        return pixel_values.mean() + task_inputs.float().mean()


def test_a_main_input_name_that_is_a_list_is_checked_name_by_name():
    """OneFormer's ``main_input_name`` is a list: ``main in params`` raised a raw "unhashable type: 'list'"."""
    from graphprune.hf.inputs import as_batches

    model, batch = _TwoMainInputs(), {"pixel_values": torch.randn(1, 3, 8, 8), "task_inputs": torch.ones(1, 4).long()}
    assert as_batches(model, [batch], "example input")[0].keys() == batch.keys()
    with pytest.raises(gp.PlanError, match="example input 0 has no 'task_inputs', the model's main input"):
        as_batches(model, [{"pixel_values": batch["pixel_values"]}], "example input")


def test_weights_tied_by_module_prefix_are_not_missing():
    """transformers 5 ties whole modules by prefix (DAB-DETR's ``{"model.decoder.bbox_embed": "bbox_predictor"}``):
    save_pretrained writes the source alone, and load_pruned refused the folder as missing the tied names."""
    from graphprune.hf.saved import _tied

    model = torch.nn.Module()
    model._tied_weights_keys = {"model.decoder.bbox_embed": "bbox_predictor", r"lm_head\.weight": "embed.weight"}
    assert _tied(model, "model.decoder.bbox_embed.layers.0.weight") and _tied(model, "lm_head.weight")
    assert not _tied(model, "model.decoder.bbox_embed_extra.weight") and not _tied(model, "bbox_predictor.weight")


def test_a_rebuilt_model_that_does_not_run_is_refused_at_load_naming_why():
    """DAB-DETR's rebuild set a size attribute otherwise than its prune had (left as it is): the folder loaded and
    the user's first forward failed with a raw shape error. The load runs the saved example inputs first."""
    from graphprune.hf.saved import _runs

    class Broken(torch.nn.Module):
        def forward(self, input_ids):
            return torch.nn.functional.linear(input_ids.float(), torch.ones(3, 5))

    _runs(Broken(), {"input_ids": torch.ones(2, 5)}, "p")
    with pytest.raises(gp.GraphpruneError, match=r"the model rebuilt from p does not run on the example inputs it was "
                                                 r"saved with \(RuntimeError: mat1 and mat2"):
        _runs(Broken(), {"input_ids": torch.ones(2, 4)}, "p")


def test_a_layer_whose_own_config_keeps_another_attention_reloads(tmp_path):
    """set_attn_implementation does not reach configs a model copied for its layers (CLIPSeg's decoder layers stay
    on SDPA under an eager model): the prune traced that mix, a rebuild from the config alone traced eager
    everywhere, and load_pruned refused the folder save_pruned had just written ("group ... is missing")."""
    model = gp.hf.prepare(H.build("bert"))
    layer = model.encoder.layer[1].attention.self
    layer.config = copy.deepcopy(layer.config)
    model.set_attn_implementation("eager")  # the root's config; layer 1's own copy stays as it was
    assert layer.config._attn_implementation != model.config._attn_implementation
    inputs = gp.hf.example_inputs(model)
    model, _ = gp.hf.prune(model, inputs, ratio=0.3, targets=("heads",))
    with torch.no_grad():
        want = model(**inputs).last_hidden_state
    gp.hf.save_pruned(model, tmp_path / "p")
    back = gp.hf.load_pruned(tmp_path / "p")
    assert back.encoder.layer[1].attention.self.config._attn_implementation == layer.config._attn_implementation
    assert back.encoder.layer[0].attention.self.config._attn_implementation == "eager"
    with torch.no_grad():
        torch.testing.assert_close(back(**inputs).last_hidden_state, want)


def test_a_plain_value_among_the_example_inputs_is_saved_for_the_reload(tmp_path):
    """Mistral3 prunes with image_sizes as a Python list (as a tensor, its read refuses the model): save_pruned kept
    only the tensor inputs, and load_pruned replayed the plan without image_sizes, failing with a TraceError that
    blamed example inputs the user never gave at load."""
    torch.manual_seed(0)
    text = dict(model_type="mistral", vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=128, use_cache=False)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8, head_dim=8)
    cfg = T.Mistral3Config(vision_config=vision, text_config=text, image_token_id=120, spatial_merge_size=2,
                           vision_feature_layer=-1)
    model = T.Mistral3ForConditionalGeneration(cfg).eval()
    ids = torch.cat([torch.full((2, 4), 120), torch.randint(4, 100, (2, 12))], 1)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.randn(2, 3, 32, 32),
              "image_sizes": [[32, 32], [32, 32]]}
    model, report = gp.hf.prune(model, inputs, ratio=0.3)
    assert report.params_after < report.params_before
    with torch.no_grad():
        want = model(**inputs).logits
    gp.hf.save_pruned(model, tmp_path / "p")
    assert json.loads((tmp_path / "p" / "graphprune.json").read_text())["inputs"]["image_sizes"] == {
        "value": [[32, 32], [32, 32]]}
    back = gp.hf.load_pruned(tmp_path / "p")
    with torch.no_grad():
        torch.testing.assert_close(back(**inputs).logits, want)
