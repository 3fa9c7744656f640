"""Hugging Face ``transformers`` support: inputs, config sync, loadable checkpoints.

The engine needs nothing model-specific: heads, GQA, head_dim and FFN units come
from the graph. This package only does what sits outside the graph:

- :func:`example_inputs` builds tracing inputs from a model's config;
- :func:`text_batches` cuts text into calibration batches with the model's tokenizer;
  :func:`generated_batches` samples them from the model itself;
- :func:`prune` wraps :func:`graphprune.prune` and then :func:`sync_config`, which
  writes the new sizes into the module attributes transformers reads and into the
  config, so ``save_pretrained`` + ``from_pretrained`` round-trip when every layer
  keeps the same sizes (``report.sync`` says whether they do, checked, not assumed);
- :func:`save_pruned` / :func:`load_pruned` store the plan beside the weights, so
  uneven per-layer sizes reload from the original config.
"""
from .generated import generated_batches
from .inputs import example_inputs, prepare
from .pretrained import prune
from .saved import load_pruned, save_pruned
from .sync import ConfigSync, sync_config
from .text import text_batches

__all__ = ["example_inputs", "prepare", "sync_config", "ConfigSync", "prune", "save_pruned", "load_pruned",
           "text_batches", "generated_batches"]
