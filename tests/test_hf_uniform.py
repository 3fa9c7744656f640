"""``uniform=True`` (CLI ``--uniform``): every layer keeps the same head and FFN counts, so the output
loads with plain ``from_pretrained`` in a process that never imports graphprune; and the CLI's
``-o out.gguf`` (issue 24)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from gguf_helpers import VOCAB, tiny_llama, tiny_tokenizer

import graphprune as gp
from graphprune.cli.main import main
from graphprune.errors import PlanError, PruneWarning

T = pytest.importorskip("transformers", reason="uniform=True is for transformers models")

# a fresh interpreter loads the saved folder with transformers alone and writes its logits
LOAD = """
import sys, numpy as np, torch, transformers
m = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
ids = torch.tensor(np.load(sys.argv[2]))
with torch.no_grad():
    np.save(sys.argv[3], m(input_ids=ids).logits.numpy())
print(sorted(k for k in sys.modules if k.split('.')[0] == 'graphprune'))
"""


def _calib(n: int = 3, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, VOCAB, (2, 16), generator=g)} for _ in range(n)]


def _widths(model) -> list[tuple[int, int, int]]:
    return [(L.self_attn.q_proj.out_features, L.self_attn.k_proj.out_features, L.mlp.up_proj.out_features)
            for L in model.model.layers]


def _kept_ffn(model, original) -> list[frozenset]:
    """Which of the original FFN units each layer kept, found by matching rows of up_proj."""
    out = []
    for L, L0 in zip(model.model.layers, original.model.layers):
        w, w0 = L.mlp.gate_proj.weight.detach(), L0.mlp.gate_proj.weight.detach()
        out.append(frozenset(int(torch.cdist(r[None], w0).argmin()) for r in w))
    return out


@pytest.fixture(scope="module")
def uniform_pruned():
    original = tiny_llama(num_attention_heads=8, num_key_value_heads=2)
    model = tiny_llama(num_attention_heads=8, num_key_value_heads=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruneWarning)
        # allocation="uniform": every kind cut by the ratio, heads too (auto may keep them: test_kinds.py)
        model, report = gp.hf.prune(model, ratio=0.5, calib=_calib(), uniform=True, round_to=1,
                                    measure_latency=False, compensate=False, allocation="uniform")
    return original, model, report


def test_every_layer_keeps_one_width_and_data_choose_which(uniform_pruned):
    original, model, report = uniform_pruned
    widths = _widths(model)
    # GQA 8/2 at half the kv groups: one kv head of 8 dims, its 4 query heads; half the 128 FFN units
    assert widths == [(32, 8, 64)] * 4
    assert report.sync.loadable, report.sync.reason
    cfg = model.config
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.intermediate_size) == (4, 1, 64)
    assert cfg.num_attention_heads % cfg.num_key_value_heads == 0  # the ratio the config can express
    assert "from_pretrained round-trip: yes" in str(report)
    assert len(set(_kept_ffn(model, original))) > 1  # how many is uniform, which is each layer's own


def test_saved_uniform_model_loads_with_plain_from_pretrained(uniform_pruned, tmp_path):
    _, model, _ = uniform_pruned
    model.save_pretrained(tmp_path / "out")
    ids = torch.randint(0, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    np.save(tmp_path / "ids.npy", ids.numpy())
    done = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "out"), str(tmp_path / "ids.npy"),
                           str(tmp_path / "logits.npy")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"  # graphprune never imported in that process
    with torch.no_grad():
        want = model(input_ids=ids).logits.numpy()
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), want, atol=1e-4, rtol=1e-4)


def test_uniform_with_refit_stays_loadable():
    model = tiny_llama(seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruneWarning)
        model, report = gp.hf.prune(model, ratio=0.25, calib=_calib(seed=2), uniform=True, round_to=1,
                                    measure_latency=False)
    assert report.compensation is not None and not report.compensation.bias_modules
    assert len(set(_widths(model))) == 1 and report.sync.loadable, report.sync.reason


def test_uniform_moves_heads_to_a_count_the_config_accepts():
    """14 heads in 7 kv groups on hidden 112: 30% leaves 5 groups, 10 heads, which LlamaConfig refuses
    (112 % 10); the nearest count it accepts is 4 groups (8 heads; 6 and 7 groups fail or are farther)."""
    model = tiny_llama(hidden_size=112, num_attention_heads=14, num_key_value_heads=7, head_dim=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PruneWarning)
        model, report = gp.hf.prune(model, ratio=0.3, calib=_calib(), uniform=True, round_to=1,
                                    measure_latency=False, compensate=False)
    assert (model.config.num_attention_heads, model.config.num_key_value_heads) == (8, 4)
    assert report.sync.loadable, report.sync.reason
    assert any("4 of 7 kv head groups kept" in n for n in report.notes)


@pytest.mark.parametrize("kw, match", [
    (dict(allocation="sensitivity"), "allocation='sensitivity' chooses them per layer"),
    (dict(targets=("heads", "ffn", "blocks")), "depth pruning"),
    (dict(targets=("head_dim",)), "attention scale"),
    (dict(ratios={"model.layers.1.mlp.up_proj": 0.75}), "would keep different counts"),
])
def test_uniform_refuses_what_breaks_one_width(kw, match):
    model = tiny_llama()
    before = [p.clone() for p in model.parameters()]
    with pytest.raises(PlanError, match=match):
        gp.hf.prune(model, ratio=0.5, calib=_calib(), uniform=True, measure_latency=False, **kw)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # refused before any rewrite


def test_uniform_refused_for_a_streamed_prune(tmp_path):
    with pytest.raises(PlanError, match="streamed prune"):
        gp.hf.prune(tmp_path, out=tmp_path / "out", calib=_calib(), uniform=True)


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    tiny_llama(seed=3).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_cli_writes_gguf_and_uniform_goes_out_as_llama(llama_folder, tmp_path):
    gguf = pytest.importorskip("gguf", reason="a .gguf OUT is written with the gguf package")
    for flags, arch in ((["--uniform"], "llama"), (["--ratios", "model.layers.1.mlp.up_proj=0.75"], "deci")):
        out = tmp_path / f"{arch}.gguf"
        rc = main(["prune", str(llama_folder), "-o", str(out), "--ratio", "0.5", "--no-latency", "--round-to", "1",
                   "--json", *flags])
        assert rc == 0 and out.exists()
        reader = gguf.GGUFReader(out)
        field = reader.fields["general.architecture"]
        assert bytes(field.parts[field.data[0]]).decode() == arch


def test_cli_refuses_bad_gguf_requests_before_work(llama_folder, tmp_path, capsys):
    cases = [(["zoo:resnet18", "-o", str(tmp_path / "r.gguf")], "GGUF is written for transformers LLMs"),
             ([str(llama_folder), "-o", str(tmp_path / "x"), "--quant", "q8_0"], "apply to a .gguf OUT only"),
             ([str(llama_folder), "-o", str(tmp_path / "x.gguf"), "--quant", "q9"], "quant 'q9'")]
    if importlib.util.find_spec("llama_cpp") is None:  # found missing after the whole prune, before
        cases.append(([str(llama_folder), "-o", str(tmp_path / "x.gguf"), "--quant", "q8_0"], "make llama-cpp"))
    for argv, message in cases:
        assert main(["prune", *argv, "--no-latency"]) != 0
        captured = capsys.readouterr()
        assert message in captured.err and "[1/" not in captured.out  # refused before the model load
        assert not list(tmp_path.iterdir())  # nothing written


def _tiny(model_type: str, **extra):
    cfg = T.AutoConfig.for_model(model_type, vocab_size=128, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                 num_key_value_heads=4, intermediate_size=128, use_cache=False, pad_token_id=0,
                                 bos_token_id=1, eos_token_id=2, **extra)
    torch.manual_seed(0)
    return T.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.skipif(not hasattr(T, "SmolLM3Config"), reason="SmolLM3 is in transformers from 4.54")
def test_a_config_without_head_dim_gets_one_where_the_model_reads_it(tmp_path):
    """SmolLM3's config has no head_dim: transformers derived 64 // 6 = 10 for 6 kept heads of 8 dims, and
    uniform=True's output did not load. Its attention reads getattr(config, "head_dim", ...), so it is written."""
    model = _tiny("smollm3")
    assert not hasattr(model.config, "head_dim")
    model, report = gp.hf.prune(model, uniform=True)
    assert report.sync.loadable, report.sync
    assert model.config.head_dim == 8 and model.config.num_attention_heads == 6
    ids = torch.randint(3, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    model.save_pretrained(tmp_path)
    loaded = T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_a_head_dim_the_model_ignores_is_taken_back():
    """GPT-2 computes its head size from n_embd and n_head and ignores a head_dim field: the one tried is
    deleted again, so the saved config is the original's."""
    cfg = T.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=8, n_positions=32, use_cache=False)
    torch.manual_seed(0)
    model = T.GPT2LMHeadModel(cfg).eval()
    before = model.config.to_dict()
    model, report = gp.hf.prune(model, ratio=0.25, targets=("heads",))
    assert not report.sync.loadable
    assert not hasattr(model.config, "head_dim") and model.config.to_dict() == before
