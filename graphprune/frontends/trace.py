"""A traced program: the graph the interpreter runs and what the lowering reads (a recording, or torch.export's)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Trace:
    """A traced program: the graph the interpreter runs and what the lowering reads."""
    graph: torch.fx.Graph | None  # None for an exported program (``ep.graph``)
    in_spec: Any  # pytree spec of (args, kwargs): how a batch maps onto the placeholders
    user_inputs: list[str]  # placeholder names, in order
    kinds: dict[str, tuple[str, str]] = field(default_factory=dict)  # node name -> (param|buffer|const, path)
    method: str = "record"  # "record" (on stand-ins on ``device``) or "export"
    device: str = "meta"  # where a recorded forward ran: "meta" or "real"
    ep: Any = None  # the ExportedProgram when method == "export"
    root: dict = field(default_factory=dict)  # get_attr target -> tensor, for the GraphModule
    hidden: tuple[str, ...] = ()  # registered paths of tensors held by called modules outside the registry
    opaque: tuple[str, ...] = ()  # modules recorded as one call each (frontends/torch_opaque.py), on the real weights
    reads: tuple[tuple[str, str], ...] = ()  # (path, the read that made it one call) of those modules
    _gm: torch.fx.GraphModule | None = None

    @property
    def gm(self) -> torch.fx.GraphModule:
        """The graph as a GraphModule with weights as get_attr, built when first run (code
        generation costs as much as recording; a meta recording's check runs it once, on
        the real weights: frontends/torch_trace.py)."""
        if self._gm is None:
            self._gm = self.ep.module() if self.ep is not None else torch.fx.GraphModule(self.root, self.graph)
        return self._gm

    def nodes(self):
        """The lowering's view: the exported graph (weights lifted as inputs) or the recorded one."""
        return self.ep.graph.nodes if self.ep is not None else self.graph.nodes

    def input_shapes(self) -> list[tuple[int, ...]]:
        """The traced shapes of the tensor inputs, in flattened order."""
        names = set(self.user_inputs)
        return [tuple(n.meta["val"].shape) for n in self.nodes()
                if n.op == "placeholder" and n.name in names and isinstance(n.meta.get("val"), torch.Tensor)]
