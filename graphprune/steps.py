"""Channel multiples that ops need of the groups they read, whatever ``round_to`` says.

torch's grouped matrix product for mixture-of-experts layers (``torch._grouped_mm`` on the CPU, which
transformers calls where the weights allow) requires every stride of its operands to be a multiple of
16 bytes: a Mixtral whose expert width was cut to 57 raised "strides should be multiple of 16 bytes".
Eight elements are 16 bytes in float16 and bfloat16 (four in float32): a group an expert weight carries
keeps a multiple of 8, so the pruned model runs in any of them.

Plain IR reading: no torch, no onnx.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .ir import Ref
from .ops import Ops

if TYPE_CHECKING:
    from .graph import DependencyGraph

GROUPED_MM_STEP = 8  # 16-byte strides at 2 bytes an element


def op_steps(dg: "DependencyGraph") -> dict[int, int]:
    """Group id -> the channel multiple its ops need (absent: any), computed once per graph."""
    got = getattr(dg, "_op_steps", None)
    if got is None:
        got = {}
        for n in dg.ir.nodes:
            if n.op in Ops.GroupedMatMul and len(n.args) > 1 and isinstance(n.args[1], Ref):
                w = dg.ir.values[n.args[1].name]
                for d in range(1, w.rank):  # the expert dim 0 is frozen by its rule
                    for atom in dg.solver.atoms(dg.solver.layout((w.name, d))):
                        got[atom] = GROUPED_MM_STEP
        dg._op_steps = got
    return got
