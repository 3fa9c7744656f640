"""The SliceGPT baseline of the cross-domain LLM benchmark (tools/llm_slicegpt.py) is what its paper
says: at the full residual width the rotated model computes what the original does; sliced, its
parameter count is the one the width was chosen for, and it loses more the fewer directions it keeps."""
import copy

import torch
from helpers import tool


def _slicegpt():
    return tool("llm_slicegpt")


def _llama():
    import transformers as T

    cfg = T.LlamaConfig(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=2, use_cache=False, tie_word_embeddings=True)
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # norm scales away from 1, so folding them is exercised
        for name, p in m.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    return m


def _params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def test_full_width_rotation_is_exact():
    sg, m = _slicegpt(), _llama()
    calib = [{"input_ids": torch.randint(0, 100, (2, 16))} for _ in range(3)]
    rotated = sg.slice_model(copy.deepcopy(m), calib, 64)
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(rotated(input_ids=ids).logits, m(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    assert rotated.lm_head.weight is rotated.model.embed_tokens[0].weight  # the tie survives


def test_sliced_width_meets_its_parameter_budget():
    sg, m = _slicegpt(), _llama()
    calib = [{"input_ids": torch.randint(0, 100, (2, 16))} for _ in range(3)]
    target = int(0.8 * _params(m))
    k = sg.width_for(m, target)
    sliced = sg.slice_model(copy.deepcopy(m), calib, k)
    # by hand: per layer q/k/v/o 64+32+32+64 and gate/up/down 128*3 weights per residual channel,
    # two norms, two k x k shortcuts; a 64 x k projection in and one out; embedding and final norm kept
    per_layer = lambda w: (64 + 32 + 32 + 64 + 3 * 128) * w + 2 * w + 2 * w * w  # noqa: E731
    expected = 100 * 64 + 64 + 3 * per_layer(k) + 2 * 64 * k
    assert _params(sliced) == expected <= target < 100 * 64 + 64 + 3 * per_layer(k + 1) + 2 * 64 * (k + 1)
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        ref = m(input_ids=ids).logits
        errors = [float((sg.slice_model(copy.deepcopy(m), calib, w)(input_ids=ids).logits - ref).norm() / ref.norm())
                  for w in (60, k, 32)]
    # keeping fewer principal directions loses more of the output, from a little to most of it
    assert 0 < errors[0] < errors[1] < errors[2] < 1.0


def test_a_residual_stream_in_a_subspace_slices_exactly():
    """If nothing ever writes the last 16 residual channels, slicing to 48 loses nothing: the norms
    must then divide by the same energy as before (and add the same epsilon), over 64 channels, not 48."""
    sg, m = _slicegpt(), _llama()
    with torch.no_grad():
        m.model.embed_tokens.weight[:, 48:] = 0
        for layer in m.model.layers:
            layer.self_attn.o_proj.weight[48:] = 0
            layer.mlp.down_proj.weight[48:] = 0
    calib = [{"input_ids": torch.randint(0, 100, (2, 16))} for _ in range(3)]
    sliced = sg.slice_model(copy.deepcopy(m), calib, 48)
    ids = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        ref, out = m(input_ids=ids).logits, sliced(input_ids=ids).logits
    assert float((out - ref).norm() / ref.norm()) < 1e-5  # float32 rounding only
