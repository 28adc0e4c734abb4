"""The compiled row kernels (csrc/kernels.cpp), built with the package or on
first use (:mod:`._jit`).

``native``: the fast native path, one fused pass per row (float, bfloat16 and
half inputs), differentiated analytically at the computed scale;
``native_call``: its short path for the common eager call. ``emulated``:
the bit-accurate 8- and 16-bit emulation with float32 accumulation, the same
bits as the torch emulation (tests/test_fused.py). Callers fall back to the
torch paths when :func:`native_ok` / :func:`emulated_ok` say no.

The kernels are also PyTorch custom operators, ``torch.ops.iterl2norm.*``
(``native_forward``, ``native_backward``, ``emulated_forward``), each with a
fake implementation (shapes and dtypes only) and an autograd formula, so
torch.compile and torch.export see one opaque node per call instead of a
graph break. Their arguments are tensors and plain numbers, strings and
lists: the iteration travels as :data:`KernelIteration`. Eager calls run the
same implementations directly, without the dispatcher's round trips through
Python, which would cost more than a small kernel call; the results are the
same bits either way.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator
from fractions import Fraction
from typing import TYPE_CHECKING

import torch
from torch.autograd.function import once_differentiable

from ._arith import Arithmetic
from ._pipeline import eps_exponent_floor
from .formats import FORMATS, round_scalar
from .rsqrt import smallest_at_least_sqrt2

if TYPE_CHECKING:
    from ._validation import IterSettings

# How the kernels came: built with the package ("compiled"), on first use
# into a cache ("jit", see _jit), or not at all ("none", and why not).
try:
    from . import _kernels
except ImportError:  # installed without them, or built for another torch
    from . import _jit

    _kernels, _how = _jit.load()
    KERNELS, WHY_NOT = ("jit", None) if _kernels is not None else ("none", _how)
else:
    KERNELS, WHY_NOT = "compiled", None

ENABLED = True  # tests switch the kernels off to exercise the torch paths
_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# The kernels' instruction-set variants, narrowest first; ITERL2NORM_ISA picks
# one (default: the widest the CPU runs). The emulation gives the same bits in
# every variant, which the tests check by running each.
ISA_ENV = "ITERL2NORM_ISA"
ISA_VARIANTS = ("baseline", "avx2", "avx512")
_isa_applied = False


def apply_isa_override() -> None:
    """Set the variant ITERL2NORM_ISA names; a ValueError naming the value if
    it is unknown or this CPU cannot run it."""
    global _isa_applied
    raw = os.environ.get(ISA_ENV, "")
    name = raw.strip().lower()
    if name:
        if name not in ISA_VARIANTS:
            raise ValueError(
                f"{ISA_ENV}={raw!r} is not an instruction-set variant of the kernels; "
                f"choose one of {', '.join(ISA_VARIANTS)}"
            )
        supported = _kernels.supported_isas()
        if name not in supported:
            raise ValueError(f"{ISA_ENV}={raw!r}: this CPU runs only {', '.join(supported)}")
        _kernels.set_isa(name)
    _isa_applied = True


def isa() -> str | None:
    """The instruction-set variant the kernels run, or None without kernels."""
    if _kernels is None:
        return None
    if not _isa_applied:
        apply_isa_override()
    return _kernels.current_isa()


@contextlib.contextmanager
def disabled(off: bool = True) -> Iterator[None]:
    """Inside the block, the torch paths the kernels replace (``off=False``:
    no change); tests and benchmarks compare the two this way."""
    global ENABLED
    saved = ENABLED
    ENABLED = ENABLED and not off
    try:
        yield
    finally:
        ENABLED = saved


def status() -> dict:
    """How the kernels came (``"compiled"``: built with the package; ``"jit"``:
    built on first use; ``"none"``, with why not), the instruction-set variant
    in use and the ones this CPU runs."""
    if _kernels is None:
        return {"kernels": "none", "why_not": WHY_NOT, "isa": None, "supported_isas": []}
    return {"kernels": KERNELS, "isa": isa(), "supported_isas": list(_kernels.supported_isas())}


def available() -> bool:
    # Read inside torch.compile traces, so plain globals only; the kernels
    # apply ITERL2NORM_ISA on their first call (_apply_isa).
    return _kernels is not None and ENABLED


def _apply_isa() -> None:
    if not _isa_applied:
        apply_isa_override()


def _eligible(x: torch.Tensor, settings: IterSettings) -> bool:
    return available() and settings.mode == "scalar" and x.dtype in _FAST_DTYPES and x.is_cpu


def native_ok(x: torch.Tensor, settings: IterSettings) -> bool:
    return _eligible(x, settings) and settings.fmt is None


def emulated_ok(x: torch.Tensor, settings: IterSettings, ar: Arithmetic, *params) -> bool:
    # Gradients through the emulation pass rounding straight through: the torch path.
    return (
        _eligible(x, settings)
        and _emulation_runs(ar)
        and not x.requires_grad
        and not any(p is not None and p.requires_grad for p in params)
    )


# The iteration as the kernels' operators take it, the last six arguments of
# each forward: (start, start_params, table, correction, c1, c2), that is the
# start's name and parameters, the table start's constants, and per step
# whether it is a correction step (else Euler) and its two constants, all as
# the datapath holds them.
Floats = tuple[float, ...]
KernelIteration = tuple[str, Floats, Floats, tuple[bool, ...], Floats, Floats]

_KERNEL_ITERATIONS: dict[tuple, KernelIteration] = {}


def kernel_iteration(settings: IterSettings, ar: Arithmetic) -> KernelIteration | None:
    """settings.iteration for the kernels in ``ar`` (see :data:`KernelIteration`),
    or None where no kernel runs these settings. Cached, since rounding the
    constants costs more than a small kernel call; IterSettings computes it at
    construction (:attr:`IterSettings.kernel_iteration`)."""
    native = not ar.emulated and ar.fmt == FORMATS["fp32"]
    if _kernels is None or settings.mode != "scalar" or not (native or _emulation_runs(ar)):
        return None
    key = (settings.iteration, ar.fmt.name)
    built = _KERNEL_ITERATIONS.get(key)
    if built is None:
        built = _KERNEL_ITERATIONS[key] = _build_kernel_iteration(settings.iteration, ar)
    return built


def _emulation_runs(ar: Arithmetic) -> bool:
    """Whether the emulation kernel computes in ``ar``: 8- and 16-bit formats
    with float32 accumulation."""
    return ar.emulated and ar.carrier == torch.float32 and ar.acc == FORMATS["fp32"]


def _build_kernel_iteration(iteration, ar: Arithmetic) -> KernelIteration:
    steps = iteration.steps
    params: Floats = ()
    table: Floats = ()
    if iteration.start == "exponent+mantissa":  # the comparison and the two outcomes
        params = (
            smallest_at_least_sqrt2(ar.fmt),
            ar.const(math.sqrt(0.5)),
            ar.const(math.sqrt(2)),
        )
    elif iteration.start == "magic":  # the constant and the format's fields (exact in a float)
        params = (
            float(iteration.magic_for(ar.fmt)),
            float(ar.fmt.mantissa_bits),
            float(ar.fmt.bias),
        )
    elif iteration.start == "table":
        params = (float(len(iteration.table[0])),)
        table = tuple(ar.const(c) for row in iteration.table for pair in row for c in pair)
    return (
        iteration.start,
        params,
        table,
        tuple(step.form == "correction" for step in steps),
        tuple(ar.const(step.c1) for step in steps),
        tuple(ar.const(step.c2) for step in steps),
    )


@functools.lru_cache(maxsize=64)
def _kernel_scalar(start, start_params, table, correction, c1, c2):
    """The kernels' ``Iteration`` object for a KernelIteration (lists as tuples)."""
    return _kernels.Iteration(
        start=start,
        start_params=list(start_params),
        table=list(table),
        forms=["correction" if c else "euler" for c in correction],
        c1=list(c1),
        c2=list(c2),
    )


def _scalar(start, start_params, table, correction, c1, c2):
    return _kernel_scalar(
        start, tuple(start_params), tuple(table), tuple(correction), tuple(c1), tuple(c2)
    )


def _inv_d_native(x: torch.Tensor, mean: bool) -> float:
    # 1/d correctly rounded to a double (as float(Fraction(1, d))).
    return 1.0 / x.shape[1] if mean else 1.0


@functools.lru_cache(maxsize=256)
def _inv_d_fp32(d: int) -> float:
    # 1/d rounded once to the float32 accumulator, as the torch emulation's const_acc.
    return round_scalar(Fraction(1, d), FORMATS["fp32"])


def _as_float(p: torch.Tensor | None) -> torch.Tensor | None:
    """A weight or bias as the kernels take it: flat contiguous float32."""
    if p is None:
        return None
    p = p.detach()
    if p.dim() != 1:
        p = p.reshape(-1)
    return p if p.dtype == torch.float32 and p.is_contiguous() else p.float().contiguous()


# The operators' implementations. ``mean``: the statistic is the mean of the
# squares over the row (LayerNorm, RMSNorm), not their sum (L2); the kernels
# take 1/d, derived here from the row length so that a traced graph holds no
# per-shape constant.


def _native_forward_impl(
    x, weight, bias, center, mean, eps, start, start_params, table, correction, c1, c2
):
    _apply_isa()
    out, row_mean, scale = _kernels.native_forward(
        x,
        _as_float(weight),
        _as_float(bias),
        center,
        _inv_d_native(x, mean),
        eps,
        _scalar(start, start_params, table, correction, c1, c2),
    )
    return out, row_mean, scale


def _native_backward_impl(x, grad, row_mean, scale, weight, center, mean, want_dw, want_db):
    _apply_isa()
    dx, dw, db = _kernels.native_backward(
        x,
        grad,
        row_mean,
        scale,
        _as_float(weight),
        center,
        _inv_d_native(x, mean),
        want_dw,
        want_db,
    )
    # An operator returns tensors, never None, and no two the same: a new empty
    # one for each sum not asked for.
    return dx, *(x.new_empty(0, dtype=torch.float64) if s is None else s for s in (dw, db))


def _emulated_forward_impl(
    x, weight, bias, fmt, center, mean, eps, start, start_params, table, correction, c1, c2
):
    _apply_isa()
    ar = Arithmetic.resolve(torch.float32, fmt)
    w = None if weight is None else ar.quantize(weight.reshape(-1)).contiguous()
    b = None if bias is None else ar.quantize(bias.reshape(-1)).contiguous()
    inv_d = _inv_d_fp32(x.shape[1]) if mean else 1.0
    return _kernels.emulated_forward(
        x,
        w,
        b,
        fmt,
        center,
        inv_d,
        inv_d != 1.0,
        eps,
        eps_exponent_floor(eps) if eps > 0 else 0,
        _scalar(start, start_params, table, correction, c1, c2),
    )


_ITERATION_SCHEMA = (
    "str start, float[] start_params, float[] table, bool[] correction, float[] c1, float[] c2"
)


def _row_stats(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty(x.shape[0], dtype=torch.float64)


def _check_rows(x: torch.Tensor, name: str) -> None:
    # The kernels' own checks, for fake tensors too (the kernels never see those).
    torch._check(x.dim() == 2, lambda: f"iterl2norm::{name}: x must be 2-D, got {x.dim()}-D")
    torch._check(
        x.dtype in _FAST_DTYPES,
        lambda: f"iterl2norm::{name}: x must be float32, bfloat16 or float16, got {x.dtype}",
    )


# native_forward's autograd formula, shared by the operator and _NativeNorm: the
# exact derivative of y / sqrt(q) at the computed scale, as torch's LayerNorm
# backward uses its rstd, not the derivative of the iteration's steps. The
# row means and scales are outputs only for the backward.


def _native_setup_context(ctx, inputs, output):
    x, weight, bias, center, mean = inputs[:5]
    _, row_mean, scale = output
    ctx.save_for_backward(x, weight, row_mean, scale)
    ctx.center, ctx.mean = center, mean
    # The parameters' shapes and dtypes, which their gradients take.
    ctx.params = [None if p is None else (p.shape, p.dtype) for p in (weight, bias)]
    ctx.mark_non_differentiable(row_mean, scale)


def _native_grads(ctx, grad, backward) -> tuple:
    """The gradients of native_forward's 12 inputs, by ``backward`` (the
    native_backward operator or its implementation)."""
    x, weight, row_mean, scale = ctx.saved_tensors
    w_meta, b_meta = ctx.params
    want_dw = w_meta is not None and ctx.needs_input_grad[1]
    want_db = b_meta is not None and ctx.needs_input_grad[2]
    grad = grad.to(x.dtype).contiguous()
    dx, dw, db = backward(x, grad, row_mean, scale, weight, ctx.center, ctx.mean, want_dw, want_db)
    # The kernel sums in float64; each sum becomes its parameter's gradient.
    dw = dw.reshape(w_meta[0]).to(w_meta[1]) if want_dw else None
    db = db.reshape(b_meta[0]).to(b_meta[1]) if want_db else None
    return (dx, dw, db) + (None,) * 9


def _native_backward_formula(ctx, grad, _grad_mean, _grad_scale):
    return _native_grads(ctx, grad, torch.ops.iterl2norm.native_backward)


def _not_differentiable(name: str, why: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"iterl2norm::{name} is not differentiable: {why}")

    return backward


if _kernels is not None:
    torch.library.custom_op(
        "iterl2norm::native_forward",
        _native_forward_impl,
        mutates_args=(),
        device_types="cpu",
        schema=(
            "(Tensor x, Tensor? weight, Tensor? bias, bool center, bool mean, float eps, "
            f"{_ITERATION_SCHEMA}) -> (Tensor, Tensor, Tensor)"
        ),
    )
    torch.library.custom_op(
        "iterl2norm::native_backward",
        _native_backward_impl,
        mutates_args=(),
        device_types="cpu",
        schema=(
            "(Tensor x, Tensor grad, Tensor row_mean, Tensor scale, Tensor? weight, "
            "bool center, bool mean, bool want_dw, bool want_db) -> (Tensor, Tensor, Tensor)"
        ),
    )
    torch.library.custom_op(
        "iterl2norm::emulated_forward",
        _emulated_forward_impl,
        mutates_args=(),
        device_types="cpu",
        schema=(
            "(Tensor x, Tensor? weight, Tensor? bias, str fmt, bool center, bool mean, "
            f"float eps, {_ITERATION_SCHEMA}) -> Tensor"
        ),
    )

    @torch.library.register_fake("iterl2norm::native_forward")
    def _(x, weight, bias, center, mean, eps, *iteration):
        _check_rows(x, "native_forward")
        return torch.empty_like(x), _row_stats(x), _row_stats(x)

    @torch.library.register_fake("iterl2norm::native_backward")
    def _(x, grad, row_mean, scale, weight, center, mean, want_dw, want_db):
        _check_rows(x, "native_backward")
        d = x.shape[1]
        sums = [x.new_empty(d if want else 0, dtype=torch.float64) for want in (want_dw, want_db)]
        return torch.empty_like(x), *sums

    @torch.library.register_fake("iterl2norm::emulated_forward")
    def _(x, weight, bias, fmt, center, mean, eps, *iteration):
        _check_rows(x, "emulated_forward")
        return x.new_empty(x.shape, dtype=torch.float32)

    torch.library.register_autograd(
        "iterl2norm::native_forward",
        _native_backward_formula,
        setup_context=_native_setup_context,
    )
    # Once differentiable, as torch's own norms' analytic backward.
    torch.library.register_autograd(
        "iterl2norm::native_backward",
        _not_differentiable("native_backward", "the native norms are differentiable once"),
        setup_context=lambda ctx, inputs, output: None,
    )
    torch.library.register_autograd(
        "iterl2norm::emulated_forward",
        _not_differentiable(
            "emulated_forward",
            "gradients through the emulation (rounding passed straight through) "
            "come from the torch path, which runs whenever an input requires grad",
        ),
        setup_context=lambda ctx, inputs, output: None,
    )


class _NativeNorm(torch.autograd.Function):
    """Eager training through the native kernel: the operator's forward and
    autograd formula, without the dispatcher (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, center, mean, eps, *iteration):
        out, row_mean, scale = _native_forward_impl(x, weight, bias, center, mean, eps, *iteration)
        _native_setup_context(ctx, (x, weight, bias, center, mean), (out, row_mean, scale))
        return out, row_mean, scale

    @staticmethod
    @once_differentiable
    def backward(ctx, grad, _grad_mean, _grad_scale):
        return _native_grads(ctx, grad, _native_backward_impl)


def native_scalar(settings: IterSettings):
    """The kernels' ``Iteration`` for native settings (``fmt`` None), or None;
    IterSettings holds it (:attr:`IterSettings.native_scalar`) for
    :func:`native_call`."""
    iteration = settings.kernel_iteration
    if iteration is None or settings.fmt is not None:
        return None
    return _scalar(*iteration)


def native_call(x, normalized_shape, weight, bias, eps: float, settings: IterSettings, center):
    """LayerNorm (``center``) or RMSNorm by the native kernel, for the common
    eager call, checked in a few attribute reads: a contiguous CPU tensor of
    float32, bfloat16 or float16, normalized over its last dimension, weight
    and bias None or tensors of that length, nothing that needs a gradient.
    Returns None where any check fails: the general path then runs, and
    raises where it should. Small calls are dominated by this overhead."""
    if torch.compiler.is_compiling():
        return None
    scalar = settings.native_scalar
    if scalar is None or not ENABLED or not _isa_applied or type(x) is not torch.Tensor:
        return None
    if x.dtype not in _FAST_DTYPES or not x.is_cpu or x.dim() == 0 or not x.is_contiguous():
        return None
    d = x.shape[-1]
    if not (
        normalized_shape == d
        if type(normalized_shape) is int
        else type(normalized_shape) in (tuple, torch.Size)
        and len(normalized_shape) == 1
        and type(normalized_shape[0]) is int
        and normalized_shape[0] == d
    ):
        return None
    for p in (weight, bias):
        if p is not None and (
            type(p) not in (torch.Tensor, torch.nn.Parameter)
            or p.shape != (d,)
            or not p.is_cpu
            or (p.requires_grad and torch.is_grad_enabled())
        ):
            return None
    if (x.requires_grad and torch.is_grad_enabled()) or x.numel() == 0:
        return None
    # Views only where the input is not already (rows, d): a view costs about
    # as much as a fifth of the kernel on a small call.
    rows = x if x.dim() == 2 else x.view(-1, d)
    w, b = (
        p if p is None or (p.dtype == torch.float32 and p.is_contiguous()) else _as_float(p)
        for p in (weight, bias)
    )  # as the kernel reads them, without _as_float's detach (nothing needs a gradient)
    out, _, _ = _kernels.native_forward(rows, w, b, center, 1.0 / d, eps, scalar)
    return out if x.dim() == 2 else out.view(x.shape)


def native(
    x2d: torch.Tensor,
    settings: IterSettings,
    *,
    center: bool,
    mean: bool,
    eps: float,
    weight=None,
    bias=None,
) -> torch.Tensor:
    """The native path on rows (rows, d), in x2d's dtype; ``mean``: of the
    squares (LayerNorm, RMSNorm), else their sum (L2)."""
    args = (x2d.contiguous(), weight, bias, center, mean, eps, *settings.kernel_iteration)
    if torch.compiler.is_compiling():
        # The operator carries its autograd formula into the traced graph.
        return torch.ops.iterl2norm.native_forward(*args)[0]
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x2d, weight, bias)
    ):
        return _NativeNorm.apply(*args)[0]
    # Nothing to differentiate (inference): the kernel alone, without the
    # autograd.Function's bookkeeping, a fixed cost that small calls feel.
    return _native_forward_impl(*args)[0]


def emulated(
    x2d: torch.Tensor,
    settings: IterSettings,
    ar: Arithmetic,
    *,
    center: bool,
    mean: bool,
    eps: float,
    weight=None,
    bias=None,
) -> torch.Tensor:
    """The emulation on rows (rows, d): the values of the format in float32."""
    args = (x2d.contiguous(), weight, bias, ar.fmt.name, center, mean, eps)
    args += tuple(settings.kernel_iteration)
    if torch.compiler.is_compiling():
        return torch.ops.iterl2norm.emulated_forward(*args)
    return _emulated_forward_impl(*args)
