"""Write a synthetic Llama-architecture checkpoint (random weights, sharded safetensors) of any
size, shard by shard, without ever holding the model: for the streaming benchmarks.

    .venv/bin/python tools/make_llama_checkpoint.py out/llama-3b --preset llama-3.2-3b --dtype bfloat16

Presets copy the public configs' sizes (no download): llama-3.2-3b (3.2 B parameters), llama-3.2-1b,
llama-2-7b, and tiny (for a quick check). Weights are N(0, 0.02) (norm weights 1), seeded, so two
runs write the same bytes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import transformers

from graphprune.io.lazy_checkpoint import ShardWriter

PRESETS = {
    "llama-3.2-3b": dict(vocab_size=128256, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, tie_word_embeddings=True,
                         rope_theta=500000.0, max_position_embeddings=131072),
    "llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True,
                         rope_theta=500000.0, max_position_embeddings=131072),
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=32, tie_word_embeddings=False),
    "tiny": dict(vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                 num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True),
}


def config(preset: str) -> transformers.LlamaConfig:
    cfg = transformers.LlamaConfig(**PRESETS[preset])
    cfg.architectures = ["LlamaForCausalLM"]
    return cfg


def write(out: Path, preset: str, dtype: torch.dtype, shard_bytes: int = 1 << 30) -> dict:
    cfg = config(preset)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(0)
    writer = ShardWriter(out, shard_bytes)
    n = 0
    try:
        for name, t in model.state_dict().items():
            if cfg.tie_word_embeddings and name == "lm_head.weight":
                continue  # stored once, as the embeddings (as transformers saves a tied head)
            if name.endswith("norm.weight"):
                value = torch.ones(t.shape, dtype=dtype)
            else:
                value = (torch.randn(t.shape, generator=gen) * 0.02).to(dtype)
            writer.add(name, value)
            n += value.numel()
        cfg.dtype = str(dtype).replace("torch.", "")
        writer.close({"config.json": json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=str).encode()})
    except BaseException:
        writer.abort()
        raise
    return {"preset": preset, "params": n, "bytes": writer.total_bytes, "shards": len(writer.shards)}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--preset", default="llama-3.2-3b", choices=sorted(PRESETS))
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ns = p.parse_args(argv)
    t = time.perf_counter()
    info = write(ns.out, ns.preset, getattr(torch, ns.dtype))
    print(f"{ns.out}: {info['params'] / 1e9:.2f} B parameters, {info['bytes'] / 2**30:.2f} GiB in {info['shards']} "
          f"shard(s), {time.perf_counter() - t:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
