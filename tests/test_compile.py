"""torch.compile and torch.export: one graph, no break, eager's bits.

The compiled kernels are the custom operators ``torch.ops.iterl2norm.*``
(:mod:`iterl2norm._fused`); everything else a call does is either traced or
resolved as a constant at trace time. Every case here compares a compiled
call with the same call run eagerly, bit for bit. Slow run: every format,
mode and schedule, for both modules.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import iterl2norm
from iterl2norm import IterLayerNorm, IterRMSNorm, _fused
from iterl2norm._validation import iter_settings
from iterl2norm.formats import FORMATS
from iterl2norm.schedules import SCHEDULES

FMTS = [None, *FORMATS]
MODES = ["scalar", "vector"]
SCHEDULE_NAMES = [None, *SCHEDULES]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal dtypes, shapes and bit patterns (NaN payloads and signed zeros too)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    ints = {8: torch.int64, 4: torch.int32, 2: torch.int16, 1: torch.int8}[a.element_size()]
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


def rows(*shape, seed=0) -> torch.Tensor:
    """Gaussian rows with a scaled row, a zero row and a NaN row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    flat = x.view(-1, shape[-1])
    flat[1] *= 300.0
    flat[2] = 0.0
    flat[3, 5] = float("nan")
    return x


_SETTING_NAMES = ("steps", "update_rate", "init", "mode", "fmt", "acc_fmt", "schedule")
_DEFAULTS = {"steps": 5, "update_rate": 0.5, "init": "exponent", "mode": "scalar"}


def settings(**kw):
    """iter_settings with the public functions' defaults for what ``kw`` leaves out."""
    return iter_settings(*({**_DEFAULTS, **kw}.get(k) for k in _SETTING_NAMES))


def valid(**kw) -> bool:
    try:
        settings(**kw)
    except ValueError:
        return False
    return True


def module_cases(fmts, modes, schedules):
    out = []
    for cls, fmt, mode, schedule in itertools.product(
        (IterLayerNorm, IterRMSNorm), fmts, modes, schedules
    ):
        kw = {"fmt": fmt, "mode": mode, "schedule": schedule}
        if valid(**kw):
            out.append(pytest.param(cls, kw, id=f"{cls.__name__}-{fmt}-{mode}-{schedule}"))
    return out


# Default run: each format once (the two modules in turn), vector mode once
# natively and once emulated, and two schedules; the slow run takes the whole
# product of modules, formats, modes and schedules.
_DEFAULT_IDS = {
    "IterLayerNorm-None-scalar-None",
    "IterRMSNorm-fp32-scalar-None",
    "IterLayerNorm-fp16-scalar-None",
    "IterRMSNorm-bf16-scalar-None",
    "IterLayerNorm-fp8_e4m3-scalar-None",
    "IterRMSNorm-fp8_e5m2-scalar-None",
    "IterRMSNorm-None-vector-None",
    "IterLayerNorm-bf16-vector-None",
    "IterLayerNorm-bf16-scalar-minimax",
    "IterRMSNorm-fp16-scalar-table",
}
_ALL = module_cases(FMTS, MODES, SCHEDULE_NAMES)
DEFAULT_MODULES = [case for case in _ALL if case.id in _DEFAULT_IDS]
ALL_MODULES = [case for case in _ALL if case.id not in _DEFAULT_IDS]
assert len(DEFAULT_MODULES) == len(_DEFAULT_IDS)


def affine(module):
    """Non-trivial weights (and biases), so the affine step is exercised."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return module


def check_module(cls, kw, backend="aot_eager"):
    module = affine(cls(64, **kw))
    x = rows(4, 6, 64)
    explained = torch._dynamo.explain(module)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True, backend=backend)
    assert same_bits(compiled(x), module(x))


@pytest.mark.parametrize(("cls", "kw"), DEFAULT_MODULES)
def test_modules_compile_to_one_graph_with_eagers_bits(cls, kw):
    check_module(cls, kw)


@pytest.mark.slow
@pytest.mark.parametrize(("cls", "kw"), ALL_MODULES)
def test_every_module_setting_compiles_to_one_graph(cls, kw):
    check_module(cls, kw)


def test_the_issue_model_is_one_graph_under_inductor():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(256, 256), IterLayerNorm(256), torch.nn.Linear(256, 256), IterRMSNorm(256)
    )
    x = torch.randn(8, 256)
    explained = torch._dynamo.explain(model)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    torch._dynamo.reset()
    # Inductor generates the code around the operators. The norm is compared
    # alone (Inductor may fuse the linear layers differently): the bf16
    # emulation with parameters that require grad, a traced torch path whose
    # roundings Inductor must not drop (see _arith.cast_round).
    norm = affine(IterRMSNorm(256, fmt="bf16"))
    assert same_bits(torch.compile(norm, fullgraph=True)(x), norm(x))


FUNCTIONAL = {
    "iterl2norm": lambda x: iterl2norm.iterl2norm(x),
    "iterl2norm-fp16-vector": lambda x: iterl2norm.iterl2norm(x, fmt="fp16", mode="vector"),
    "iterl2norm-dim0-steps3": lambda x: iterl2norm.iterl2norm(x, dim=0, steps=3),
    "layer_norm": lambda x: iterl2norm.layer_norm(x, x.shape[-1:], eps=1e-6),
    "layer_norm-fp8-table": lambda x: iterl2norm.layer_norm(
        x, x.shape[-1:], fmt="fp8_e4m3", schedule="table"
    ),
    "rms_norm-bf16": lambda x: iterl2norm.rms_norm(x, x.shape[-1:], fmt="bf16"),
    "rms_norm-rates": lambda x: iterl2norm.rms_norm(
        x, (x.shape[-1],), steps=2, update_rate=[0.5, 0.25], init="magic"
    ),
}


@pytest.mark.parametrize("name", list(FUNCTIONAL))
def test_functions_compile_to_one_graph_with_eagers_bits(name):
    fn = FUNCTIONAL[name]
    x = rows(8, 64)
    assert same_bits(torch.compile(fn, fullgraph=True, backend="aot_eager")(x), fn(x))


@pytest.mark.parametrize("fmt", [None, "bf16"])
def test_compiled_gradients_equal_eagers(fmt):
    # Natively the operator's autograd formula; emulated, the torch path's
    # straight-through rounding, traced.
    module = affine(IterLayerNorm(64, fmt=fmt))
    x = torch.randn(8, 64, requires_grad=True)
    grad = torch.randn(8, 64)

    def step(fn):
        for t in (x, module.weight, module.bias):
            t.grad = None
        out = fn(x)
        out.backward(grad)
        return out.detach(), x.grad, module.weight.grad, module.bias.grad

    eager = step(module)
    compiled = step(torch.compile(module, fullgraph=True, backend="aot_eager"))
    assert all(same_bits(a, b) for a, b in zip(eager, compiled, strict=True))


def test_shapes_change_without_recompiling():
    module = IterLayerNorm(64)
    counter = CompileCounter()
    compiled = torch.compile(module, fullgraph=True, backend=counter)
    for batch, seq in ((2, 5), (3, 7), (4, 9)):
        x = torch.randn(batch, seq, 64)
        torch._dynamo.mark_dynamic(x, 0)
        torch._dynamo.mark_dynamic(x, 1)
        assert same_bits(compiled(x), module(x))
    assert counter.frame_count == 1
    # Unmarked: the first new shape recompiles once, with dynamic sizes.
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(IterRMSNorm(64, fmt="bf16"), fullgraph=True, backend=counter)
    for batch, seq in ((2, 5), (3, 7), (4, 9), (6, 2)):
        compiled(torch.randn(batch, seq, 64))
    assert counter.frame_count == 2


@pytest.mark.parametrize("fmt", [None, pytest.param("fp8_e5m2", marks=pytest.mark.slow)])
def test_a_new_d_runs_with_eagers_bits(fmt):
    def fn(x):
        return iterl2norm.layer_norm(x, x.shape[-1:], fmt=fmt, mode="vector" if fmt else "scalar")

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    for shape in ((4, 64), (5, 64), (4, 96), (4, 1000)):
        x = rows(*shape)
        assert same_bits(compiled(x), fn(x)), shape


def _iteration(**kw):
    return tuple(settings(**kw).kernel_iteration)


def test_opcheck_passes_on_every_operator():
    assert _fused.available(), "the compiled kernels are not built"
    x = torch.randn(6, 64)
    w, b = torch.rand(64) + 0.5, torch.randn(64)
    native = _iteration()
    table = _iteration(schedule="table")
    forward = torch.ops.iterl2norm.native_forward
    samples = [
        (forward, (x, w, b, True, True, 1e-5, *native)),
        (
            forward,
            (
                x.clone().requires_grad_(),
                w.clone().requires_grad_(),
                None,
                False,
                True,
                0.0,
                *table,
            ),
        ),
        (forward, (x.bfloat16(), None, None, False, False, 0.0, *native)),
        (
            torch.ops.iterl2norm.emulated_forward,
            (x, w, b, "bf16", True, True, 1e-5, *_iteration(fmt="bf16")),
        ),
        (
            torch.ops.iterl2norm.emulated_forward,
            (
                x,
                None,
                None,
                "fp8_e4m3",
                False,
                False,
                0.0,
                *_iteration(fmt="fp8_e4m3", init="magic"),
            ),
        ),
    ]
    _, mean, scale = forward(x, w, b, True, True, 1e-5, *native)
    for want_dw, want_db in ((True, True), (True, False), (False, False)):
        args = (x, torch.randn(6, 64), mean, scale, w, True, True, want_dw, want_db)
        samples.append((torch.ops.iterl2norm.native_backward, args))
    for op, args in samples:
        result = torch.library.opcheck(op, args)
        assert set(result.values()) == {"SUCCESS"}, (op, result)


def _tiny_llama():
    pytest.importorskip("transformers")
    from test_models import TINY  # the tiny models the patching tests use

    torch.manual_seed(0)
    return TINY["llama"]().eval()


def test_a_patched_hugging_face_model_compiles_to_one_graph():
    model = _tiny_llama()
    iterl2norm.patch_model(model)
    ids = torch.randint(0, 100, (2, 16))
    explained = torch._dynamo.explain(model)(input_ids=ids)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0)
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(input_ids=ids).logits
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(input_ids=ids).logits
    assert same_bits(compiled, eager)


class Logits(torch.nn.Module):
    """A causal LM as token ids to logits: the loading process needs no
    transformers to rebuild the output."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids, use_cache=False).logits


LOAD = textwrap.dedent(
    """
    import sys, torch
    import iterl2norm  # registers torch.ops.iterl2norm
    program = torch.export.load(sys.argv[1])
    ids = torch.load(sys.argv[2])
    with torch.no_grad():
        torch.save(program.module()(ids), sys.argv[3])
    """
)


@pytest.mark.parametrize("fmt", [None, pytest.param("bf16", marks=pytest.mark.slow)])
def test_an_exported_patched_model_runs_in_a_fresh_process(tmp_path, fmt):
    model = _tiny_llama()
    iterl2norm.patch_model(model, fmt=fmt)
    ids = torch.randint(0, 100, (2, 16))
    program = torch.export.export(Logits(model), (ids,))
    # The norms are this package's operators (the native kernel; the bf16
    # emulation's roundings, since the parameters require grad), which the
    # fresh process knows from importing iterl2norm.
    ops = {str(n.target) for n in program.graph.nodes if str(n.target).startswith("iterl2norm.")}
    assert ops == {
        "iterl2norm.native_forward.default" if fmt is None else "iterl2norm.cast_round.default"
    }
    torch.export.save(program, tmp_path / "model.pt2")
    torch.save(ids, tmp_path / "ids.pt")
    files = [str(tmp_path / f) for f in ("model.pt2", "ids.pt", "out.pt")]
    subprocess.run([sys.executable, "-c", LOAD, *files], check=True, timeout=300)
    with torch.no_grad():
        eager = model(input_ids=ids, use_cache=False).logits
    assert same_bits(torch.load(tmp_path / "out.pt"), eager)


def test_settings_pickle_as_their_fields_and_remake_the_rest():
    import pickle

    module = IterLayerNorm(64, fmt="bf16", schedule="table")
    state = module.settings.__getstate__()
    assert set(state) == set(_SETTING_NAMES)  # no derived attribute is saved
    loaded = pickle.loads(pickle.dumps(module))
    assert loaded.settings == module.settings
    assert loaded.settings.kernel_iteration == module.settings.kernel_iteration
    x = rows(4, 64)
    assert same_bits(loaded(x), module(x))
