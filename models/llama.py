"""Llama-style decoder-only transformer (HF transformers naming).

RMSNorm, rotary position embeddings, grouped-query attention via repeat_kv,
causal SDPA, SwiGLU MLP, and an lm_head tied to the token embedding.
"""
import torch
import torch.nn.functional as F
from torch import nn

from ._init import check_config, randomize_norms, token_input


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Scale by 1/RMS over the last dim; no mean subtraction, no bias.
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LlamaRotaryEmbedding(nn.Module):
    """Produces cos/sin tables shared by all layers. inv_freq is a non-persistent
    buffer (derived from head_dim, not saved in state_dict)."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor):
        freqs = position_ids[:, :, None].float() * self.inv_freq[None, None, :]  # B, S, D/2
        emb = torch.cat((freqs, freqs), dim=-1)                                   # B, S, D
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q, k, cos, sin):
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads: B, 1, S, D
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """B, KVH, S, D -> B, KVH*n_rep, S, D (each kv head serves n_rep query heads)."""
    b, kvh, s, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(b, kvh, n_rep, s, d).reshape(b, kvh * n_rep, s, d)


class LlamaAttention(nn.Module):
    """Grouped-query causal self-attention.

    forward reads: self.head_dim (q/k/v views; the head counts are -1),
    self.num_key_value_groups (repeat_kv factor = num_heads // num_kv_heads) and
    self.scaling (float, head_dim ** -0.5, passed explicitly to SDPA).
    num_heads / num_key_value_heads are deliberately NOT stored: forward never
    needs them, and in the small config num_key_value_heads == num_key_value_groups.
    """

    def __init__(self, hidden: int, num_heads: int, num_kv_heads: int, head_dim: int):
        super().__init__()
        self.head_dim = head_dim
        self.num_key_value_groups = num_heads // num_kv_heads
        self.scaling = head_dim ** -0.5
        self.q_proj = nn.Linear(hidden, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, S = x.shape[0], x.shape[1]
        q = self.q_proj(x).view(B, S, -1, self.head_dim).transpose(1, 2)  # B, H, S, D
        k = self.k_proj(x).view(B, S, -1, self.head_dim).transpose(1, 2)  # B, KVH, S, D
        v = self.v_proj(x).view(B, S, -1, self.head_dim).transpose(1, 2)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = repeat_kv(k, self.num_key_value_groups)
        v = repeat_kv(v, self.num_key_value_groups)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scaling)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class LlamaMLP(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # SwiGLU


class LlamaDecoderLayer(nn.Module):
    def __init__(self, hidden, intermediate, num_heads, num_kv_heads, head_dim, eps):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(hidden, eps)
        self.self_attn = LlamaAttention(hidden, num_heads, num_kv_heads, head_dim)
        self.post_attention_layernorm = LlamaRMSNorm(hidden, eps)
        self.mlp = LlamaMLP(hidden, intermediate)

    def forward(self, x, cos, sin):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaForCausalLM(nn.Module):
    def __init__(self, vocab_size, hidden, intermediate, num_layers, num_heads, num_kv_heads, head_dim,
                 rms_norm_eps=1e-6, rope_theta=10000.0):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden)
        self.rotary_emb = LlamaRotaryEmbedding(head_dim, rope_theta)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(hidden, intermediate, num_heads, num_kv_heads, head_dim, rms_norm_eps)
            for _ in range(num_layers)
        )
        self.norm = LlamaRMSNorm(hidden, rms_norm_eps)
        self.lm_head = nn.Linear(hidden, vocab_size, bias=False)
        self.lm_head.weight = self.embed_tokens.weight  # tied: one Parameter, two users

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0)
        cos, sin = self.rotary_emb(x, position_ids)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.norm(x))  # logits: B, S, vocab


_CONFIGS = {
    # hidden 64 / 4 heads -> head_dim 16; 2 kv heads -> 2 query heads per kv head.
    "small": dict(vocab_size=100, hidden=64, intermediate=160, num_layers=2, num_heads=4, num_kv_heads=2,
                  head_dim=16),
    # Llama-7B sizes (MHA).
    "full": dict(vocab_size=32000, hidden=4096, intermediate=11008, num_layers=32, num_heads=32,
                 num_kv_heads=32, head_dim=128),
    # Same, with grouped-query attention (8 kv heads, 4 query heads per kv head).
    "full_gqa": dict(vocab_size=32000, hidden=4096, intermediate=11008, num_layers=32, num_heads=32,
                     num_kv_heads=8, head_dim=128),
}
_SEQ_LEN = {"small": 8, "full": 128, "full_gqa": 128}


def llama(config: str = "small") -> LlamaForCausalLM:
    model = LlamaForCausalLM(**check_config(config, _CONFIGS))
    return randomize_norms(model) if config == "small" else model


def example_inputs(config: str = "small", batch: int = 1) -> tuple:
    return (token_input(batch, check_config(config, _SEQ_LEN), check_config(config, _CONFIGS)["vocab_size"]),)
