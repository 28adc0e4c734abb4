"""L2 normalization x / ||x||_2: IterL2Norm and the methods it is compared with.

All functions here share one calling convention,
``f(x, dim=-1, *, <method settings>, fmt=None, acc_fmt=None)``, and one
pipeline (pre-scaling, statistics, exponent split, output), so a study can
swap methods and see only the difference in how q**-0.5 is obtained.

``fmt=None`` computes natively (16-bit inputs in float32, like PyTorch's own
norms); ``fmt="bf16"`` etc. emulates that datapath bit-accurately: the input
is rounded to ``fmt``, every operation result is rounded to ``fmt`` (nearest
even), and reductions accumulate in ``acc_fmt`` (default fp32 for 8- and
16-bit formats, else ``fmt``) over a balanced adder tree.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from functools import partial

import torch

from . import rsqrt
from ._arith import Arithmetic
from ._pipeline import divide_output, front_end, normalize_scalar
from ._rows import fused_rows, iterate, run_rows, scalar_estimate
from ._validation import IterSettings, as_tensor, check_int, iter_settings, optional_format

__all__ = [
    "exact_normalize",
    "fisr_normalize",
    "invsqrt2_normalize",
    "iter_rsqrt",
    "iterl2norm",
    "sqrt23_normalize",
]


def iterl2norm(
    x,
    dim: int = -1,
    *,
    steps: int = 5,
    update_rate: float | Sequence[float] = 0.5,
    init: str = "exponent",
    mode: str = "scalar",
    fmt=None,
    acc_fmt=None,
    schedule: str | None = None,
):
    r"""L2-normalize ``x`` along ``dim`` by IterL2Norm, with no square root or division.

    The scale a = ||x||^-1 is the steady state of the Euler iteration
    a <- a + lambda * a * (1 - a^2 ||x||^2) (scalar mode), or the vector is
    driven to unit norm by z <- z + lambda * (1 - ||z||^2) z (vector mode),
    from a division-free initial estimate. Source: C. Ye, Y. Sim, Y. Kim,
    S. Jin, D. S. Jeong, "IterL2Norm: Fast Iterative L2-Normalization",
    DATE 2025 (arXiv:2412.04778).

    Args:
        x: ``torch.Tensor`` or ``numpy.ndarray`` of floats; leading dims are batch.
        dim: the dimension to normalize. Default: -1.
        steps: number of iteration steps. Default: 5 (the paper's).
        update_rate: lambda, one number or one per step. Default: 0.5, where
            the scalar iteration is Newton's method for q^-1/2.
        init: ``"exponent"`` (exponent field only, the paper's), ``"exponent+mantissa"``
            (plus one mantissa comparison) or ``"magic"`` (the FISR bit trick).
        mode: ``"scalar"`` or ``"vector"``; equal in exact arithmetic.
        fmt: datapath format to emulate bit-accurately (``"fp32"``, ``"fp16"``,
            ``"bf16"``, ``"fp8_e4m3"``, ``"fp8_e5m2"``, ``"fp64"``), or None to
            compute natively. Default: None.
        acc_fmt: accumulation format of the reductions; needs ``fmt``.
            Default: fp32 for 8- and 16-bit ``fmt``, else ``fmt``.
        schedule: a named start and per-step constants in place of ``init``
            and ``update_rate`` (``"minimax"``, ``"minimax-mantissa"``,
            ``"minimax-magic"``, ``"table"``; see :mod:`iterl2norm.schedules`).
            Default: None, the paper's settings.

    Returns:
        The same kind as ``x`` (tensor or array). Native: ``x``'s dtype.
        Emulated: ``x``'s dtype if it holds every value of ``fmt``, else
        float32 or float64. Zero vectors give zeros; a vector holding NaN or
        Inf gives NaN, and only that vector.

    Shape:
        Output: same as ``x``.

    Examples:
        >>> x = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
        >>> iterl2norm(x)
        tensor([[0.6000, 0.8000],
                [0.0000, 0.0000]])
        >>> iterl2norm(x, steps=1, fmt="bf16")  # one step from the exponent start: a = 0.71875
        tensor([[0.5391, 0.7188],
                [0.0000, 0.0000]])
    """
    settings = iter_settings(steps, update_rate, init, mode, fmt, acc_fmt, schedule)
    return run_rows(
        x,
        dim,
        settings.arithmetic,
        lambda v, ar: iterate(v, ar, settings),
        fused_rows(settings),
    )


def _arithmetic(fmt, acc_fmt):
    """``arithmetic`` for run_rows: the checked formats, resolved for the input's dtype."""
    fmt, acc_fmt = optional_format(fmt, "fmt"), optional_format(acc_fmt, "acc_fmt")
    return partial(Arithmetic.resolve, fmt=fmt, acc_fmt=acc_fmt)


def exact_normalize(x, dim: int = -1, *, fmt=None, acc_fmt=None):
    """L2-normalize with a real square root and division: x_i / rnd(sqrt(q)).

    The textbook method, the precision reference a hardware normalizer is
    held to. Same pipeline and rounding rules as :func:`iterl2norm`.

    >>> exact_normalize(torch.tensor([3.0, 4.0]))
    tensor([0.6000, 0.8000])
    """
    return run_rows(
        x,
        dim,
        _arithmetic(fmt, acc_fmt),
        lambda v, ar: divide_output(front_end(v, ar), ar),
    )


def _check_magic(magic, ar: Arithmetic) -> int | None:
    if magic is None:
        return None
    magic = check_int(magic, "magic")
    if magic >= 1 << ar.fmt.bits:
        raise ValueError(
            f"magic {magic:#x} does not fit the {ar.fmt.bits}-bit format {ar.fmt.name!r}"
        )
    return magic


def fisr_normalize(
    x,
    dim: int = -1,
    *,
    steps: int = 1,
    magic: int | None = None,
    fmt=None,
    acc_fmt=None,
    newton_steps: int | None = None,
):
    """L2-normalize with the fast inverse square root (FISR).

    r0 = from_bits(MAGIC - (to_bits(q) >> 1)), then ``steps`` Newton steps
    r <- r * (1.5 - 0.5 q r^2). Source: the Quake III Arena code (id Software,
    1999) and C. Lomont, "Fast Inverse Square Root" (2003). ``magic=None``
    derives MAGIC from the computing format (0x5F3759DF, 0x59BB, 0x5F37 for
    fp32/fp16/bf16; see :func:`~iterl2norm.formats.fisr_magic`).
    ``newton_steps`` is the old name of ``steps`` (deprecated).

    >>> fisr_normalize(torch.tensor([3.0, 4.0]), steps=2)
    tensor([0.6000, 0.8000])
    """
    if newton_steps is not None:
        warnings.warn(
            "fisr_normalize(newton_steps=...) is now fisr_normalize(steps=...)",
            DeprecationWarning,
            stacklevel=2,
        )
        steps = newton_steps
    steps = check_int(steps, "steps")

    def compute(v, ar):
        estimate = partial(rsqrt.fisr, steps=steps, magic=_check_magic(magic, ar))
        return normalize_scalar(v, ar, estimate)

    return run_rows(x, dim, _arithmetic(fmt, acc_fmt), compute)


def invsqrt2_normalize(x, dim: int = -1, *, steps: int = 2, fmt=None, acc_fmt=None):
    """L2-normalize with InvSqrt2, FISR with modified Newton corrections.

    MAGIC = 0x5F376908, then r <- r * (k - 0.5 q r^2) with k1 = 1.50087896,
    k2 = 1.50000057 (plain Newton, k = 1.5, beyond two steps). Source:
    C. J. Walczyk, L. V. Moroz, J. L. Cieslinski, "Improving the Accuracy of
    the Fast Inverse Square Root by Modifying Newton-Raphson Corrections",
    Entropy 23(1):86, 2021. For formats other than fp32 the magic constant
    keeps its offset (see :func:`~iterl2norm.formats.fisr_magic`).

    >>> invsqrt2_normalize(torch.tensor([3.0, 4.0]))
    tensor([0.6000, 0.8000])
    """
    steps = check_int(steps, "steps")
    return run_rows(
        x,
        dim,
        _arithmetic(fmt, acc_fmt),
        lambda v, ar: normalize_scalar(v, ar, partial(rsqrt.invsqrt2, steps=steps)),
    )


def sqrt23_normalize(x, dim: int = -1, *, steps: int = 2, fmt=None, acc_fmt=None):
    """L2-normalize with "SQRT_23-bits": a cubic first correction, then Newton.

    MAGIC = 0x5F1110A0; step 1 is r <- r * (2.2825186 + c * (2.2533049 + c))
    with c = -q r^2; later steps are Newton in correction form,
    r <- r + r * (0.5 - 0.5 q r^2). Source: Kokosinski, Moroz et al., 2024
    (the "SQRT_23-bits" variant of modified-Newton FISR); in FP32 its worst
    relative errors are 2.0e-5 after step 1 and 1.0e-7 after step 2.

    >>> sqrt23_normalize(torch.tensor([3.0, 4.0]))
    tensor([0.6000, 0.8000])
    """
    steps = check_int(steps, "steps")
    return run_rows(
        x,
        dim,
        _arithmetic(fmt, acc_fmt),
        lambda v, ar: normalize_scalar(v, ar, partial(rsqrt.sqrt23, steps=steps)),
    )


def iter_rsqrt(
    q: torch.Tensor,
    *,
    steps: int = 5,
    update_rate: float | Sequence[float] = 0.5,
    init: str = "exponent",
    fmt=None,
    schedule: str | None = None,
) -> torch.Tensor:
    """Elementwise q**-0.5 by IterL2Norm's scalar iteration, for q > 0.

    The building block of :func:`iterl2norm` on its own: the exponent of q
    is split off exactly, the iteration runs on the normalized value, and
    the power of two is restored. ``fmt`` and ``schedule`` as in
    :func:`iterl2norm`. Returns NaN for q < 0 or NaN, inf for q = 0 and 0
    for q = inf.

    >>> iter_rsqrt(torch.tensor([4.0, 0.25, 1e-30]))
    tensor([5.0000e-01, 2.0000e+00, 1.0000e+15])
    """
    settings = IterSettings(
        steps=steps, update_rate=update_rate, init=init, fmt=fmt, schedule=schedule
    )
    q, restore = as_tensor(q, "q")
    ar = Arithmetic.resolve(q.dtype, settings.fmt, None)
    qc = ar.quantize(q)
    ok = torch.isfinite(qc) & (qc > 0)
    qc_safe = torch.where(ok, qc, 1.0)
    j = rsqrt.exponent_split(qc_safe)
    qn = ar.rnd(ar.scale(qc_safe, -2 * j))
    r = ar.rnd(ar.scale(scalar_estimate(settings)(qn, ar), -j))
    special = torch.where(qc == 0, float("inf"), torch.where(qc == float("inf"), 0.0, float("nan")))
    r = torch.where(ok, r, special.to(r.dtype))
    return restore(r, ar.fmt if ar.emulated else None)
