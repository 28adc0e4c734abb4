"""The row machinery every public norm goes through, with calls going one way.

``functional`` (layer_norm, rms_norm), ``normalize`` (the L2 functions) and
``modules`` are thin layers over this module; it holds the validation of the
input, moving the normalized dimension last, the arithmetic, the compiled
kernels' dispatch, LayerNorm's centring and the affine step, and calls the
shared pipeline (``_pipeline``) below it. The modules pass their validated
:class:`~iterl2norm._validation.IterSettings` straight in.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import partial

import torch

from . import _fused, schedules
from ._arith import Arithmetic, native_carrier
from ._pipeline import (
    normalize_scalar,
    normalize_vector,
    row_exponent,
)
from ._validation import IterSettings, as_tensor, check_dim, check_float


def check_acc_capacity(ar: Arithmetic, d: int) -> None:
    """Pre-scaled elements are below 2 in magnitude, so sums of squares stay
    below 4 (d + 1) (one extra element in vector mode); the accumulator must hold that."""
    if ar.emulated and ar.acc.max < 4 * (d + 1):
        raise ValueError(
            f"acc_fmt={ar.acc.name!r} (largest value {ar.acc.max:g}) cannot hold "
            f"the sum of {d} squares, which may reach {4 * (d + 1)}; "
            "choose a wider acc_fmt"
        )


def run_rows(
    x,
    dim,
    arithmetic: Callable[[torch.dtype], Arithmetic],
    compute: Callable[[torch.Tensor, Arithmetic], torch.Tensor],
    fused: Callable | None = None,
):
    """Validate, move ``dim`` last, resolve the arithmetic, run, and restore.

    ``arithmetic(dtype)`` gives the policy for the input's dtype
    (:meth:`Arithmetic.resolve` with the caller's formats, or
    :meth:`IterSettings.arithmetic`). ``fused(rows, ar)`` may compute the
    result with a compiled kernel from the (..., d) input as it is; it
    returns None where it does not apply.
    """
    t, restore = as_tensor(x)
    dim = check_dim(t, dim)
    ar = arithmetic(t.dtype)
    moved = t.movedim(dim, -1)  # (..., d)
    check_acc_capacity(ar, moved.shape[-1])
    out = fused(moved, ar) if fused is not None and moved.numel() else None
    if out is None:
        # Contiguous rows: the native sum's order then depends only on the values.
        v = ar.quantize(moved).contiguous()
        out = compute(v, ar) if v.numel() else v
    return restore(out.movedim(-1, dim), ar.fmt if ar.emulated else None)


def fused_rows(
    settings: IterSettings,
    *,
    center: bool = False,
    mean: bool = False,
    eps: float = 0.0,
    weight=None,
    bias=None,
) -> Callable:
    """``fused`` for :func:`run_rows`: the compiled kernels where they apply.
    ``mean``: normalize by the mean of the squares (inv_d = 1/d), else their sum."""

    def run(moved: torch.Tensor, ar: Arithmetic):
        rows = moved if moved.dim() == 2 else moved.reshape(-1, moved.shape[-1])
        kw = {"center": center, "mean": mean, "eps": eps, "weight": weight, "bias": bias}
        if _fused.native_ok(moved, settings):
            out = _fused.native(rows, settings, **kw)
        elif _fused.emulated_ok(moved, settings, ar, weight, bias):
            out = _fused.emulated(rows, settings, ar, **kw)
        else:
            return None
        return out if out.dim() == moved.dim() else out.view(moved.shape)

    return run


def iterate(v: torch.Tensor, ar: Arithmetic, settings: IterSettings, **stats) -> torch.Tensor:
    """IterL2Norm on the rows of carrier tensor ``v`` in the mode ``settings`` asks for."""
    if settings.mode == "vector":
        return normalize_vector(v, ar, init=settings.init, rates=settings.rates, **stats)
    return normalize_scalar(v, ar, scalar_estimate(settings), **stats)


def scalar_estimate(settings: IterSettings):
    """The estimate of qn**-0.5 that ``settings`` describe, as f(qn, ar)."""
    return partial(schedules.run, iteration=settings.iteration)


def _shape(t: torch.Tensor, normalized_shape) -> tuple[int, ...]:
    if type(normalized_shape) in (tuple, torch.Size) and all(
        type(n) is int for n in normalized_shape
    ):
        shape = tuple(normalized_shape)  # the usual call, checked without the ABCs
    else:
        if isinstance(normalized_shape, numbers.Integral) and not isinstance(
            normalized_shape, bool
        ):
            normalized_shape = (normalized_shape,)
        if not isinstance(normalized_shape, (Sequence, torch.Size)) or not all(
            isinstance(n, numbers.Integral) and not isinstance(n, bool) for n in normalized_shape
        ):
            raise TypeError(
                f"normalized_shape must be an int or a sequence of ints, got {normalized_shape!r}"
            )
        shape = tuple(int(n) for n in normalized_shape)
    if not shape or tuple(t.shape[t.dim() - len(shape) :]) != shape or len(shape) > t.dim():
        raise ValueError(
            f"normalized_shape {shape} does not match the trailing dimensions "
            f"of an input of shape {tuple(t.shape)}"
        )
    return shape


def _param(p, name: str, shape: tuple[int, ...]) -> torch.Tensor | None:
    """A weight or bias as a tensor, checked against normalized_shape."""
    if p is None:
        return None
    p, _ = as_tensor(p, name)
    if tuple(p.shape) != shape:
        raise ValueError(f"{name} has shape {tuple(p.shape)}, expected normalized_shape {shape}")
    return p


# 1/d, exactly, by d. torch.compile cannot trace making a Fraction: the
# constant function makes it at trace time, and the trace looks it up here.
_ONE_OVER: dict[int, Fraction] = {}


@torch.compiler.assume_constant_result
def _one_over_key(d: int) -> int:
    if d not in _ONE_OVER:
        _ONE_OVER[d] = Fraction(1, d)
    return d


def one_over(d: int) -> Fraction:
    """``Fraction(1, d)``."""
    # operator.index makes a symbolic d (a traced dynamic shape) concrete, so
    # the graph is specialized to it, as the exact constant 1/d requires.
    return _ONE_OVER[_one_over_key(operator.index(d))]


def norm_rows(x, normalized_shape, weight, bias, eps: float, settings: IterSettings, center: bool):
    """LayerNorm (``center``) or RMSNorm over the trailing ``normalized_shape``."""
    t, restore = as_tensor(x)
    shape = _shape(t, normalized_shape)
    ar = settings.arithmetic(t.dtype)
    weight, bias = _param(weight, "weight", shape), _param(bias, "bias", shape)
    d = math.prod(shape)
    rows = t if len(shape) == 1 else t.reshape(*t.shape[: t.dim() - len(shape)], d)  # (..., d)
    check_acc_capacity(ar, d)
    if rows.numel():
        fused = fused_rows(settings, center=center, mean=True, eps=eps, weight=weight, bias=bias)(
            rows, ar
        )
        if fused is not None:
            return restore(fused.view_as(t), ar.fmt if ar.emulated else None)
    inv_d = one_over(d)  # rounded once, exactly, wherever it is used
    # flat carrier tensors of datapath values
    w = None if weight is None else ar.quantize(weight.reshape(-1))
    b = None if bias is None else ar.quantize(bias.reshape(-1))
    v = ar.quantize(rows).contiguous()
    if v.numel() == 0:
        return restore(v.reshape(t.shape), ar.fmt if ar.emulated else None)
    shift = None
    if center:
        # Pre-scale for the mean too, so sum(x) cannot overflow; y stays in
        # units of 2**shift, which the eps term accounts for.
        shift, _ = row_exponent(v)
        xs = ar.scale(v, -shift)
        if ar.emulated:
            # The hardware formulation, as docs/ALGORITHM.md defines it.
            mean = ar.rnd_acc(ar.sum_acc(ar.rnd_acc(xs)) * ar.const_acc(inv_d))
        else:
            # Natively, centre on the first element first, so a constant row
            # centres to exactly zero, as in torch (whose mean is a running one):
            # with BERT's eps = 1e-12, sum * (1/d)'s rounding would otherwise be
            # normalized up to O(1).
            # The shift cancels in exact arithmetic; detached, it also keeps the
            # gradient of the mean at exactly 1/d instead of 1 - (d - 1)/d.
            first = xs[..., :1].detach()

            mean = first + (xs - first).sum(dim=-1, keepdim=True) * ar.const_acc(inv_d)
        v = ar.sub_once(xs, mean)
    out = iterate(v, ar, settings, inv_d=inv_d, eps=eps, shift=shift)
    if w is not None:
        out = ar.rnd(out * w)
    if b is not None:
        out = ar.rnd(out + b)
    return restore(out.reshape(t.shape), ar.fmt if ar.emulated else None)


def _check_eps(eps) -> float:
    eps = check_float(eps, "eps")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    return eps


def layer_norm(x, normalized_shape, weight, bias, eps, settings: IterSettings):
    """:func:`iterl2norm.layer_norm` with validated settings."""
    eps = _check_eps(eps)
    out = _fused.native_call(x, normalized_shape, weight, bias, eps, settings, center=True)
    if out is not None:
        return out
    return norm_rows(x, normalized_shape, weight, bias, eps, settings, center=True)


def rms_norm(x, normalized_shape, weight, eps, settings: IterSettings):
    """:func:`iterl2norm.rms_norm` with validated settings; ``eps=None`` as torch."""
    if eps is None:
        # torch takes the epsilon of the dtype it computes in: float32 for
        # 16-bit inputs (whose own epsilon would swamp small activations).
        t, _ = as_tensor(x)
        eps = torch.finfo(native_carrier(t.dtype)).eps
    eps = _check_eps(eps)
    out = _fused.native_call(x, normalized_shape, weight, None, eps, settings, center=False)
    if out is not None:
        return out
    return norm_rows(x, normalized_shape, weight, None, eps, settings, center=False)
