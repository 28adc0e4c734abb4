"""The compiled row kernels (csrc/kernels.cpp), when the package was built with them.

``native``: the fast native path, one fused pass per row (float, bfloat16 and
half inputs), differentiated analytically at the computed scale. ``emulated``:
the bit-accurate 8- and 16-bit emulation with float32 accumulation, the same
bits as the torch emulation (tests/test_fused.py). Callers fall back to the
torch paths when :func:`native_ok` / :func:`emulated_ok` say no.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch
from torch.autograd.function import once_differentiable

from ._arith import Arithmetic
from ._validation import IterSettings
from .formats import FORMATS
from .rsqrt import smallest_at_least_sqrt2

try:
    from . import _kernels
except ImportError:  # installed without the compiled kernels
    _kernels = None

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
    """How the kernels came (``"compiled"``: built with the package, or
    ``"none"``), the instruction-set variant in use and the ones this CPU runs."""
    if _kernels is None:
        return {"kernels": "none", "isa": None, "supported_isas": []}
    return {"kernels": "compiled", "isa": isa(), "supported_isas": list(_kernels.supported_isas())}


def available() -> bool:
    if _kernels is None or not ENABLED:
        return False
    if not _isa_applied:
        apply_isa_override()
    return True


def _eligible(x: torch.Tensor, settings: IterSettings) -> bool:
    return available() and settings.mode == "scalar" and x.dtype in _FAST_DTYPES and x.is_cpu


def native_ok(x: torch.Tensor, settings: IterSettings) -> bool:
    return _eligible(x, settings) and settings.fmt is None


def emulated_ok(x: torch.Tensor, settings: IterSettings, ar: Arithmetic, *params) -> bool:
    # Gradients through the emulation pass rounding straight through: the torch path.
    return (
        _eligible(x, settings)
        and ar.emulated
        and ar.carrier == torch.float32
        and ar.acc == FORMATS["fp32"]
        and not x.requires_grad
        and not any(p is not None and p.requires_grad for p in params)
    )


_KERNEL_ITERATIONS: dict[tuple, object] = {}


def kernel_iteration(settings: IterSettings, ar: Arithmetic):
    """settings.iteration as the kernels take it (``_kernels.Iteration``), the
    constants as the datapath holds them; cached, since rounding the constants
    costs more than a small kernel call."""
    schedule = settings.schedule
    key = (
        settings.steps,
        settings.rates,
        settings.init,
        ar.fmt.name,
        None if schedule is None else (schedule.start, schedule.steps, schedule.table),
    )
    built = _KERNEL_ITERATIONS.get(key)
    if built is None:
        built = _KERNEL_ITERATIONS[key] = _build_kernel_iteration(settings.iteration, ar)
    return built


def _build_kernel_iteration(iteration, ar: Arithmetic):
    steps = iteration.steps
    params: list[float] = []
    table: list[float] = []
    if iteration.start == "exponent+mantissa":  # the comparison and the two outcomes
        params = [
            smallest_at_least_sqrt2(ar.fmt),
            ar.const(math.sqrt(0.5)),
            ar.const(math.sqrt(2)),
        ]
    elif iteration.start == "magic":  # the constant and the format's fields
        params = [iteration.magic_for(ar.fmt), ar.fmt.mantissa_bits, ar.fmt.bias]
    elif iteration.start == "table":
        params = [len(iteration.table[0])]
        table = [ar.const(c) for row in iteration.table for pair in row for c in pair]
    return _kernels.Iteration(
        start=iteration.start,
        start_params=params,
        table=table,
        forms=[step.form for step in steps],
        c1=[ar.const(step.c1) for step in steps],
        c2=[ar.const(step.c2) for step in steps],
    )


def _as_float(p: torch.Tensor | None) -> torch.Tensor | None:
    """A weight or bias as the kernels take it: flat contiguous float32."""
    if p is None:
        return None
    p = p.detach()
    if p.dim() != 1:
        p = p.reshape(-1)
    return p if p.dtype == torch.float32 and p.is_contiguous() else p.float().contiguous()


class _NativeNorm(torch.autograd.Function):
    """(rows, d) -> (rows, d) through the native kernel; backward (also a kernel)
    is the exact derivative of y / sqrt(q) at the computed scale r, as torch's
    LayerNorm backward uses its rstd, not the derivative of the iteration's steps."""

    @staticmethod
    def forward(ctx, x, weight, bias, center, inv_d, eps, scalar):
        w, b = _as_float(weight), _as_float(bias)
        out, mean, scale = _kernels.native_forward(x, w, b, center, inv_d, eps, scalar)
        ctx.save_for_backward(x, w, mean, scale)
        ctx.center, ctx.inv_d = center, inv_d
        ctx.params = weight, bias
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        x, w, mean, scale = ctx.saved_tensors
        weight, bias = ctx.params
        dx, dw, db = _kernels.native_backward(
            x,
            grad.to(x.dtype).contiguous(),
            mean,
            scale,
            w,
            ctx.center,
            ctx.inv_d,
            weight is not None and ctx.needs_input_grad[1],
            bias is not None and ctx.needs_input_grad[2],
        )
        if dw is not None:
            dw = dw.reshape(weight.shape).to(weight.dtype)
        if db is not None:
            db = db.reshape(bias.shape).to(bias.dtype)
        return dx, dw, db, None, None, None, None


def native(
    x2d: torch.Tensor,
    settings: IterSettings,
    *,
    center: bool,
    inv_d: float,
    eps: float,
    weight=None,
    bias=None,
) -> torch.Tensor:
    """The native path on contiguous rows (rows, d), in x2d's dtype."""
    scalar = kernel_iteration(settings, Arithmetic.resolve(torch.float32))
    x2d = x2d.contiguous()
    if torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x2d, weight, bias)
    ):
        return _NativeNorm.apply(x2d, weight, bias, center, inv_d, eps, scalar)
    # Nothing to differentiate (inference): the kernel alone, without the
    # autograd.Function's bookkeeping, a fixed cost that small calls feel.
    out, _, _ = _kernels.native_forward(
        x2d, _as_float(weight), _as_float(bias), center, inv_d, eps, scalar
    )
    return out


def emulated(
    x2d: torch.Tensor,
    settings: IterSettings,
    ar: Arithmetic,
    *,
    center: bool,
    inv_d: float,
    eps: float,
    eps_floor: int,
    weight=None,
    bias=None,
) -> torch.Tensor:
    """The emulation on contiguous rows (rows, d): the values of the format in float32."""
    w = None if weight is None else ar.quantize(weight.reshape(-1)).contiguous()
    b = None if bias is None else ar.quantize(bias.reshape(-1)).contiguous()
    return _kernels.emulated_forward(
        x2d.contiguous(),
        w,
        b,
        ar.fmt.name,
        center,
        inv_d,
        inv_d != 1.0,
        eps,
        eps_floor,
        kernel_iteration(settings, ar),
    )
