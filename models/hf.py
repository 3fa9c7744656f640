"""Tiny random-init Hugging Face ``transformers`` models: the architecture suite.

Each entry builds the model class a user would load, from a small config (two
layers, a few heads) so the whole suite runs in seconds on a CPU. Nothing is
downloaded: configs are built in code. Example inputs come from
:func:`graphprune.hf.example_inputs`, not from here: the suite must work with no
per-model code beyond building the model.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch

TEXT = dict(vocab_size=128, max_position_embeddings=64)


def _bert(T):
    return T.BertModel(T.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=128, **TEXT))


def _roberta(T):
    return T.RobertaModel(T.RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=128, vocab_size=128, max_position_embeddings=80))


def _distilbert(T):
    return T.DistilBertModel(T.DistilBertConfig(dim=64, n_layers=2, n_heads=4, hidden_dim=128, **TEXT))


def _gpt2(T):
    return T.GPT2LMHeadModel(T.GPT2Config(n_embd=64, n_layer=2, n_head=4, n_inner=128, vocab_size=128,
                                          n_positions=64, bos_token_id=1, eos_token_id=2,
                                          use_cache=False))


def _opt(T):
    return T.OPTForCausalLM(T.OPTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, ffn_dim=128,
                                        word_embed_proj_dim=64, use_cache=False, **TEXT))


def _llama(T):
    return T.LlamaForCausalLM(T.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                            num_key_value_heads=4, intermediate_size=128, use_cache=False, **TEXT))


def _qwen2(T):
    return T.Qwen2ForCausalLM(T.Qwen2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                            num_key_value_heads=4, intermediate_size=128, use_cache=False, **TEXT))


def _mistral(T):
    return T.MistralForCausalLM(T.MistralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                                num_key_value_heads=4, intermediate_size=128, sliding_window=8,
                                                use_cache=False, **TEXT))


def _t5(T):
    return T.T5EncoderModel(T.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4, vocab_size=128,
                                       relative_attention_num_buckets=8, use_cache=False))


def _vit(T):
    return T.ViTModel(T.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, image_size=32, patch_size=8))


def _swin(T):
    return T.SwinModel(T.SwinConfig(image_size=32, patch_size=4, embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                                    window_size=4))


def _convnext(T):
    return T.ConvNextModel(T.ConvNextConfig(hidden_sizes=[16, 32], depths=[2, 2], num_stages=2, image_size=32))


def _mobilenetv2(T):
    return T.MobileNetV2Model(T.MobileNetV2Config(depth_multiplier=0.35, image_size=32))


def _resnet(T):
    return T.ResNetModel(T.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 2],
                                        layer_type="bottleneck"))


# Beyond the list: tried by tools/bench_hf_suite.py, reported whatever happens.
def _albert(T):
    return T.AlbertModel(T.AlbertConfig(embedding_size=32, hidden_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, intermediate_size=128, **TEXT))


def _gpt_neox(T):
    return T.GPTNeoXForCausalLM(T.GPTNeoXConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=128, rotary_pct=0.5, use_cache=False, **TEXT))


def _phi(T):
    return T.PhiForCausalLM(T.PhiConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128, partial_rotary_factor=0.5, use_cache=False, **TEXT))


def _gemma(T):
    return T.GemmaForCausalLM(T.GemmaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=2, head_dim=16, intermediate_size=128,
                                            use_cache=False, **TEXT))


def _falcon(T):
    return T.FalconForCausalLM(T.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              use_cache=False, vocab_size=128))


def _deberta(T):
    return T.DebertaV2Model(T.DebertaV2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=128, **TEXT))


def _clip_vision(T):
    return T.CLIPVisionModel(T.CLIPVisionConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                intermediate_size=128, image_size=32, patch_size=8))


def _bart(T):
    return T.BartModel(T.BartConfig(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                                    decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                                    use_cache=False, **TEXT))


# The architectures a subagent playing a new user tried on 2026-12-06, each found a bug or a gap
def _falcon_gqa(T):  # the fused [kv groups, queries per group + 2, head_dim] projection, list-indexed
    return T.FalconForCausalLM(T.FalconConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_kv_heads=2,
                                              new_decoder_architecture=True, use_cache=False, vocab_size=128))


def _gemma2(T):  # tanh soft cap between q.k and the softmax
    return T.Gemma2ForCausalLM(T.Gemma2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              num_key_value_heads=2, head_dim=16, intermediate_size=128,
                                              attn_logit_softcapping=50.0, use_cache=False, **TEXT))


def _phi3(T):  # q/k/v split at config.num_attention_heads * head_dim
    return T.Phi3ForCausalLM(T.Phi3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          num_key_value_heads=2, intermediate_size=128, pad_token_id=0,
                                          bos_token_id=1, eos_token_id=2, use_cache=False, **TEXT))


def _mpnet(T):  # position bias added to the scores in place
    return T.MPNetModel(T.MPNetConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, **TEXT))


def _bloom(T):  # ALiBi slopes computed per head: heads frozen, with the reason
    return T.BloomForCausalLM(T.BloomConfig(hidden_size=64, n_layer=2, n_head=4, use_cache=False, vocab_size=128))


def _t5_full(T):  # encoder-decoder that needs decoder ids
    return T.T5ForConditionalGeneration(T.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                                   vocab_size=128, use_cache=False, decoder_start_token_id=0))


def _dinov2(T):  # saved under older weight names by transformers 5
    return T.Dinov2Model(T.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32,
                                        patch_size=8))


def _segformer(T):  # a reshape by the input's channel count after the sequence reduction
    return T.SegformerForSemanticSegmentation(T.SegformerConfig(
        image_size=64, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[32, 64],
        num_attention_heads=[1, 2], decoder_hidden_size=64, num_labels=5, patch_sizes=[7, 3], strides=[4, 2],
        mlp_ratios=[4, 4]))


def _efficientnet(T):  # conv2d(padding="same")
    return T.EfficientNetForImageClassification(T.EfficientNetConfig(image_size=64, width_coefficient=0.25,
                                                                     depth_coefficient=0.25, num_labels=10,
                                                                     hidden_dim=320))


def _convnextv2(T):  # GRN mixes channels: nothing oracle-exact to check
    return T.ConvNextV2Model(T.ConvNextV2Config(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                                                image_size=64))


def _mixtral(T):  # experts stacked (E, out, in) through a grouped product: units go from every expert at once
    return T.MixtralForCausalLM(T.MixtralConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                num_key_value_heads=2, intermediate_size=128, num_local_experts=4,
                                                num_experts_per_tok=2, use_cache=False, **TEXT))


def _qwen2_moe(T):  # routed experts beside a dense shared expert; histc on int32 off the CPU
    return T.Qwen2MoeForCausalLM(T.Qwen2MoeConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                  num_key_value_heads=2, intermediate_size=128, num_experts=4,
                                                  num_experts_per_tok=2, moe_intermediate_size=32,
                                                  shared_expert_intermediate_size=64, decoder_sparse_step=1,
                                                  use_cache=False, **TEXT))


def _olmoe(T):  # experts, and q/k norms over the heads (inexact head groups)
    return T.OlmoeForCausalLM(T.OlmoeConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                            num_key_value_heads=4, intermediate_size=128, num_experts=4,
                                            num_experts_per_tok=2, use_cache=False, **TEXT))


def _whisper(T):  # log-mel input_features at the one length the encoder takes, with decoder ids
    return T.WhisperForConditionalGeneration(T.WhisperConfig(
        d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16, max_source_positions=16, max_target_positions=32,
        vocab_size=128, use_cache=False, decoder_start_token_id=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        suppress_tokens=[], begin_suppress_tokens=[]))


def _detr(T):  # a frozen BatchNorm written as x * scale + bias in its ResNet backbone
    return T.DetrModel(T.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=T.ResNetConfig(
            embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], out_features=["stage4"]),
        d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=64, decoder_ffn_dim=64, num_queries=5))


EXTRA: Dict[str, Callable] = {
    "albert": _albert, "gpt-neox": _gpt_neox, "phi": _phi, "gemma": _gemma, "falcon": _falcon,
    "deberta-v2": _deberta, "clip-vision": _clip_vision, "bart": _bart,
    "falcon-gqa": _falcon_gqa, "gemma2-softcap": _gemma2, "phi3": _phi3, "mpnet": _mpnet, "bloom": _bloom,
    "t5": _t5_full, "dinov2": _dinov2, "segformer": _segformer, "efficientnet": _efficientnet,
    "convnextv2": _convnextv2, "mixtral": _mixtral, "qwen2-moe": _qwen2_moe, "olmoe": _olmoe, "whisper": _whisper,
    "detr": _detr,
}

SUITE: Dict[str, Callable] = {
    "bert": _bert, "roberta": _roberta, "distilbert": _distilbert, "gpt2": _gpt2, "opt": _opt,
    "llama-gqa": _llama, "qwen2": _qwen2, "mistral": _mistral, "t5-encoder": _t5, "vit": _vit,
    "swin": _swin, "convnext": _convnext, "mobilenetv2": _mobilenetv2, "resnet": _resnet,
}


def build(name: str, seed: int = 0) -> torch.nn.Module:
    """A random-init suite model in eval mode, norms randomised so they are no identities."""
    import transformers as T

    builders = {**SUITE, **EXTRA}
    if name not in builders:
        raise KeyError(f"unknown suite model '{name}'; choose one of {sorted(builders)}")
    torch.manual_seed(seed)
    model = builders[name](T).eval()
    with torch.no_grad():  # fresh norms are identities, which would hide a wrong slice of them
        for mod in model.modules():
            for pname in ("weight", "bias"):
                p = getattr(mod, pname, None)
                if isinstance(p, torch.nn.Parameter) and p.dim() == 1 and "Norm" in type(mod).__name__:
                    p.add_(torch.randn_like(p) * 0.1)
    return model
