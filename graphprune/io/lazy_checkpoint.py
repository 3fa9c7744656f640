"""Checkpoints bigger than memory: safetensors read one tensor at a time (mmap), written shard by
shard into a folder that appears whole or not at all.

A Hugging Face folder holds ``model.safetensors`` or ``model-0000k-of-0000n.safetensors`` shards
with ``model.safetensors.index.json`` (tensor name -> shard). :class:`LazyCheckpoint` opens each
shard once, memory-mapped, and copies out only the tensors asked for, in their stored dtype.
:class:`ShardWriter` writes tensors as they come into numbered shards of at most
``max_shard_bytes`` in a temporary folder beside the output, then the index and side files, then
renames the folder into place: a failed or interrupted run leaves no partial output.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import GraphpruneError
from ..util.atomic import public_tree

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class LazyCheckpoint:
    """The tensors of a safetensors checkpoint folder, read on demand."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        index, single = self.folder / INDEX, self.folder / SINGLE
        if index.is_file():
            self.weight_map: dict[str, str] = dict(json.loads(index.read_text())["weight_map"])
        elif single.is_file():
            with safe_open(str(single), framework="pt") as f:
                self.weight_map = {name: SINGLE for name in f.keys()}
        else:
            raise GraphpruneError(f"'{self.folder}' holds no safetensors weights ({SINGLE} or {INDEX}); save the "
                                  "model with save_pretrained(..., safe_serialization=True)")
        self._files: dict[str, object] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.weight_map

    def names(self) -> list[str]:
        return list(self.weight_map)

    def get(self, name: str) -> torch.Tensor:
        """One tensor, copied out of its memory-mapped shard in its stored dtype."""
        file = self.weight_map.get(name)
        if file is None:
            raise GraphpruneError(f"tensor '{name}' is not in the checkpoint '{self.folder}'")
        handle = self._files.get(file)
        if handle is None:
            handle = self._files[file] = safe_open(str(self.folder / file), framework="pt")
        return handle.get_tensor(name)

    def release(self) -> None:
        """Unmap the shards: the pages a read touched stay resident (and count in the process's
        RSS) while a shard is mapped; the next read maps it again."""
        self._files.clear()

    def dtype(self) -> torch.dtype:
        """The dtype most floating tensors are stored in (bf16, fp16 or fp32)."""
        counts: dict[torch.dtype, int] = {}
        for name in self.names()[:64]:
            t = self.get(name)
            if t.is_floating_point():
                counts[t.dtype] = counts.get(t.dtype, 0) + t.numel()
        return max(counts, key=counts.get) if counts else torch.float32


class ShardWriter:
    """Write a checkpoint folder tensor by tensor; ``close()`` moves it into place, ``abort()`` drops it."""

    def __init__(self, out: str | os.PathLike, max_shard_bytes: int = 2 << 30):
        self.out = Path(out)
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise GraphpruneError(f"'{self.out}' exists and is not an empty folder; choose a new output folder")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", dir=self.out.parent))
        self.max_shard_bytes = max_shard_bytes
        self.pending: dict[str, torch.Tensor] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []  # the tensor names of each written shard
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self.pending or any(name in s for s in self.shards):
            raise GraphpruneError(f"tensor '{name}' written twice")
        t = tensor.detach().contiguous()
        self.pending[name] = t
        self.pending_bytes += t.numel() * t.element_size()
        if self.pending_bytes >= self.max_shard_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        save_file(self.pending, str(self.tmp / f"shard-{len(self.shards):05d}.safetensors"), metadata={"format": "pt"})
        self.shards.append(sorted(self.pending))
        self.total_bytes += self.pending_bytes
        self.pending, self.pending_bytes = {}, 0

    def close(self, side_files: dict[str, bytes] | None = None) -> Path:
        """Name the shards as transformers does, write the index and ``side_files``, move into place."""
        try:
            self.flush()
            n = len(self.shards)
            weight_map = {}
            for k, names in enumerate(self.shards):
                final = SINGLE if n == 1 else f"model-{k + 1:05d}-of-{n:05d}.safetensors"
                os.replace(self.tmp / f"shard-{k:05d}.safetensors", self.tmp / final)
                weight_map.update({name: final for name in names})
            if n > 1:
                index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
                (self.tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True))
            for name, data in (side_files or {}).items():
                (self.tmp / name).write_bytes(data)
            public_tree(self.tmp)
            if self.out.exists():
                self.out.rmdir()  # checked empty at the start
            os.replace(self.tmp, self.out)
        except BaseException:
            self.abort()
            raise
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)
