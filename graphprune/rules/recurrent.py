"""Recurrent layers: LSTM, GRU and Elman RNN, in aten and ONNX form.

The hidden units are one index space: unit j owns rows j of every gate block of the
input and recurrent weights (gate-major, ``(gates, hidden)``), column j of the
recurrent weights and of the next layer's input weights, and channel j of the
output and the states. Removing unit j is exact: with its rows zeroed, its gates sit
at sigmoid(0) and its candidate at tanh(0) = 0, so from a zero initial state its
cell and output stay 0 and the column that reads it adds nothing. The oracle's masked
original therefore zeroes these weights too (the recurrence never exposes the
state between steps), through ``ctx.mask_weight``.

A module has one ``hidden_size`` for every layer and direction, so the torch rule
ties them all into one space; ONNX states it per node (``hidden_size`` is carried).
"""
from __future__ import annotations

from ..ir import Node, Ref
from ..reasons import RECURRENT_STATE, UNSUPPORTED
from ..spaces import SlotKey
from .registry import RuleContext, register

_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1, "LSTM": 4, "GRU": 3, "RNN": 1}
RECURRENT_OPS = frozenset({f"aten.{k}" for k in ("lstm", "gru", "rnn_tanh", "rnn_relu")}
                          | {f"onnx.{k}" for k in ("LSTM", "GRU", "RNN")})
# Activations with f(0) = 0, so a unit with zeroed weights stays 0 (ONNX lets a node choose them).
_ZERO_PRESERVING = {"Tanh", "Relu", "LeakyRelu", "ThresholdedRelu", "Softsign", "Elu", "ScaledTanh"}


# A step with zero input still moves the state (biases, the recurrent term): removing a time
# step is not the same computation as zeroing it.
_STEPS = "time steps of the recurrence at {where}: the state runs through every step"


def _gate_rows(ctx: RuleContext, key: SlotKey, gates: int, hidden: SlotKey, gate_slot: SlotKey | None) -> None:
    if gates == 1:
        ctx.tie(key, hidden)
    else:
        ctx.factor(key, [gate_slot, hidden])


def _stacked(ctx: RuleContext, key: SlotKey, dirs: int, hidden: SlotKey, dir_slot: SlotKey | None) -> None:
    """A dim that holds every direction's hidden units one after the other."""
    if dirs == 1:
        ctx.tie(key, hidden)
    else:
        ctx.factor(key, [dir_slot, hidden])


def _freeze_node(node: Node, ctx: RuleContext, kind: str, why: str) -> None:
    for name in dict.fromkeys(node.inputs + node.outputs):
        ctx.freeze_value(name, kind, f"{why} at {node.where()}")


@register("aten.lstm", "aten.gru", "aten.rnn_tanh", "aten.rnn_relu")
def _torch_rnn(node: Node, ctx: RuleContext) -> None:
    # (input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first)
    gates = _GATES[node.op.split(".")[1]]
    x, out = node.args[0].name, node.outputs[0]
    hx = node.args[1] if isinstance(node.args[1], (list, tuple)) else [node.args[1]]
    params = [r.name for r in node.args[2]]
    has_biases, num_layers, _, train, bidirectional, batch_first = node.args[3:9]
    dirs = 2 if bidirectional else 1
    per = 4 if has_biases else 2
    if len(params) != num_layers * dirs * per:
        _freeze_node(node, ctx, UNSUPPORTED, "an LSTM with proj_size (projected hidden state) is not supported")
        return
    if train:
        _freeze_node(node, ctx, UNSUPPORTED, "a recurrent layer traced in training mode (dropout between layers); "
                                             "call model.eval() before pruning")
        return
    hidden = ctx.s(params[1], 1)  # weight_hh_l0: (gates * H, H)
    gate_slot = ctx.virtual(gates, "gates") if gates > 1 else None
    dir_slot = ctx.virtual(dirs, "directions") if dirs > 1 else None
    for key in (gate_slot, dir_slot):
        if key is not None:
            ctx.hide(key, f"gates and directions of {node.where()}")
    rank = ctx.rank(x)
    ctx.tie_dims(x, out, range(rank - 1), range(rank - 1))
    _stacked(ctx, ctx.s(out, -1), dirs, hidden, dir_slot)
    batch = (0 if batch_first else 1) if rank == 3 else None
    steps = 1 if batch_first and rank == 3 else 0
    ctx.freeze(ctx.s(x, steps), RECURRENT_STATE, _STEPS.format(where=node.where()))
    for state in [r.name for r in hx if isinstance(r, Ref)] + list(node.outputs[1:]):
        ctx.tie(ctx.s(state, -1), hidden)
        if batch is not None:
            ctx.tie(ctx.s(state, 1), ctx.s(x, batch))
    for k in range(0, len(params), per):
        layer = k // (per * dirs)
        w_ih, w_hh = params[k], params[k + 1]
        _gate_rows(ctx, ctx.s(w_ih, 0), gates, hidden, gate_slot)
        _gate_rows(ctx, ctx.s(w_hh, 0), gates, hidden, gate_slot)
        ctx.tie(ctx.s(w_hh, 1), hidden)
        for b in params[k + 2:k + per]:
            _gate_rows(ctx, ctx.s(b, 0), gates, hidden, gate_slot)
        if layer == 0:
            ctx.tie(ctx.s(w_ih, 1), ctx.s(x, -1))
        else:
            _stacked(ctx, ctx.s(w_ih, 1), dirs, hidden, dir_slot)
    for p in params:
        ctx.mask_weight(p)


@register("onnx.LSTM", "onnx.GRU", "onnx.RNN")
def _onnx_rnn(node: Node, ctx: RuleContext) -> None:
    kind = node.op.split(".")[-1]
    gates = _GATES[kind]
    get = lambda i: node.args[i].name if len(node.args) > i and node.args[i] is not None else None  # noqa: E731
    x, w, r, b = get(0), get(1), get(2), get(3)
    acts = list(node.kwargs.get("activations") or [])
    # LSTM (f, g, h), GRU (f, g), RNN (f), given per direction (a bidirectional LSTM lists six): in each, every
    # position but the gates' f must keep 0 at 0
    n = {"LSTM": 3, "GRU": 2, "RNN": 1}[kind]
    state_acts = [a for i in range(0, len(acts), n) for a in (acts[i + 1:i + n] if kind != "RNN" else acts[i:i + 1])]
    bad = [a for a in state_acts if a not in _ZERO_PRESERVING]
    if bad:
        _freeze_node(node, ctx, RECURRENT_STATE, f"activation {bad[0]} does not keep a removed unit at 0")
        return
    layout = node.kwargs.get("layout", 0)
    hidden = ctx.s(r, 2)  # R: (directions, gates * H, H)
    gate_slot = ctx.virtual(gates, "gates") if gates > 1 else None
    if gate_slot is not None:
        ctx.hide(gate_slot, f"gates of {node.where()}")
    dirs = ctx.s(w, 0)
    ctx.hide(dirs, f"directions of {node.where()}")
    for name in (r,) + ((b,) if b else ()):
        ctx.tie(ctx.s(name, 0), dirs)
    _gate_rows(ctx, ctx.s(w, 1), gates, hidden, gate_slot)
    _gate_rows(ctx, ctx.s(r, 1), gates, hidden, gate_slot)
    ctx.tie(ctx.s(x, -1), ctx.s(w, 2))
    if b:  # (directions, [Wb; Rb]): the input and recurrent biases one after the other
        halves = ctx.virtual(2, "bias halves")
        ctx.hide(halves, f"bias halves of {node.where()}")
        inner = ctx.virtual(gates * ctx.shape(r)[2], "gate rows") if gates > 1 else hidden
        ctx.factor(ctx.s(b, 1), [halves, inner])
        if gates > 1:
            _gate_rows(ctx, inner, gates, hidden, gate_slot)
    peep = get(7) if kind == "LSTM" else None
    if peep:
        ctx.tie(ctx.s(peep, 0), dirs)
        peep_gates = ctx.virtual(3, "peepholes")
        ctx.hide(peep_gates, f"peepholes of {node.where()}")
        ctx.factor(ctx.s(peep, 1), [peep_gates, hidden])
    seq, batch = (0, 1) if layout == 0 else (1, 0)
    ctx.freeze(ctx.s(x, seq), RECURRENT_STATE, _STEPS.format(where=node.where()))
    outs = list(node.outputs) + [""] * 3  # optional outputs: absent or named ""
    y = outs[0]
    if y:  # (T, D, B, H) or, layout 1, (B, T, D, H)
        d_y, b_y = (1, 2) if layout == 0 else (2, 0)
        ctx.tie(ctx.s(y, seq), ctx.s(x, seq))
        ctx.tie(ctx.s(y, b_y), ctx.s(x, batch))
        ctx.tie(ctx.s(y, d_y), dirs)
        ctx.tie(ctx.s(y, 3), hidden)
    states = [get(5)] + ([get(6)] if kind == "LSTM" else []) + [o for o in outs[1:3] if o]
    for s in (s for s in states if s):  # (D, B, H) or, layout 1, (B, D, H)
        ctx.tie(ctx.s(s, 0 if layout == 0 else 1), dirs)
        ctx.tie(ctx.s(s, 1 if layout == 0 else 0), ctx.s(x, batch))
        ctx.tie(ctx.s(s, 2), hidden)
    ctx.carry(hidden, ("hidden_size",), int(ctx.shape(r)[2]))
    for name in (w, r, b, peep):
        if name:
            ctx.mask_weight(name)


# Ops a zero initial state may pass through on its way to the recurrent ops: torch's exporter makes one
# zeros tensor (layers x directions, batch, hidden) and slices each layer's from it (a user's GRU encoder,
# an LSTM seizure detector). Each op's own rule couples its dims; zeros stay zeros whichever channels go.
_ZERO_PASS = frozenset({f"onnx.{k}" for k in ("Slice", "Split", "Squeeze", "Unsqueeze", "Identity", "Cast", "Gather")})


def zero_state(ctx: RuleContext, out: str, depth: int = 0) -> bool:
    """Whether ``out`` is only ever a recurrent op's initial state (zeros whose size the
    rewrite may change), directly or through slices of it (:data:`_ZERO_PASS`)."""
    users = ctx.users(out)

    def feeds(u) -> bool:
        # (aten ops may take lists of tensors, torch.cat's first argument: a list is no state)
        first = [u.args[0].name] if u.args and isinstance(u.args[0], Ref) else []
        if u.op in RECURRENT_OPS:
            return out not in first  # the state, not the sequence
        return (u.op in _ZERO_PASS and first == [out] and depth < 4 and all(
            a.name == out or ctx.graph.values[a.name].data is not None for a in u.args if isinstance(a, Ref))
            and all(zero_state(ctx, o, depth + 1) for o in u.outputs))  # (fixed indices)
    return bool(users) and all(feeds(u) for u in users)
