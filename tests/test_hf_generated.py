"""Calibration text the model writes itself (graphprune/hf/generated.py, ``hf.prune(generated=N)``)."""
from __future__ import annotations

import pytest
import torch
from helpers import small_llama

import graphprune as gp
from graphprune.errors import PlanError
from graphprune.hf.generated import generated_batches, mix
from graphprune.hf.pretrained import AUTO_FACTOR

transformers = pytest.importorskip("transformers")


_llama = small_llama


def test_batches_are_seeded_samples_of_the_model():
    model = _llama()
    a = generated_batches(model, n=5, seq_len=6, batch_size=2)
    assert [b["input_ids"].shape for b in a] == [(2, 6), (2, 6), (1, 6)]
    assert all(torch.equal(b["attention_mask"], torch.ones_like(b["input_ids"])) for b in a)
    b = generated_batches(model, n=5, seq_len=6, batch_size=2)
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))  # the same seed, the same text
    c = generated_batches(model, n=5, seq_len=6, batch_size=2, seed=1)
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))
    assert not model.training


def test_near_zero_temperature_is_the_greedy_continuation_computed_without_a_cache():
    model = _llama()
    got = generated_batches(model, n=3, seq_len=8, batch_size=3, temperature=1e-6)[0]["input_ids"]
    seq = torch.full((3, 1), model.config.bos_token_id)
    with torch.no_grad():
        for _ in range(8):  # the whole sequence again each step: no KV cache to get wrong
            seq = torch.cat([seq, model(input_ids=seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(got, seq[:, 1:])


def test_mix_puts_the_generated_batches_after_the_given_ones():
    assert mix(["a", "b", "c"], [1]) == ["a", "b", "c", 1]
    assert mix(None, [1, 2]) == [1, 2]


def test_prune_calibrates_on_generated_text_alone_or_mixed():
    g = torch.Generator().manual_seed(3)
    calib = [{"input_ids": torch.randint(0, 64, (2, 10), generator=g)} for _ in range(2)]
    opts = dict(ratio=0.5, measure_latency=False, allocation="uniform")
    model, report = gp.hf.prune(_llama(), generated=4, **opts)  # no data at all: the model's own text
    assert report.compensation is not None and report.compensation.sites  # calibrated, so refit
    assert any("4 sequences of 64 tokens the model wrote itself" in n and "no text given" in n  # its 64 positions
               for n in report.notes), report.notes
    mixed, report = gp.hf.prune(_llama(), calib=calib, generated=12, **opts)
    assert any("12 sequences of 10 tokens" in n and "after the 2 batch(es) given" in n for n in report.notes), report.notes
    alone, _ = gp.hf.prune(_llama(), calib=calib, generated=0, **opts)
    # the generated batches change what the repair was fit on
    assert not all(torch.equal(a, b) for a, b in zip(mixed.state_dict().values(), alone.state_dict().values()))
    asked, _ = gp.hf.prune(_llama(), calib=calib, generated=AUTO_FACTOR * 4, **opts)
    default, report = gp.hf.prune(_llama(), calib=calib, **opts)  # the default is "auto": 4 given, so AUTO_FACTOR x 4
    assert any(f"{AUTO_FACTOR * 4} sequences of 10 tokens" in n for n in report.notes), report.notes
    for (k, a), b in zip(default.state_dict().items(), asked.state_dict().values()):
        assert torch.equal(a, b), k


def test_generated_is_refused_where_it_cannot_work(tmp_path):
    with pytest.raises(PlanError, match="whole number"):
        gp.hf.prune(_llama(), generated=-1)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64)
    with pytest.raises(PlanError, match="not one"):
        gp.hf.prune(transformers.BertModel(cfg).eval(), generated=2)
    _llama().save_pretrained(tmp_path / "src")
    with pytest.raises(PlanError, match="streamed prune"):
        gp.hf.prune(tmp_path / "src", out=tmp_path / "out", generated=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    with pytest.raises(PlanError, match="temperature"):
        generated_batches(_llama(), n=1, temperature=0)


def test_cli_calibrates_a_folder_on_generated_text_and_refuses_it_elsewhere(tmp_path, capsys):
    from graphprune.cli.main import main

    _llama().save_pretrained(tmp_path / "src")
    assert main(["prune", str(tmp_path / "src"), "-o", str(tmp_path / "out"), "--calib-generated", "3",
                 "--ratio", "0.5", "--no-latency", "--allocation", "uniform"]) == 0
    out = capsys.readouterr().out
    assert "3 sequences of 64 tokens the model wrote itself" in out, out  # capped at its 64 positions
    assert gp.hf.load_pruned(tmp_path / "out").model.layers[0].mlp.up_proj.out_features == 32
    assert main(["prune", "resnet18", "-o", str(tmp_path / "r.pt"), "--calib-generated", "3"]) == 2
    assert "not a zoo model" in capsys.readouterr().err
    assert main(["prune", str(tmp_path / "src"), "-o", str(tmp_path / "o2"), "--calib-generated", "-1"]) == 2
    assert "must be >= 0" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    assert main(["prune", str(tmp_path / "src"), "-o", str(tmp_path / "o3"), "--calib-generated", "0",
                 "--ratio", "0.5", "--no-latency", "--allocation", "uniform"]) == 0  # 0: no sampling, data-free
    assert "wrote itself" not in capsys.readouterr().out


def test_auto_matches_the_given_sequences_and_keeps_batching_invariance():
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 64, (4, 10), generator=g)
    opts = dict(ratio=0.5, measure_latency=False, allocation="uniform", generated="auto")
    two, report = gp.hf.prune(_llama(), calib=[{"input_ids": ids[:2]}, {"input_ids": ids[2:]}], **opts)
    assert any(f"{AUTO_FACTOR * 4} sequences of 10 tokens" in n for n in report.notes), report.notes  # per given
    one, _ = gp.hf.prune(_llama(), calib=[{"input_ids": ids}], **opts)  # the same data in one batch
    for (k, a), b in zip(two.state_dict().items(), one.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    _, report = gp.hf.prune(_llama(), ratio=0.5, measure_latency=False, generated="auto")  # no text: none made
    assert not any("wrote itself" in n for n in report.notes)
    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=64)
    gp.hf.prune(transformers.BertModel(cfg).eval(), calib=[{"input_ids": ids}], ratio=0.5, measure_latency=False,
                generated="auto")  # not a causal LM: "auto" makes none, and is no error


def test_repeated_share_copies_the_first_half_of_evenly_spread_rows(monkeypatch):
    import graphprune.hf.generated as generated

    model = _llama()
    plain = torch.cat([b["input_ids"] for b in generated_batches(model, n=8, seq_len=7, batch_size=8)])
    monkeypatch.setattr(generated, "REPEATED", 0.25)
    ids = torch.cat([b["input_ids"] for b in generated_batches(model, n=8, seq_len=7, batch_size=8)])
    # a quarter of 8 rows: rows 3 and 7, where int((i + 1) / 4) steps up; tokens 3..5 copy tokens 0..2,
    # the seventh (an odd length's last) stays as sampled
    for i in range(8):
        want = torch.cat([plain[i, :3], plain[i, :3], plain[i, 6:]]) if i in (3, 7) else plain[i]
        assert torch.equal(ids[i], want), i


def test_an_llm_calibrated_on_a_few_tokens_is_warned():
    """SmolLM2 pruned to 50% from 8 x 64 tokens (generated=0) came out at 77x dense perplexity, and nothing
    said the calibration was far below the 32 sequences of 128 tokens the docs measure with."""
    import transformers

    import graphprune as gp
    from graphprune.errors import PruneWarning

    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=64, use_cache=False)
    ids = torch.randint(0, 64, (8, 64), generator=torch.Generator().manual_seed(0))
    with pytest.warns(PruneWarning, match="calibration holds 512 real tokens"):
        gp.hf.prune(transformers.LlamaForCausalLM(cfg).eval(), ratio=0.3, calib=[{"input_ids": ids}], generated=0)


def test_a_config_without_bos_starts_generated_text_from_the_given_text():
    """A tiny Qwen3 config with no bos_token_id refused hf.prune(calib=...): 'names no bos_token_id ... pass calib=
    text instead', although calib= was passed. The given text's first token starts the samples instead."""
    g = torch.Generator().manual_seed(3)
    calib = [{"input_ids": torch.randint(0, 64, (2, 10), generator=g)} for _ in range(2)]
    model = _llama()
    model.config.bos_token_id = model.config.eos_token_id = None
    model.generation_config.bos_token_id = model.generation_config.eos_token_id = None
    _, report = gp.hf.prune(model, calib=calib, generated=4, ratio=0.5, measure_latency=False, allocation="uniform")
    assert any("from the given text's first token" in n for n in report.notes), report.notes
    first = int(calib[0]["input_ids"][0, 0])
    from_given = generated_batches(model, n=2, seq_len=4, start=first)
    model.config.bos_token_id = first  # the same samples as from a BOS of that token
    assert torch.equal(from_given[0]["input_ids"], generated_batches(model, n=2, seq_len=4)[0]["input_ids"])
    model.config.bos_token_id = None
    with pytest.raises(PlanError, match="names no bos_token_id"):
        gp.hf.prune(model, generated=4, ratio=0.5, measure_latency=False)  # nothing given to start from


def test_a_bos_outside_the_vocabulary_is_no_start_token():
    """GPTBigCode's default bos/eos (50256) with a smaller vocabulary: the samples started from it and the embedding
    raised a raw IndexError. Such a token is passed over: the given text's first token starts them, and without
    text a PlanError names the token and the vocabulary."""
    g = torch.Generator().manual_seed(3)
    calib = [{"input_ids": torch.randint(0, 64, (2, 10), generator=g)} for _ in range(2)]
    model = _llama()
    vocab = model.get_input_embeddings().num_embeddings
    for cfg in (model.config, model.generation_config):
        cfg.bos_token_id = cfg.eos_token_id = vocab + 5
    _, report = gp.hf.prune(model, calib=calib, generated=4, ratio=0.5, measure_latency=False, allocation="uniform")
    assert any("from the given text's first token" in n for n in report.notes), report.notes
    with pytest.raises(PlanError, match=rf"names bos_token_id {vocab + 5} and eos_token_id {vocab + 5}, outside its "
                                        rf"vocabulary of {vocab} tokens"):
        gp.hf.prune(model, generated=4, ratio=0.5, measure_latency=False)


def test_batches_with_more_than_text_get_no_generated_text():
    """Gemma3's image-text model: "auto" added text-only sequences to batches that carry pixel_values and
    token_type_ids, and calibration failed on a batch the user never gave. Such batches get none; asked for, a
    PlanError says why."""
    from graphprune.hf.pretrained import _resolve_generated
    from graphprune.options import PruneOptions

    g = torch.Generator().manual_seed(3)
    calib = [{"input_ids": torch.randint(0, 64, (2, 10), generator=g), "pixel_values": torch.randn(2, 3, 8, 8)}]
    model = _llama()
    assert _resolve_generated(model, PruneOptions(calib=calib), "auto") == 0
    assert _resolve_generated(model, PruneOptions(calib=[{"input_ids": calib[0]["input_ids"]}]), "auto") > 0
    with pytest.raises(PlanError, match=r"generated=4: sampled text has only token ids, and the calibration batches "
                                        r"also carry 'pixel_values'"):
        gp.hf.prune(model, calib=calib, generated=4, ratio=0.5, measure_latency=False)


def test_position_ids_in_the_batches_take_no_generated_text():
    """Sampled sequences carry token ids and a mask, not position_ids (review): such batches get none by default."""
    from graphprune.hf.pretrained import _resolve_generated
    from graphprune.options import PruneOptions

    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(5))
    calib = [{"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(10)[None]}]
    assert _resolve_generated(_llama(), PruneOptions(calib=calib), "auto") == 0


class _RunningMean(torch.nn.Module):
    """A causal LM whose next-token logits read the mean embedding so far. ``cache``: "kv" keeps the running sum as
    its past_key_values; "none" returns no past_key_values (FalconMamba, RecurrentGemma keep their state
    otherwise); "broken" takes a past and fails on it (xLSTM's cache_params fed back as past_key_values)."""

    def __init__(self, cache: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cache = cache
        self.emb, self.head = torch.nn.Embedding(16, 8), torch.nn.Linear(8, 16)
        self.config = type("Config", (), {"bos_token_id": 1, "eos_token_id": 2, "vocab_size": 16})()

    def get_input_embeddings(self):
        return self.emb

    def forward(self, input_ids, past_key_values=None, use_cache=False):
        e = self.emb(input_ids)
        if past_key_values is not None and self.cache == "broken":
            raise ValueError("matC_old has wrong shape")
        total, count = past_key_values if past_key_values is not None else (0.0, 0)
        sums = total + e.cumsum(1)
        logits = self.head(sums / (count + torch.arange(1, e.shape[1] + 1).view(1, -1, 1)))
        out = type("Out", (), {"logits": logits})()
        if self.cache != "none":
            out.past_key_values = (sums[:, -1:], count + e.shape[1]) if use_cache else None
        return out


def test_text_is_sampled_alike_whatever_the_model_does_with_a_cache():
    """The sampler fed past_key_values back and read it from every output: FalconMamba and RecurrentGemma (no
    such attribute) raised a raw AttributeError, xLSTM a ValueError from its own forward. Where the cache does not
    work, each step runs the whole sequence, and samples the same text as with a working cache."""
    want = generated_batches(_RunningMean("kv"), n=4, seq_len=12, batch_size=2, seed=3)
    for cache in ("none", "broken"):
        got = generated_batches(_RunningMean(cache), n=4, seq_len=12, batch_size=2, seed=3)
        assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(got, want)), cache
    assert [tuple(b["input_ids"].shape) for b in want] == [(2, 12), (2, 12)]
