"""LayerNorm and RMSNorm whose inverse square root is IterL2Norm.

Both follow ``torch.nn.functional.layer_norm`` / ``rms_norm`` exactly in
their arguments and eps semantics; the one difference is how
(var + eps)**-0.5 is obtained. See :func:`~iterl2norm.iterl2norm` for the
iteration settings and the ``fmt``/``acc_fmt`` emulation rules.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch  # noqa: F401  (the doctests' namespace)

from . import _rows
from ._validation import iter_settings

__all__ = ["layer_norm", "rms_norm"]


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
    return _rows.layer_norm(x, normalized_shape, weight, bias, eps, settings)


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
    return _rows.rms_norm(x, normalized_shape, weight, eps, settings)
