"""The recorded trace (graphprune/frontends/torch_record.py) against torch.export's, and
the meta shape rules against torch's kernels."""
from __future__ import annotations

import copy
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune as gp
from graphprune.errors import TraceError
from graphprune.frontends import meta_shapes
from graphprune.frontends.torch_export import lower_trace
from graphprune.frontends.torch_record import Unrecordable, record
from graphprune.frontends.torch_trace import trace_model
from graphprune.zoo import build as build_zoo
from graphprune.zoo import hf as H


def _signature(g):
    """What the pipeline reads of a graph: ops in order, with module and output shapes;
    weights with their shapes and sources. Two differences are allowed: export lists a tied
    weight once per name (the recorder once, its other names in ``aliases``), and export's
    attention output has the CPU flash kernel's strides, where eager (and the recorder) copy
    with ``contiguous`` before a reshape, a no-op to channels."""
    values = g.values
    nodes = [(n.op, n.meta.module, n.meta.modules,
              tuple(values[o].shape for o in n.outputs), tuple(values[o].dtype for o in n.outputs))
             for n in g.nodes if n.op != "aten.contiguous"]
    weights = sorted({(min(g.aliases.get(v.source, [v.source])), v.kind, v.shape) for v in values.values()
                      if v.kind in ("param", "buffer")})
    return nodes, weights, [values[o].shape for o in g.outputs], [values[i].shape for i in g.inputs]


CASES = ["zoo:resnet18", "zoo:mobilenetv2", "zoo:vit", "zoo:llama", "hf:bert", "hf:gpt2", "hf:llama-gqa",
         "hf:t5-encoder", "hf:swin", "hf:convnext"]


def _case(name):
    kind, _, key = name.partition(":")
    if kind == "zoo":
        model, args = build_zoo(key)
        return model, args, {}
    model = gp.hf.prepare(H.build(key))
    return model, (), gp.hf.example_inputs(model)


@pytest.mark.parametrize("name", CASES)
def test_recorded_graph_is_the_exported_graph(name):
    # Same ops in the same order, run by the same modules, with the same shapes: the rules,
    # the planner and the rewrite see one graph whichever way it was traced.
    model, args, kwargs = _case(name)
    rec = trace_model(model, args, kwargs)
    assert rec.method == "record"
    # every weight and constant the interpreter reads is real: a meta stand-in read as a constant
    # would mean a tensor the recording lost track of (torch.arange's result, once)
    assert not any(t.is_meta for t in rec.root.values())
    exp = trace_model(model, args, kwargs, like=type(rec)(None, None, [], method="export"))
    assert _signature(lower_trace(rec, model)) == _signature(lower_trace(exp, model))


def test_recording_leaves_the_model_as_it_was():
    # A training-mode BatchNorm updates its running statistics in a forward; recording runs on
    # stand-ins, so the model's buffers and parameters are the same objects with the same values.
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3)).train()
    before = copy.deepcopy(model.state_dict())
    tensors = lambda: {k: id(v) for k, v in [*model.named_parameters(), *model.named_buffers()]}  # noqa: E731
    ids = tensors()
    for device in ("meta", "real"):
        trace = record(model, (torch.randn(2, 3, 12, 12),), device=device)
        assert any(n.target == torch.ops.aten.add_.Tensor for n in trace.graph.nodes)  # num_batches_tracked += 1
    after = model.state_dict()
    assert tensors() == ids
    assert all(torch.equal(before[k], after[k]) for k in before)


class MakesCpuTensors(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        pos = torch.arange(x.shape[-1], dtype=x.dtype)  # on the default device, whatever x is on
        return self.b(F.relu(self.a(x + pos)))


def test_a_forward_that_makes_tensors_on_a_fixed_device_is_recorded_on_real_weights():
    model = MakesCpuTensors().eval()
    args = (torch.randn(4, 6),)
    with pytest.raises(Unrecordable):
        record(model, args, device="meta")
    g = gp.trace(model, args)
    assert (g.program.trace().method, g.program.trace().device) == ("record", "real")
    plan = gp.plan(g, model, 0.5)
    assert gp.verify(model, args, plan, g).passed


class IndexesByList(nn.Module):
    """Falcon's split of its fused heads: ``qkv[:, [-2]]``, an index tensor made from a Python list."""

    def __init__(self):
        super().__init__()
        self.a, self.c, self.b = nn.Linear(8, 32), nn.Linear(8, 64), nn.Linear(64, 16)

    def forward(self, x):
        k = self.a(x).view(x.shape[0], 4, 8)[:, [-2]].flatten(1)
        return self.b(torch.relu(self.c(k)))


def test_a_list_index_is_replayed_with_its_values():
    """On meta stand-ins the list's index tensor has no values: the replay (the oracle's masked
    original, calibration) read uninitialised memory for it (differences of 1e29). It is recorded
    on the real weights instead, and the replay equals the eager forward."""
    from graphprune.program.torch_program import TorchProgram

    torch.manual_seed(0)
    model, x = IndexesByList().eval(), torch.randn(3, 8)
    with pytest.raises(Unrecordable, match="Python values"):
        record(model, (x,), device="meta")
    with torch.no_grad():
        want = model(x).numpy()
    program = TorchProgram(model, (x,), {})
    assert (program.trace().method, program.trace().device) == ("record", "real")
    assert abs(program.run(((x,), {}), masks={})[0] - want).max() < 1e-6
    _, report = gp.prune(copy.deepcopy(model), (x,), ratio=0.5, ignore=["a"], runtime=None, verify=True)
    assert report.oracle.passed and report.oracle.checked_groups  # c's 64 units, compared through the replay


class ReadsData(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 4)

    def forward(self, x):
        return self.a(x) if x.sum() > 0 else -x


class _CountsPerExpert(nn.Module):
    """transformers' MoE routing in small: tokens per expert counted with bincount on the CPU and with
    histc on int32 elsewhere, a kernel the CPU does not have."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(32, 4)

    def forward(self, x):
        h = self.a(x).relu()
        route = h[:, :4].argmax(-1).to(torch.int32)
        counts = torch.bincount(route, minlength=4) if x.device.type == "cpu" else torch.histc(route, 4, 0, 3)
        return self.b(h) + counts.float().sum()


def test_a_forward_that_branches_on_the_device_is_recorded_on_real_weights():
    """On meta stand-ins the forward took the histc branch, and the oracle's replay on the CPU failed with a
    raw NotImplementedError (a new user's Qwen2-MoE with verify=True)."""
    torch.manual_seed(0)
    model, x = _CountsPerExpert().eval(), torch.randn(3, 8)
    trace = trace_model(model, (x,))
    assert trace.method == "record" and trace.device == "real"
    assert "histc" not in str(trace.graph) and "bincount" in str(trace.graph)
    pruned, report = gp.prune(copy.deepcopy(model), (x,), ratio=0.5, round_to=1, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS" and report.params_after < report.params_before
    assert record(model, (x,)).device == "meta" and "histc" in str(record(model, (x,)).graph)  # what meta records


def test_a_forward_that_reads_tensor_data_is_refused_as_export_refuses_it():
    # Recording would bake the branch taken into the graph; torch.export refuses such a
    # forward, and so does graphprune, with export's explanation.
    model = ReadsData().eval()
    with pytest.raises(Unrecordable, match="reads tensor data"):
        record(model, (torch.ones(2, 4),), device="real")
    with pytest.raises(TraceError, match="data-dependent|with the given example inputs") as got:
        gp.trace(model, (torch.ones(2, 4),))
    # export's guard names a symbol (Longformer: "Eq(u0, 1)"); where recording stopped names the line to change
    line = inspect.getsourcelines(ReadsData.forward)[1] + 1  # the branch on x.sum()
    assert (f"Recording the forward stopped first: the forward reads tensor data (aten.is_nonzero.default) at "
            f"File \"{__file__}\", line {line}, in forward") in str(got.value)


class _PeriodFromData(torch.nn.Module):
    """TimesNet picks its reshape period from the spectrum with ``topk(...).cpu().numpy()``: no op is dispatched."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.lin, self.how = torch.nn.Linear(2, 8), how

    def forward(self, x):
        h = self.lin(x)
        top = torch.topk(torch.fft.rfft(h, dim=1).abs().mean((0, 2))[1:], 1).indices + 1
        period = h.shape[1] // (int(top.numpy()[0]) if self.how == "numpy" else top.tolist()[0])
        return h.reshape(h.shape[0], -1, period, 8).mean(2)


@pytest.mark.parametrize("how", ["numpy", "tolist"])
def test_a_data_read_that_dispatches_no_op_is_refused(how):
    """Before, the recording went past it and baked the example's period in: the default call of TimesNet raised a
    RewriteError blaming a literal, and a model like this one a false oracle FAIL."""
    import math
    t = torch.arange(60.0)
    x = torch.stack([torch.sin(2 * math.pi * 3 * t / 60), torch.sin(2 * math.pi * 5 * t / 60)], -1)[None]
    model = _PeriodFromData(how).eval()
    with pytest.raises(Unrecordable, match=rf"reads tensor data \(.{how}\(\)\) at File"):
        record(model, (x,), device="real")
    assert torch.Tensor.numpy is torch._C.TensorBase.numpy and "tolist" not in vars(torch.Tensor)  # put back
    # torch.export then refuses the .numpy() read; the .tolist() one it traces with a symbolic size, frozen with its node
    with pytest.raises(gp.GraphpruneError, match=r"reads tensor data \(.numpy\(\)\)|reshape with symbolic sizes"):
        gp.prune(model, (x,), ratio=0.5, runtime=None)


class _LengthFromDict(torch.nn.Module):
    """pytorch-forecasting's TFT: ``int(x["encoder_lengths"].max())`` of one dict of tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 4)

    def forward(self, x):
        return self.lin(x["encoder_cont"][:, : int(x["encoder_lengths"].max())])


def test_a_data_read_of_a_dict_input_names_it_as_written():
    """The message named the input ``x_3``, the placeholder's name, which the user never wrote."""
    x = {"encoder_cont": torch.randn(1, 24, 3), "encoder_lengths": torch.tensor([24])}
    with pytest.raises(Unrecordable, match=r"those of the input x\['encoder_lengths'\]"):
        record(_LengthFromDict().eval(), (x,), device="real")


def test_a_failing_export_does_not_print_its_graph(capfd):
    """Longformer's failed export wrote its whole FX graph (520 lines) to stderr, caught error or not."""
    with pytest.raises(TraceError):
        gp.trace(ReadsData().eval(), (torch.ones(2, 4),))
    assert "def forward" not in capfd.readouterr().err


def test_the_export_path_still_prunes_exactly(monkeypatch):
    monkeypatch.setenv("GRAPHPRUNE_TRACE", "export")
    model, args = build_zoo("resnet18")
    g = gp.trace(model, args)
    assert g.program.trace().method == "export"
    plan = gp.plan(g, model, 0.4)
    assert gp.verify(model, args, plan, g).passed


def _rule_cases():
    x4, x3 = torch.randn(2, 6, 5, 5), torch.randn(2, 7, 12)
    q, k, v = torch.randn(2, 4, 7, 8), torch.randn(2, 4, 9, 8), torch.randn(2, 4, 9, 5)
    a = torch.ops.aten
    return [
        (a.batch_norm.default, (x4, torch.ones(6), torch.zeros(6), torch.zeros(6), torch.ones(6), False, 0.1, 1e-5,
                                False), {}),
        (a.batch_norm.default, (x4, torch.ones(5), None, torch.zeros(6), torch.ones(6), False, 0.1, 1e-5, False), {}),
        (a.layer_norm.default, (x3, [12], torch.ones(12), torch.zeros(12)), {}),
        (a.layer_norm.default, (x3, [11], torch.ones(11), None), {}),
        (a.layer_norm.default, (x3, [12], torch.ones(10), None), {}),
        (a.group_norm.default, (x4, 3, torch.ones(6), torch.zeros(6)), {}),
        (a.group_norm.default, (x4, 4, None, None), {}),
        (a.linear.default, (x3, torch.randn(9, 12), torch.randn(9)), {}),
        (a.linear.default, (x3, torch.randn(9, 11)), {}),
        (a.linear.default, (x3, torch.randn(9, 12), torch.randn(8)), {}),
        (a.scaled_dot_product_attention.default, (q, k, v), {}),
        (a.scaled_dot_product_attention.default, (q, k, v, torch.zeros(7, 9)), {"scale": 0.5}),
        (a.scaled_dot_product_attention.default, (q, k[..., :7], v), {}),
        (a.scaled_dot_product_attention.default, (torch.randn(2, 8, 7, 8), k, v), {"enable_gqa": True}),
        (a.scaled_dot_product_attention.default, (torch.randn(2, 6, 7, 8), k, v), {"enable_gqa": True}),
        (a.conv2d.default, (x4, torch.randn(8, 6, 3, 3), torch.randn(8), [2, 1], [1, 0], [1, 2], 1), {}),
        (a.conv2d.default, (x4, torch.randn(6, 2, 3, 3), None, [1, 1], [1, 1], [1, 1], 3), {}),
        (a.conv2d.default, (x4, torch.randn(6, 4, 3, 3), None, [1, 1], [1, 1], [1, 1], 1), {}),
        (a.conv2d.default, (x4, torch.randn(6, 6, 7, 7)), {}),
        (a.conv1d.default, (x3, torch.randn(5, 7, 3), None, [2], [1], [1], 1), {}),
        (a.conv2d.default, (x4[0], torch.randn(8, 6, 3, 3)), {}),
        (a.add.Tensor, (x3, torch.randn(12)), {}),
        (a.add.Tensor, (x3, torch.randn(11)), {}),
        (a.mul.Tensor, (torch.randn(7, 1), torch.randn(2, 1, 5)), {}),
        (a.div.Tensor, (torch.arange(6), 4), {}),
        (a.sub.Tensor, (torch.arange(6), torch.randn(6)), {}),
        (a.add_.Tensor, (torch.randn(2, 7, 12), torch.randn(7, 1)), {"alpha": 2}),
        (a.add_.Tensor, (torch.randn(7, 1), torch.randn(2, 7, 12)), {}),
        (a.gelu.default, (x3,), {"approximate": "tanh"}),
        (a.gelu.default, (x3.transpose(1, 2),), {}),
        (a.add.Tensor, (x3.transpose(1, 2), 1.5), {}),
        (a.relu.default, (torch.randn(4, 6)[:, ::2],), {}),
        (a.relu_.default, (torch.randn(3, 4),), {}),
        (a.dropout.default, (x3, 0.1, False), {}),
    ]


@pytest.mark.parametrize("case", range(len(_rule_cases())))
def test_meta_shape_rules_agree_with_the_kernels(case):
    # Same shape, dtype and strides as the CPU kernel, and an error where it raises one: the
    # rewrite's proof reads these shapes.
    op, args, kwargs = _rule_cases()[case]
    name = str(op)
    assert name in meta_shapes.RULES
    try:
        want = op(*copy.deepcopy(args), **kwargs)
    except RuntimeError:
        want = None
    metas = torch.utils._pytree.tree_map(lambda t: t.to("meta") if isinstance(t, torch.Tensor) else t, args)
    if want is None:
        with pytest.raises(RuntimeError):
            meta_shapes.run(name, op, metas, kwargs)
        return
    got = meta_shapes.run(name, op, metas, kwargs)
    assert (got.shape, got.dtype, got.stride()) == (want.shape, want.dtype, want.stride())
    if name.endswith("_.Tensor") or name.endswith("_.default"):
        assert got is metas[0]  # in place: the same tensor, as the recorder's value map expects


def test_repeat_interleave_by_an_int_is_recorded():
    # Only tensor repeats depend on data; GQA's key/value expansion by an int is a static op.
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.k = nn.Linear(8, 4)

        def forward(self, x):
            return self.k(x).view(2, 3, 2, 2).repeat_interleave(2, dim=2)

    trace = trace_model(M().eval(), (torch.randn(2, 3, 8),))
    assert trace.method == "record"
    assert any("repeat_interleave" in str(n.target) for n in trace.graph.nodes)


def test_checking_a_recording_leaves_the_model_and_the_rng_as_they_were():
    """The replay that checks a meta recording ran on the model's own buffers: a BatchNorm left in train mode
    (torchvision's default) had its running statistics updated by a trace, and a dropout moved the RNG."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.5))  # train mode
    state, x = copy.deepcopy(model.state_dict()), torch.randn(2, 3, 8, 8)
    rng = torch.random.get_rng_state()
    trace_model(model, (x,))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.random.get_rng_state(), rng)


class _ReadsAnInput(torch.nn.Module):
    """Slices by the values of an integer input, as Pixtral does with its image_sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        return self.fc(x[:, : int(sizes[0])])


def test_a_trace_that_reads_an_inputs_values_names_the_input():
    model, x, sizes = _ReadsAnInput().eval(), torch.randn(2, 5, 8), torch.tensor([3, 4])
    with pytest.raises(gp.errors.TraceError, match="the values read are those of the input 'sizes'"):
        gp.trace(model, (x, sizes))


def _pad1d(x, pad):
    out = F.pad(x, pad, "reflect")
    assert (out[..., pad[0]: pad[0] + x.shape[-1]] == x).all()  # demucs' pad1d checks its own padding
    return out


class _Asserting(nn.Module):
    def __init__(self, check: str = "assert") -> None:
        super().__init__()
        self.check = check
        self.a, self.b = nn.Conv1d(2, 16, 8, 4), nn.Conv1d(16, 2, 1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.check == "branch" and (h > 0).any():  # a branch on data is no assert: refused as before
            h = h * 2
        return self.b(_pad1d(h, (4, 4)) if self.check == "assert" else h)


def test_an_assert_on_tensor_values_that_holds_is_recorded_past():
    """demucs' HDemucs and HTDemucs could not be traced at all: ``assert (...).all()`` reads tensor data. An
    assert statement that holds computes nothing the program needs, so the recording evaluates it on the real
    weights and goes on; the channels it reads still prune, exactly."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 200)
    pruned, report = gp.prune(_Asserting().eval(), (x,), ratio=0.5, round_to=1, runtime=None, verify=True)
    assert report.oracle.verdict == "PASS" and pruned.a.out_channels == 8
    assert pruned(torch.randn(2, 2, 120)).shape[:2] == (2, 2)
    with pytest.raises(TraceError, match=r"reads tensor data"):
        gp.trace(_Asserting("branch").eval(), (x,))


class _BranchesOn(torch.nn.Module):
    """A Python branch on tensor values: a buffer (vector-quantize's ``if self.initted:``), a grid made in forward
    (torchdiffeq's ``if t[0] > t[1]``), a parameter, or the input."""

    def __init__(self, on: str) -> None:
        super().__init__()
        self.on, self.a, self.b = on, torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)
        self.register_buffer("initted", torch.tensor(True))
        self.register_buffer("seen", torch.zeros(1))

    def _written(self, x):
        self.seen.view(-1).copy_(x[0, :1])  # filled from the input through a view: the recorder sees no write to it
        return self.seen.abs().max() < 1e9

    def forward(self, x):
        flag = {"buffer": lambda: self.initted, "grid": lambda: torch.tensor([0.0, 1.0])[1] > 0,
                "parameter": lambda: self.a.weight.sum() > -1e9, "input": lambda: x.sum() > -1e9,
                "written buffer": lambda: self._written(x), "input data": lambda: x.data.abs().max() < 1e9,
                "random": lambda: torch.rand(1) < 2.0}[self.on]()
        h = torch.relu(self.a(x)) if flag else -torch.relu(self.a(x))
        return self.b(h)


@pytest.mark.parametrize("on", ["buffer", "grid", "parameter", "input", "written buffer", "input data", "random"])
def test_a_branch_on_the_models_state_is_recorded_on_the_path_it_takes(on):
    """A branch on a one-element buffer or a tensor made from Python values is the same for every input: the
    recording takes the path the state chooses (before, every branch on data was refused). A parameter's values
    change with the cut, an input's with the input, a buffer the forward fills from it (through a view, which the
    recorder does not see as a write to it), ``x.data`` and a random draw from call to call: still refused
    (review: the first version passed the oracle on those and was wrong on inputs taking the other branch)."""
    torch.manual_seed(0)
    x = torch.randn(2, 16)
    if on not in ("buffer", "grid"):
        with pytest.raises(gp.TraceError, match="reads tensor data|branches on buffer 'seen', which it also writes"):
            gp.prune(_BranchesOn(on).eval(), (x,), measure_latency=False)
        return
    model = _BranchesOn(on).eval()
    pruned, report = gp.prune(model, (x,), verify=True, measure_latency=False)
    assert report.oracle.verdict == "PASS" and pruned.a.out_features < 64


class _IndexFromTensors(nn.Module):
    """UDOP's patch mask: ``rows, cols = zip(*ind); mask[rows, cols] = False``, and ``torch.tensor([p[0], p[1]])``:
    lists of 0-d tensors that torch reads in C++ with no op dispatched."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how, self.lin, self.out = how, nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x, pts):
        h = self.lin(x)
        if self.how == "list":  # a short list holding tensors is a tuple of indices to torch: x[[rows, cols]]
            mask = torch.ones(h.shape[:2], dtype=torch.bool)
            mask[[torch.arange(pts.shape[0]), pts]] = False
            return self.out(h * mask[..., None])
        if self.how == "zip":
            mask = torch.ones(h.shape[:2], dtype=torch.bool)
            rows, cols = zip(*torch.stack([torch.arange(pts.shape[0]), pts], -1))
            mask[rows, cols] = False
            return self.out(h * mask[..., None])
        return self.out(h[:, torch.tensor([pts[0], pts[1]])])


@pytest.mark.parametrize("how", ["zip", "tensor", "list"])
def test_lists_of_tensors_are_recorded_as_computed_not_as_the_examples_values(how):
    """The recording held the example's indices as constants: the replay differed from the model on every other
    input (0.79), and the oracle failed where it drew other values. The lists are stacked by recorded ops."""
    from graphprune.program.torch_program import TorchProgram

    torch.manual_seed(0)
    model, x = _IndexFromTensors(how).eval(), torch.randn(2, 5, 4)
    program = TorchProgram(model, (x, torch.tensor([1, 3])), {})
    other = torch.tensor([0, 2])
    with torch.no_grad():
        want = model(x, other).numpy()
    assert abs(program.run(((x, other), {}), masks={})[0] - want).max() < 1e-6
    with torch.no_grad():  # and torch's own indexing is as it was after the recording
        assert torch.equal(model(x, other), torch.from_numpy(want))
    _, report = gp.prune(copy.deepcopy(model), (x, torch.tensor([1, 3])), ratio=0.5, runtime=None, verify=True)
    assert report.oracle.passed and report.oracle.checked_groups


def test_stacked_lists_give_what_torch_tensor_and_torch_indexing_give():
    """The review's cases: dtypes promoted (a float64 0-d tensor beside a float), one-element tensors as numbers,
    a short list of index tensors read as a tuple, as torch reads them."""
    from graphprune.frontends.record_sequences import stacked_sequences

    x, t1, t2 = torch.arange(12).view(3, 4), torch.tensor(1), torch.tensor(2)
    rows, cols = (torch.tensor(0), t1), (t1, t2)
    cases = [lambda: x[[rows, cols]], lambda: x[[t1, t2]], lambda: x[[0, t2]], lambda: x[rows, cols],
             lambda: torch.tensor([torch.tensor(1.0, dtype=torch.float64), 1.0]),
             lambda: torch.tensor([torch.ones(1), torch.ones(1)]), lambda: torch.tensor([t1, 2.5]),
             lambda: torch.tensor([[1, 2], [torch.tensor(3.0, dtype=torch.float64), 3]])]
    with warnings.catch_warnings():  # torch warns that a list index will be read as a tensor one day
        warnings.simplefilter("ignore")
        want = [c() for c in cases]
    with stacked_sequences():
        got = [c() for c in cases]
    for k, (w, g) in enumerate(zip(want, got)):
        assert (w.dtype, w.shape) == (g.dtype, g.shape) and torch.equal(w, g), k
