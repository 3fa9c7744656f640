"""What each group *is* in the model's architecture, read from the graph alone.

Roles (channel / outer / inner) say how a group sits in a tensor's layout; kinds
say what it means, so a pruning policy can pick "attention heads" or "FFN units"
without head counts or layer lists from the user:

- ``head``: a whole attention head (with GQA: a key/value head together with the
  query heads that share it). Found on the head axis of the queries *and* keys of
  every attention site (fused SDPA, or the matmul -> softmax -> matmul pattern).
- ``query_group``: GQA query heads per key/value head: on the queries' head axis,
  not on the keys'. Pruning it drops the same number of query heads from every
  key/value head, so the query/kv ratio stays an integer.
- ``head_dim``: positions inside a head (q/k contraction dim, value dim).
- ``hidden``: the residual stream. A channel written by two or more weights
  (embeddings, output projections, shortcut convs) whose outputs meet in an add.
- ``ffn``: any other channel a weight creates: FFN units, a CNN block's inner width.
- ``latent``: a channel one weight creates that a norm or a mean over its own dim then
  reads (DeepSeek-V3's MLA latent ranks through their RMSNorm, a width under GroupNorm):
  cutting it moves the model by more than the removed channels, as cutting the hidden size
  does, so the default targets of a model with attention leave it whole.
- ``channel``: a channel no weight creates (input features, vocabulary rows looked up
  by index, sequence positions), or one the model returns (logits, classes): frozen.
- ``conv_group`` / ``group_channel``: outer / inner factors of a channel a weight creates that
  are no attention head: a grouped convolution's groups, a GroupNorm's whole groups and the
  channels inside them. Rows of a table no weight computes (SD3's position grid, reshaped to
  rows x columns) are ``channel``.

Plain IR reading: no torch, no onnx.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Collection

from .ops import Ops
from .reasons import MODEL_IO

if TYPE_CHECKING:
    from .graph import DependencyGraph

FLOATS = ("float", "bfloat", "complex")  # dtype spellings of weights; integer and bool tensors are indices and masks

# a router's decisions (which experts); a per-expert vector looked up by them is a bias (kinds only: some have no rule)
ROUTING = frozenset({"aten.topk", "aten.sort", "aten.argsort", "aten.argmax", "onnx.TopK", "onnx.ArgMax"})

KINDS = ("head", "query_group", "head_dim", "hidden", "ffn", "latent", "channel", "conv_group", "group_channel")


def group_kinds(dg: "DependencyGraph") -> dict[int, str]:
    """Group id -> kind (see the module docstring)."""
    head, query, head_dim = _attention_atoms(dg)
    births = _births(dg)
    hidden = _residual_atoms(dg, births)
    out: dict[int, str] = {}
    for g in dg.groups:
        a = g.id
        if a in head:
            out[a] = "head"
        elif a in query:
            out[a] = "query_group"
        elif a in head_dim:
            out[a] = "head_dim"
        elif g.role in ("outer", "inner") and births.get(a) and not (a in hidden and g.inexact and g.role == "outer"):
            # a UNet's GroupNorm'd stream cuts exactly by whole groups: conv groups; a LayerNorm'd stream
            # a depthwise conv splits (PiT's pooling, Conv2d(d, 2d, groups=d)) is still the residual stream
            out[a] = "conv_group" if g.role == "outer" else "group_channel"
        elif a in hidden:
            out[a] = "hidden"
        elif births.get(a) and not any(r.kind == MODEL_IO for r in g.frozen):
            # (a weight's output the model returns, logits or a tied vocabulary, is no FFN unit)
            out[a] = "latent" if g.inexact else "ffn"
        else:
            out[a] = "channel"
    return out


def _atoms(dg: "DependencyGraph", value: str, dim: int) -> list[int]:
    v = dg.ir.values[value]
    if not v.rank:
        return []
    return dg.solver.atoms(dg.solver.layout((value, dim % v.rank)))


def attention_sites(dg: "DependencyGraph") -> list[tuple[str, str, str, str]]:
    """(node, q, k, v) for every attention site; k is the keys as they enter the q.k product
    (transposed in the eager pattern, so the head_dim is its dim -2 there)."""
    return [site for site, _ in attention_site_axes(dg)]


def attention_site_axes(dg: "DependencyGraph") -> list[tuple[tuple[str, str, str, str], dict[str, list[int]]]]:
    """Each attention site (:func:`attention_sites`) with the head axes of those of its operands whose layout an
    einsum spells (Funnel's ``bind,bjnd->bnij``: heads at dim 2, after the sequence); the others are laid out
    (batch, heads, seq, dim) (:func:`head_axes`)."""
    consumers: dict[str, list] = {}
    producer: dict[str, object] = {}
    dead = dg.dead  # nn.MultiheadAttention's head-averaged weights, dropped by the caller
    for n in dg.ir.nodes:
        for i in n.inputs if n.name not in dead else ():
            consumers.setdefault(i, []).append(n)
        for o in n.outputs:
            producer[o] = n
    sites = []
    for n in dg.ir.nodes:
        if n.op in Ops.Attention and len(n.inputs) >= 3:
            q, k, v = n.inputs[:3]
            sites.append(((n.name, q, k, v), {}))
        elif n.op in Ops.Softmax and n.inputs:
            qk = _walk_back(n.inputs[0], producer)
            pv = _walk_forward(n.outputs[0], consumers)
            q_k = qk.inputs[1:3] if qk is not None and qk.op in Ops.BatchedAddMatMul else qk.inputs[:2] if qk else []
            if len(q_k) == 2 and pv is not None and len(pv.inputs) >= 2:
                specs = _subscripts(qk)
                axes = {x: a for x, a in ((q_k[0], _einsum_heads(specs, 0)), (q_k[1], _einsum_heads(specs, 1)),
                                          (pv.inputs[1], _einsum_heads(_subscripts(pv), 1))) if a}
                sites.append(((n.name, q_k[0], ("T:" if _keys_transposed(specs) else "") + q_k[1], pv.inputs[1]), axes))
    return sites


def _subscripts(node) -> tuple[str, str, str] | None:
    """An einsum of two operands as (first's subscripts, second's, result's); None for any other op (or an
    ellipsis, or an implicit result)."""
    if node.op not in Ops.Einsum:
        return None
    equation = node.kwargs.get("equation") if node.op.startswith("onnx.") else (node.args[0] if node.args else None)
    if not isinstance(equation, str):
        return None
    lhs, _, rhs = equation.replace(" ", "").partition("->")
    specs = lhs.split(",")
    return (specs[0], specs[1], rhs) if len(specs) == 2 and "..." not in lhs and rhs else None


def _einsum_heads(specs: tuple[str, str, str] | None, which: int) -> list[int]:
    """Operand ``which``'s head axes: the dims whose subscript the other operand and the result share, but its
    first (the batch)."""
    if specs is None:
        return []
    mine, other, out = specs[which], specs[1 - which], specs[2]
    return [d for d, c in enumerate(mine) if d and c in other and c in out]


def _keys_transposed(specs: tuple[str, str, str] | None) -> bool:
    """Whether the keys enter the scores' product with their head_dim second to last: ``q @ k.T`` does; an einsum
    says by its subscripts (Funnel's ``bind,bjnd->bnij`` contracts the keys' last dim, and read as transposed its
    head axis was taken for the head_dim: no heads were found)."""
    if specs is None:
        return True
    q, k, out = specs
    contracted = [c for c in k if c in q and c not in out]
    return not (len(contracted) == 1 and k.index(contracted[0]) == len(k) - 1)


def _walk_back(value: str, producer: dict, hops: int = 6):
    for _ in range(hops):
        node = producer.get(value)
        if node is None:
            return None
        if node.op in Ops.BatchedMatMul or node.op in Ops.BatchedAddMatMul:
            return node
        if (node.op not in Ops.ScorePath and node.op not in Ops.SinkJoin) or not node.inputs:
            return None
        if node.op in ("aten.where", "onnx.Where"):  # where(mask, scores, fill), or (mask, fill, scores): ImageGPT
            return next((m for m in (_walk_back(v, producer, hops - 1) for v in node.inputs[1:3]) if m), None)
        value = node.inputs[0]  # a sink join's first input is the scores
    return None


def _walk_forward(value: str, consumers: dict, hops: int = 4):
    for _ in range(hops):
        users = consumers.get(value, [])
        if len(users) != 1:
            return None
        node = users[0]
        if node.op in Ops.BatchedMatMul and node.inputs and node.inputs[0] == value:
            return node
        if (node.op not in Ops.ScorePath and node.op not in Ops.SinkDrop) or not node.outputs:
            return None
        value = node.outputs[0]
    return None


def head_axes(dg: "DependencyGraph", value: str) -> list[int]:
    """The dims of an attention operand between its batch and its (seq, dim): (batch, heads, seq, dim); Hiera's
    (batch, heads, windows, seq, dim), whose windows are sequence positions; with heads folded into batch,
    (batch*heads, seq, dim)."""
    rank = dg.ir.values[value].rank
    # a rank-2 operand has no batch and no head axis: learned queries (tokens, dim) pooling a sequence
    # (vit-pytorch's PatchMerger, Perceiver's latents); their rows are output tokens, not heads
    return list(range(1, rank - 2)) if rank >= 4 else [0] if rank == 3 else []


def head_axis(dg: "DependencyGraph", value: str, frozen: Collection[int] | None = None,
              axes: list[int] | None = None) -> int:
    """The head axis of an attention operand: the first of :func:`head_axes` whose channels are not all
    frozen (Hiera's windows are), else the one before (seq, dim). ``frozen``: the solver's frozen atoms,
    where a caller asks for many operands (they are gathered from every freeze each time otherwise)."""
    frozen = dg.solver.frozen_reasons() if frozen is None else frozen
    for d in axes or head_axes(dg, value):
        if any(a not in frozen for a in _atoms(dg, value, d)):
            return d
    return -3 if dg.ir.values[value].rank >= 4 else 0


def _attention_atoms(dg: "DependencyGraph") -> tuple[set[int], set[int], set[int]]:
    head, query, head_dim = set(), set(), set()
    frozen = set(dg.solver.frozen_reasons())
    producer: dict = {}

    def movable(atoms: list[int]) -> list[int]:
        return [a for a in atoms if a not in frozen and (dg.solver.atom_size(a) or 0) > 1]

    for (_, q, k, v), axes in attention_site_axes(dg):
        transposed = k.startswith("T:")
        k = k[2:] if transposed else k
        if any(x not in dg.ir.values for x in (q, k, v)):
            continue

        def axes_of(x: str, axes=axes) -> list[int]:  # an einsum's own layout, else (batch, heads, seq, dim)
            return axes.get(x) or head_axes(dg, x)

        dims = {a for x, d in ((q, -1), (k, -2 if transposed else -1), (v, -1)) for a in _atoms(dg, x, d)}
        head_dim |= dims
        # Under GQA the query head axis factors into (kv head, query per kv head): the head is the
        # factor the keys' head axis shares, in either order (HF's repeat_interleave puts it outer,
        # x-transformers' repeat to (r kvh) inner); with no shared factor, the outer one.
        q_heads = [a for a in movable([b for d in axes_of(q) for b in _atoms(dg, q, d)]) if a not in dims]
        kv = [a for a in movable([b for x in (k, v) for d in axes_of(x) for b in _atoms(dg, x, d)]) if a not in dims]
        shared = [a for a in q_heads if a in kv] or q_heads[:1]
        if len(shared) > 1:  # keys expanded to the queries' heads carry both factors: the kv head is the one
            # the keys hold before they are repeated (the per-kv factor only the repeat makes); where no such
            # repeat is found, the outer one (HF's repeat_kv order)
            producer = producer or {o: n for n in dg.ir.nodes for o in n.outputs}  # built once, where needed
            before = _before_repeat(dg, producer, k, shared)
            shared = [a for a in shared if a in before] if before else shared[:1]
        head.update(shared)
        query.update(a for a in q_heads if a not in shared)
        head.update(a for a in kv if a not in query)
    return head, query - head, head_dim - head


_REPEATS = frozenset({"aten.expand", "aten.repeat", "aten.repeat_interleave", "aten.tile", "onnx.Expand", "onnx.Tile"})


def _before_repeat(dg: "DependencyGraph", producer: dict, value: str, shared: list[int],
                   limit: int = 48) -> set[int] | None:
    """The atoms of the keys before their repeat to the queries' head count (GQA's expand, repeat, repeat_interleave):
    the nearest repeat upstream of ``value`` (breadth first over every input: a scale or a rotary table may come
    first) whose input already holds one of the ``shared`` head factors; None where there is none.
    ``producer``: value -> the node making it."""
    queue, seen = [value], set()
    while queue and len(seen) < limit:
        v = queue.pop(0)
        node = producer.get(v)
        if v in seen or node is None:
            continue
        seen.add(v)
        if node.op in _REPEATS and node.inputs:
            x = node.inputs[0]
            held = {a for d in range(dg.ir.values[x].rank) for a in _atoms(dg, x, d)}
            if held & set(shared):
                return held
        queue.extend(i for i in node.inputs if i in dg.ir.values)
    return None


def _births(dg: "DependencyGraph") -> dict[int, set[str]]:
    """Atom -> the weights that create it (a weight carries it into an op's output and no
    activation input does). Weights count once however often they run (ALBERT shares one
    layer across depth). A value computed from weights alone (a transposed weight, a frozen
    BatchNorm's scale and bias from its four buffers) is a weight of the first weight it reads,
    and creates nothing itself: counting each op on a frozen BatchNorm's buffers as a weight
    creating the conv's channels made them a residual stream (DETR's ResNet backbone)."""
    values = dg.ir.values
    births: dict[int, set[str]] = {}
    memo: dict[str, set[int]] = {}  # value -> its atoms (an activation feeds several nodes)
    derived: dict[str, str] = {}  # a value computed from weights alone -> the weight it counts as

    def atoms_of(name: str) -> set[int]:
        got = memo.get(name)
        if got is None:
            got = memo[name] = {a for d in range(values[name].rank) for a in _atoms(dg, name, d)}
        return got

    def weight_of(name: str) -> str | None:
        v = values[name]
        if v.kind in ("param", "buffer", "const"):
            # an integer buffer is an index (ALBERT's position_ids), data for the lookup that reads it, no weight
            return (v.source or v.name) if v.rank >= 1 and v.dtype.startswith(FLOATS) else None
        return derived.get(name)

    def is_data(name: str) -> bool:
        v = values[name]
        return v.kind == "input" or (v.kind == "act" and name not in derived) or \
            (v.kind in ("buffer", "const") and v.rank >= 1 and not v.dtype.startswith(FLOATS))

    routed = _routed(dg)
    for n in dg.ir.nodes:
        if n.op in Ops.Lookup and any(i in routed for i in n.inputs) and \
                any(weight_of(i) is not None and values[i].rank == 2 for i in n.inputs):
            continue  # GPT-OSS's per-expert bias, picked by the router: it writes no channel of its own
        if not any(is_data(i) for i in n.inputs):
            src = next((w for w in map(weight_of, n.inputs) if w is not None), None)
            if src is not None:  # weight preprocessing: it acts on no data
                derived.update((o, src) for o in n.outputs)
            continue
        act_in: set[int] = set()
        param_in: dict[int, str] = {}
        for i in n.inputs:
            w = weight_of(i)
            if w is not None and values[i].rank >= 1:
                param_in.update((a, w) for a in atoms_of(i))
            else:
                act_in |= atoms_of(i)
        if not param_in:
            continue
        for o in n.outputs:
            for a in atoms_of(o):
                if a in param_in and a not in act_in:
                    births.setdefault(a, set()).add(param_in[a])
    return births


def _routed(dg: "DependencyGraph") -> set[str]:
    """Integer values computed from a router's decisions (top-k expert ids, sorted or divided)."""
    values, out = dg.ir.values, set()
    for n in dg.ir.nodes:
        if n.op in ROUTING or any(i in out for i in n.inputs):
            out.update(o for o in n.outputs if values[o].dtype.startswith(("int", "long")))
    return out


def _residual_atoms(dg: "DependencyGraph", births: dict[int, set[str]]) -> set[int]:
    """Atoms written by two or more weights and summed: the residual stream."""
    values = dg.ir.values
    producer = dg.ir.producers()
    summed: set[int] = set()
    for n in dg.ir.nodes:
        if n.op in Ops.Add and len(n.inputs) >= 2:
            a, b = n.inputs[:2]
            if values[a].kind == "act" and values[b].kind == "act" and values[a].rank and values[b].rank and \
                    _root(dg, producer, a) != _root(dg, producer, b):  # x + 0.044715 * x**3 (a tanh GELU) merges nothing
                summed.update(set(_atoms(dg, a, -1)) & set(_atoms(dg, b, -1)))
                if values[a].rank >= 3:  # NCHW convs
                    summed.update(set(_atoms(dg, a, 1)) & set(_atoms(dg, b, 1)))
    return {a for a in summed if len(births.get(a, ())) >= 2}


def _root(dg: "DependencyGraph", producer: dict, value: str, hops: int = 8) -> str:
    """``value`` walked back through ops of one activation and no weight (a power, a scale by a constant, a tanh)."""
    values = dg.ir.values
    for _ in range(hops):
        p = producer.get(value)
        if p is None:
            break
        ins = [values[r] for r in p.inputs if r in values]
        acts = [v.name for v in ins if v.kind == "act"]
        if len(acts) != 1 or any(v.kind == "param" for v in ins):
            break
        value = acts[0]
    return value
