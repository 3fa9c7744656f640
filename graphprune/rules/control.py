"""ONNX control flow (If, Loop, Scan): the engine does not follow channels into
subgraphs, so every value that crosses one (inputs, outer-scope values a branch or
body reads, outputs) is frozen with the node named. Weights that live inside a
subgraph stay as they are. A PyTorch module whose forward reads tensor data, recorded
as one call, is such a subgraph too."""
from __future__ import annotations

from ..ir import Node
from ..reasons import CONTROL_FLOW, OPAQUE
from .registry import RuleContext, register


@register("onnx.If", "onnx.Loop", "onnx.Scan", "onnx.SequenceMap")
def _control_flow(node: Node, ctx: RuleContext) -> None:
    why = (f"crosses the control-flow subgraph of {node.where()}; graphprune does not follow channels into "
           "If/Loop/Scan bodies")
    for name in dict.fromkeys(node.inputs + node.outputs):
        ctx.freeze_value(name, CONTROL_FLOW, why)


@register("python.opaque_call")
def _opaque_call(node: Node, ctx: RuleContext) -> None:
    # a module whose forward reads tensor data, run whole (frontends/torch_opaque.py): its channels are not followed
    kind = node.meta.module_type.rpartition(".")[2]
    # the read itself and its line (frontends/torch_trace.py notes it): what a user rewrites to prune inside
    read = node.meta.note.removeprefix("the forward reads tensor data ")
    read = f" {read}" if read.startswith("(") else f" ({read})" if read else ""
    why = (f"enters or leaves module '{node.meta.module}' ({kind}), whose forward reads tensor data{read}: it is "
           "recorded as one call, so its inputs, outputs and weights keep their channels")
    for name in dict.fromkeys(node.inputs + node.outputs):
        ctx.freeze_value(name, OPAQUE, why)
