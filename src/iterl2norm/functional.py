"""LayerNorm and RMSNorm whose inverse square root is IterL2Norm.

Both follow ``torch.nn.functional.layer_norm`` / ``rms_norm`` exactly in
their arguments and eps semantics; the one difference is how
(var + eps)**-0.5 is obtained. See :func:`~iterl2norm.iterl2norm` for the
iteration settings and the ``fmt``/``acc_fmt`` emulation rules.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from fractions import Fraction

import torch

from ._arith import Arithmetic
from ._pipeline import row_exponent
from ._validation import IterSettings, as_tensor, check_float, iter_settings
from .normalize import check_acc_capacity, fused_rows, iterate

__all__ = ["layer_norm", "rms_norm"]


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


def _run(x, normalized_shape, weight, bias, eps: float, settings: IterSettings, center: bool):
    t, restore = as_tensor(x)
    shape = _shape(t, normalized_shape)
    ar = Arithmetic.resolve(t.dtype, settings.fmt, settings.acc_fmt)
    weight, bias = _param(weight, "weight", shape), _param(bias, "bias", shape)
    d = math.prod(shape)
    rows = t if len(shape) == 1 else t.reshape(*t.shape[: t.dim() - len(shape)], d)  # (..., d)
    check_acc_capacity(ar, d)
    inv_d = Fraction(1, d)  # rounded once, exactly, wherever it is used
    if rows.numel():
        fused = fused_rows(settings, center=center, inv_d=inv_d, eps=eps, weight=weight, bias=bias)(
            rows, ar
        )
        if fused is not None:
            return restore(fused.view_as(t), ar.fmt if ar.emulated else None)
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


def layer_norm(
    x,
    normalized_shape,
    weight=None,
    bias=None,
    eps: float = 1e-5,
    *,
    steps: int = 5,
    update_rate: float | Sequence[float] = 0.5,
    init: str = "exponent",
    mode: str = "scalar",
    fmt=None,
    acc_fmt=None,
    schedule: str | None = None,
):
    r"""Layer normalization with IterL2Norm in place of the inverse square root.

    .. math:: y = \frac{x - \mathrm{E}[x]}{\sqrt{\mathrm{Var}[x] + \epsilon}} * \gamma + \beta

    over the last ``len(normalized_shape)`` dimensions, with the biased
    variance, as ``torch.nn.functional.layer_norm``.

    Args:
        x: input tensor or array.
        normalized_shape: trailing shape to normalize over.
        weight, bias: optional elementwise affine parameters of that shape.
        eps: added to the variance. Default: 1e-5.
        steps, update_rate, init, mode, fmt, acc_fmt, schedule: see
            :func:`~iterl2norm.iterl2norm`.

    Emulated (``fmt`` set): mean and variance come out of the accumulator
    (sum * (1/d), + eps), x - mean is rounded once to ``fmt``, the iteration
    runs in ``fmt``, then ``* weight`` and ``+ bias`` are rounded to ``fmt``.

    >>> x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    >>> layer_norm(x, (4,))
    tensor([[-1.3416, -0.4472,  0.4472,  1.3416]])
    """
    settings = iter_settings(steps, update_rate, init, mode, fmt, acc_fmt, schedule)
    eps = check_float(eps, "eps")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    return _run(x, normalized_shape, weight, bias, eps, settings, center=True)


def rms_norm(
    x,
    normalized_shape,
    weight=None,
    eps: float | None = None,
    *,
    steps: int = 5,
    update_rate: float | Sequence[float] = 0.5,
    init: str = "exponent",
    mode: str = "scalar",
    fmt=None,
    acc_fmt=None,
    schedule: str | None = None,
):
    r"""RMS normalization with IterL2Norm in place of the inverse square root.

    .. math:: y = \frac{x}{\sqrt{\mathrm{mean}(x^2) + \epsilon}} * \gamma

    as ``torch.nn.functional.rms_norm``: ``eps=None`` means the machine
    epsilon of the dtype torch computes in (float32 for 16-bit inputs).

    >>> rms_norm(torch.tensor([[3.0, 4.0]]), (2,))
    tensor([[0.8485, 1.1314]])
    """
    settings = iter_settings(steps, update_rate, init, mode, fmt, acc_fmt, schedule)
    if eps is None:
        # torch takes the epsilon of the dtype it computes in: float32 for
        # 16-bit inputs (whose own epsilon would swamp small activations).
        t, _ = as_tensor(x)
        eps = torch.finfo(Arithmetic.resolve(t.dtype).carrier).eps
    eps = check_float(eps, "eps")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    return _run(x, normalized_shape, weight, None, eps, settings, center=False)
