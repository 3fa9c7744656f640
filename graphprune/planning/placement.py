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
DEVICES = ("cpu", "cuda")  # where kernels are timed; others (meta, mps, xpu) get the CPU's profile
DTYPES = ("float32", "float64", "float16", "bfloat16")  # kernels to time; others (float8) time as float32


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

    def on(self, runtime: str | None) -> "Placement":
        """This placement where ``runtime`` runs the model in it (eager PyTorch); :data:`CPU` for
        onnxruntime, which runs an exported model on the CPU in float32."""
        return self if runtime == "torch" else CPU

    def synced(self, fn: Callable[[], object]) -> Callable[[], None]:
        """``fn`` followed by a wait for the device's queued work, so that timing it times the work
        (a GPU runs asynchronously); ``fn`` itself on the CPU."""
        if not self.gpu:
            return fn
        import torch

        def run() -> None:
            fn()
            torch.cuda.synchronize(self.device)

        return run

    def label(self) -> str:
        """What the measurements of this placement are valid for, beside the CPU's name."""
        if self.default:
            return ""
        import torch

        if not self.gpu:
            return f"cpu {self.dtype}"
        stack = f"hip {torch.version.hip}" if torch.version.hip else f"cuda {torch.version.cuda}"
        return f"{torch.cuda.get_device_name(self.device)} {stack} {self.dtype}"


CPU = Placement()


def of_module(module) -> Placement:
    """A module's placement: the device and dtype holding most of its floating parameters and
    buffers (a bfloat16 model keeping a float32 norm is bfloat16). A device kernels are not timed on
    (meta: no kernels at all) gives :data:`CPU`; a dtype without kernels to time (float8), float32
    on that device."""
    import itertools

    held: dict[tuple[str, str], int] = {}
    for t in itertools.chain(module.parameters(), module.buffers()):
        if t.is_floating_point():
            key = (str(t.device), str(t.dtype).removeprefix("torch."))
            held[key] = held.get(key, 0) + t.numel()
    if not held:
        return CPU
    device, dtype = max(held, key=lambda k: held[k])  # ties: the first seen
    if device.split(":")[0] not in DEVICES:
        return CPU
    return Placement(device, dtype if dtype in DTYPES else "float32")
