"""Mixture-of-experts layers (transformers' Mixtral and Qwen2-MoE): the experts' stacked (E, K, N) weights are
read through a grouped matrix product (graphprune/rules/linear.py), whose FFN units go from every expert
at once, at multiples of 8 (graphprune/steps.py: torch's kernel needs 16-byte strides), and whose MACs
count every routed row."""
from __future__ import annotations

import copy

import pytest
import torch

import graphprune as gp
from graphprune.hf.converted import ConvertedCheckpoint
from graphprune.io.lazy_checkpoint import LazyCheckpoint

T = pytest.importorskip("transformers")

HIDDEN, INTER, EXPERTS, LAYERS = 64, 64, 4, 2


def _mixtral(top_k: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = T.MixtralConfig(hidden_size=HIDDEN, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=4,
                          num_key_value_heads=2, num_local_experts=EXPERTS, num_experts_per_tok=top_k, vocab_size=128,
                          max_position_embeddings=64, use_cache=False)
    return T.MixtralForCausalLM(cfg).eval()


def test_expert_units_prune_exactly_in_every_expert_and_reload(tmp_path):
    """The default call on Mixtral refused: every expert weight was frozen by an op with no rule."""
    model = _mixtral()
    dense = copy.deepcopy(model)
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(1))
    pruned, report = gp.hf.prune(model, {"input_ids": ids}, budget={"params": 0.8}, verify=True)
    assert report.oracle.verdict == "PASS" and report.params_after <= 0.8 * report.params_before
    widths = {layer.mlp.experts.down_proj.shape[2] for layer in pruned.model.layers}
    assert all(w < INTER and w % 8 == 0 for w in widths)  # 16-byte strides at 2 bytes an element
    for layer in pruned.model.layers:  # gate and up halves of every expert shrink with the down projection
        e = layer.mlp.experts
        assert e.gate_up_proj.shape == (EXPERTS, 2 * e.down_proj.shape[2], HIDDEN)
    other = torch.randint(0, 128, (3, 11), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert pruned(input_ids=other).logits.shape == dense(input_ids=other).logits.shape
    with torch.no_grad():  # in bfloat16 torch's grouped kernel runs where the weights allow: 16-byte strides
        assert torch.isfinite(copy.deepcopy(pruned).to(torch.bfloat16)(input_ids=other).logits.float()).all()
    gp.hf.save_pruned(pruned, tmp_path / "m")
    again = gp.hf.load_pruned(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(again(input_ids=other).logits, pruned(input_ids=other).logits)


def test_routed_rows_count_as_macs():
    """Qwen2-MoE's MACs read the same whatever its top-k: the experts' products were not counted. Each
    token sends top_k rows through gate_up (K=64 -> N=2*64) and down (64 -> 64) in every layer."""
    ids = torch.randint(0, 128, (2, 16))
    macs = {k: gp.count_macs(_mixtral(k), (), {"input_ids": ids}) for k in (1, 2)}
    tokens = ids.numel()
    assert macs[2] - macs[1] == tokens * LAYERS * (HIDDEN * 2 * INTER + INTER * HIDDEN)


def test_a_checkpoint_with_one_tensor_per_expert_reads_back_the_stacked_weights(tmp_path):
    """save_pretrained (and Mixtral on the hub) stores each expert's projections apart; the streamed prune
    read the model's own names and refused: "the checkpoint has no tensor 'model.layers.0.mlp.gate.weight'"."""
    model = _mixtral()
    model.save_pretrained(tmp_path / "src")
    ckpt = ConvertedCheckpoint(LazyCheckpoint(tmp_path / "src"), model)
    own = model.state_dict()
    assert "model.layers.0.mlp.experts.gate_up_proj" not in ckpt.ckpt  # stored apart, under other names
    for name, t in own.items():
        if name.startswith("model.layers") and name in ckpt:
            assert torch.equal(ckpt.get(name), t), name
    assert all(name in ckpt for name in own if ".mlp." in name)


def test_a_streamed_moe_prune_reloads(tmp_path):
    model = _mixtral()
    model.save_pretrained(tmp_path / "src")
    calib = [{"input_ids": torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(k))} for k in range(2)]
    report = gp.hf.prune(tmp_path / "src", out=tmp_path / "out", calib=calib, budget={"params": 0.8})
    assert report.params_after <= 0.8 * report.params_before
    pruned = gp.hf.load_pruned(tmp_path / "out")
    widths = [layer.mlp.experts.down_proj.shape[2] for layer in pruned.model.layers]
    assert all(w < INTER and w % 8 == 0 for w in widths)
    assert sum(p.numel() for p in pruned.parameters()) == report.params_after
    # what the blocks leave whole (embeddings, final norm, head) is the source model's, read back exactly
    source = model.state_dict()
    for name, t in pruned.state_dict().items():
        if not name.startswith("model.layers."):
            assert torch.equal(t, source[name]), name
    with torch.no_grad():
        assert torch.isfinite(pruned(input_ids=torch.randint(0, 128, (3, 11))).logits).all()


def test_a_streamed_model_whose_head_is_stored_under_another_name_reloads_it(tmp_path):
    """GPT-NeoX stores its untied lm_head as embed_out: the streamed folder keeps that name, and load_pruned read
    the model's own names only, skipping the head in silence: it stayed to_empty's uninitialised memory."""
    torch.manual_seed(0)
    model = T.GPTNeoXForCausalLM(T.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                 intermediate_size=64, vocab_size=96, max_position_embeddings=64,
                                                 tie_word_embeddings=False, use_cache=False)).eval()
    model.save_pretrained(tmp_path / "src")
    calib = [{"input_ids": torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(k))} for k in range(2)]
    gp.hf.prune(tmp_path / "src", out=tmp_path / "out", calib=calib, ratio=0.25)
    pruned = gp.hf.load_pruned(tmp_path / "out")
    assert torch.equal(pruned.lm_head.weight, model.lm_head.weight)  # heads and FFN units go; the head stays


@pytest.mark.skipif(not hasattr(T, "GptOssConfig"), reason="GPT-OSS is in transformers from 4.55")
def test_gpt_oss_experts_prune_by_unit_with_their_sinks_and_biases(tmp_path):
    """GPT-OSS: attention sinks, gate and up interleaved in one projection, and a per-expert bias picked by the
    router and added to the grouped product. Its heads read as no heads, its experts' units froze on the strided
    slice, and the bias made them look like the residual stream: the default call cut the hidden size."""
    torch.manual_seed(0)
    cfg = T.GptOssConfig(vocab_size=128, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, intermediate_size=INTER, num_local_experts=EXPERTS,
                         num_experts_per_tok=2, sliding_window=8, use_cache=False, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2)
    model = T.GptOssForCausalLM(cfg).eval()
    g = gp.trace(gp.hf.prepare(model), (), gp.hf.example_inputs(model))
    kinds = {m.name: grp.kind for grp in g.groups for m in grp.members if m.dim == 2 and "gate_up_proj" in m.name}
    assert kinds and set(kinds.values()) == {"ffn"}, kinds
    pruned, report = gp.hf.prune(model, budget={"params": 0.8}, uniform=True, verify=True)  # one width: loadable
    assert report.oracle.verdict == "PASS" and report.sync.loadable, (report.oracle, report.sync)
    assert pruned.config.hidden_size == HIDDEN and pruned.config.intermediate_size < INTER
    assert pruned.model.layers[0].self_attn.sinks.shape[0] == pruned.config.num_attention_heads
    pruned.save_pretrained(tmp_path)
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, pruned(input_ids=ids).logits)


class _CountedExperts(torch.nn.Module):
    """JetMoE's experts: tokens sorted by expert, split by counts read from data (``.tolist()``), one matrix product
    per expert on a stacked (experts, out, in) weight, then put back in order."""

    def __init__(self, d: int = 32, hidden: int = 64, experts: int = 4) -> None:
        super().__init__()
        self.experts, self.router = experts, torch.nn.Linear(d, experts, bias=False)
        self.w_in = torch.nn.Parameter(torch.randn(experts, hidden, d) * 0.1)
        self.w_out = torch.nn.Parameter(torch.randn(experts, d, hidden) * 0.1)

    def forward(self, x):
        _, idx = self.router(x).topk(1, dim=1)
        counts = torch.zeros(x.shape[0], self.experts).scatter(1, idx, 1).long().sum(0).tolist()
        _, order = idx.flatten().sort(0)
        xs = x[order].split(counts, dim=0)
        h = torch.cat([torch.nn.functional.linear(xs[i], self.w_in[i]) for i in range(self.experts)], 0).relu()
        hs = h.split(counts, dim=0)
        ys = torch.cat([torch.nn.functional.linear(hs[i], self.w_out[i]) for i in range(self.experts)], 0)
        return torch.zeros_like(x).index_add(0, order, ys)


class _CountedMoE(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp, self.moe, self.head = torch.nn.Linear(16, 32), _CountedExperts(), torch.nn.Linear(32, 8)

    def forward(self, x):
        h = self.inp(x)
        return self.head(h + self.moe(h))


def test_experts_split_by_counts_read_from_data_prune_their_units():
    """Split sizes read from data are no constants a rewrite could change: they were carried as sizes and the
    rewrite died on numpy's TypeError ("Use () not None as shape arguments"). The token dim they split keeps its
    size; the experts' units are cut, proven by the oracle."""
    torch.manual_seed(0)
    model, x = _CountedMoE().eval(), torch.randn(24, 16)
    model, report = gp.prune(model, (x,), ratio=0.5, verify=True, measure_latency=False)
    assert report.oracle.passed
    assert model.moe.w_in.shape[:2] == (4, 32) and model.moe.w_out.shape[::2] == (4, 32)  # 64 units to 32
    assert model(torch.randn(24, 16)).shape == (24, 8)
