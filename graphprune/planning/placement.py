"""Where a PyTorch model runs: its device and dtype, which decide the widths its kernels favour.

A GPU's tensor cores and a CPU's bfloat16 (AMX) kernels favour other channel multiples than the
float32 CPU kernels, so the width profile (measure.py) and the op latency table (latency_table.py)
are measured, and cached, per placement: the blocks and ops run on the model's own device in its
own dtype. onnxruntime models are timed on the CPU in float32 (:data:`CPU`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

GPU_BATCH = 64  # a GPU runs a block at batch 1 launch-bound, every width alike: the profile batches it


@dataclass(frozen=True)
class Placement:
    device: str = "cpu"  # a torch device string: "cpu", "cuda", "cuda:1"
    dtype: str = "float32"  # a torch dtype's name: "float32", "float16", "bfloat16"

    @property
    def gpu(self) -> bool:
        return self.device.startswith("cuda")

    @property
    def default(self) -> bool:
        """The CPU in float32: the placement every profile had before placements (its cache keys kept)."""
        return self == CPU

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def synchronizer(self) -> Callable[[], None]:
        """Waits for the device's queued work (a GPU runs asynchronously); nothing on the CPU."""
        if not self.gpu:
            return lambda: None
        import torch

        return lambda: torch.cuda.synchronize(self.device)

    def label(self) -> str:
        """What the measurements of this placement are valid for, beside the CPU's name."""
        if self.default:
            return ""
        import torch

        where = f"{torch.cuda.get_device_name(self.device)} cuda {torch.version.cuda}" if self.gpu else "cpu"
        return f"{where} {self.dtype}"


CPU = Placement()


def of_module(module) -> Placement:
    """A module's placement: its first floating parameter's (or buffer's) device and dtype."""
    import itertools

    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            return Placement(str(t.device), str(t.dtype).removeprefix("torch."))
    return CPU
