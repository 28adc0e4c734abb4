"""The normalization pipeline every method shares: front end, estimate, output.

For each row v (last dimension, length d) the result is v * r with
r = (sum(v**2) * inv_d + eps) ** -0.5, computed as follows. (See
docs/ALGORITHM.md for the same definition as a specification.)

1. Pre-scaling. k = floor(log2(max |v|)), raised where needed so that
   eps * 2**(-2k) <= 4. vs = v * 2**(-k) is exact (an exponent offset carried
   alongside, never a separate rounding) and max |vs| lies in [1, 2), so no
   sum below can overflow and no row can underflow.
2. Statistics in the accumulation format: s = sum(rnd_acc(vs**2)) over a
   balanced adder tree, q = rnd_acc(rnd_acc(s * inv_d) + rnd_acc(eps * 2**(-2k))).
3. Exponent split: q = m * 2**e, j = floor((e+1)/2), qn = rnd(q * 2**(-2j)),
   which lies in [1/2, 2]. Only integer work on exponents.
4. Estimate r' ~ qn**-0.5 (an ``rsqrt`` method), then the output
   rnd(vs * (r' * 2**(-j))), one rounding of the exact product.

Rows holding NaN or Inf come out NaN; all-zero rows (eps = 0) come out zero;
every row is computed independently of the others.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import torch

from ._arith import Arithmetic
from .rsqrt import exponent_split, initial_estimate

Estimate = Callable[[torch.Tensor, Arithmetic], torch.Tensor]


def row_exponent(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """floor(log2(max |v|)) per row as int64 (0 for zero rows), and max |v|.

    (..., d) -> (..., 1), (..., 1)
    """
    amax = v.detach().abs().amax(dim=-1, keepdim=True)
    _, exponent = torch.frexp(amax)
    k = torch.where(amax > 0, exponent.to(torch.int64) - 1, 0)
    return k, amax


def eps_exponent_floor(eps: float) -> int:
    """The least k with eps * 2**(-2k) <= 4 (for eps = m 2**e: ceil((e-1)/2))."""
    _, x = math.frexp(eps)  # eps = f * 2**x, f in [0.5, 1), so e = x - 1
    return (x - 1) // 2


@dataclass
class FrontEnd:
    """What the estimate and output stages need from the statistics."""

    vs: torch.Tensor  # (..., d) v * 2**-k, exact
    k: torch.Tensor  # (..., 1) int64, pre-scale exponent including the caller's shift
    qn: torch.Tensor  # (..., 1) datapath value in [1/2, 2]
    j: torch.Tensor  # (..., 1) int64, q = qn * 2**(2j)
    bad: torch.Tensor  # (..., 1) bool, row holds NaN or Inf


def front_end(
    v: torch.Tensor,
    ar: Arithmetic,
    *,
    inv_d: Fraction | int = 1,
    eps: float = 0.0,
    shift: torch.Tensor | None = None,
) -> FrontEnd:
    """Steps 1-3. ``shift``: v is already in units of 2**shift (LayerNorm's y),
    which matters only for the absolute ``eps``."""
    k, amax = row_exponent(v)
    shift = torch.zeros_like(k) if shift is None else shift
    if eps > 0:
        k = torch.maximum(k, eps_exponent_floor(eps) - shift)
    vs = ar.scale(v, -k)
    k = k + shift
    q = ar.sum_acc(ar.rnd_acc(vs * vs))
    if inv_d != 1:
        q = ar.rnd_acc(q * ar.const_acc(inv_d))
    if eps > 0:
        q = ar.rnd_acc(q + ar.rnd_acc(ar.scaled_const(eps, -2 * k)))
    bad = ~torch.isfinite(amax)
    # NaN/Inf rows and all-zero rows have fixed answers; keep their arithmetic tame.
    q = torch.where(bad | (q == 0), torch.ones_like(q), q)
    j = exponent_split(q)
    qn = ar.rnd(ar.scale(q, -2 * j))
    return FrontEnd(vs, k, qn, j, bad)


def _finish(out: torch.Tensor, fe: FrontEnd) -> torch.Tensor:
    return torch.where(fe.bad, torch.full_like(out, float("nan")), out)


def multiply_output(fe: FrontEnd, ar: Arithmetic, r: torch.Tensor) -> torch.Tensor:
    """Step 4's output for a scalar estimate r of qn**-0.5: rnd(vs * r * 2**-j)."""
    return _finish(ar.rnd(fe.vs * ar.scale(r, -fe.j)), fe)


def divide_output(fe: FrontEnd, ar: Arithmetic) -> torch.Tensor:
    """The textbook output: rnd(vs * 2**-j / rnd(sqrt(qn))), with a real sqrt and divide."""
    root = ar.sqrt(fe.qn)
    return _finish(ar.rnd(ar.scale(fe.vs, -fe.j) / root), fe)


def normalize_scalar(v: torch.Tensor, ar: Arithmetic, estimate: Estimate, **stats) -> torch.Tensor:
    """v * r with r from a scalar ``estimate(qn, ar)``; ``stats`` go to :func:`front_end`."""
    fe = front_end(v, ar, **stats)
    return multiply_output(fe, ar, estimate(fe.qn, ar))


def vector_iterates(
    v: torch.Tensor,
    ar: Arithmetic,
    *,
    init: str,
    rates: Sequence[float],
    inv_d: Fraction | int = 1,
    eps: float = 0.0,
    shift: torch.Tensor | None = None,
) -> Iterator[torch.Tensor]:
    """IterL2Norm in vector mode: z <- z + lambda * (1 - |z|**2 * inv_d) * z.

    Yields the output after 0, 1, ..., len(rates) steps.

    z_0 = rnd(vs * a_0 * 2**-j) from the same initial estimate as scalar mode;
    each step reduces |z|**2 again (in the accumulation format), then
    e = 1 - rnd(w), g = lambda*e, z = z + g*z. With eps > 0 the vector carries
    one extra element rnd(sqrt(d * eps) * 2**-k) (scaled like the rest), since
    y / sqrt(|y|**2/d + eps) = sqrt(d) * [y, sqrt(d*eps)] / |[y, sqrt(d*eps)]|,
    restricted to y's elements.
    """
    fe = front_end(v, ar, inv_d=inv_d, eps=eps, shift=shift)
    a0 = initial_estimate(fe.qn, ar, init)
    d = v.shape[-1]
    vs = fe.vs
    if eps > 0:
        extra = ar.rnd(ar.scaled_const(math.sqrt(d * eps), -fe.k))  # a datapath value
        vs = torch.cat([vs, extra], dim=-1)  # (..., d + 1)
    z = ar.rnd(vs * ar.scale(a0, -fe.j))
    yield _finish(z[..., :d], fe)
    for rate in rates:
        w = ar.sum_acc(ar.rnd_acc(z * z))
        if inv_d != 1:
            w = ar.rnd_acc(w * ar.const_acc(inv_d))
        g = ar.rnd(ar.const(rate) * ar.rnd(1.0 - ar.rnd(w)))
        z = ar.rnd(z + ar.rnd(g * z))
        yield _finish(z[..., :d], fe)


def normalize_vector(v: torch.Tensor, ar: Arithmetic, **settings) -> torch.Tensor:
    """The output of :func:`vector_iterates` after its last step."""
    return collections.deque(vector_iterates(v, ar, **settings), maxlen=1)[0]
