"""The unit's output as a plain function: the golden model of the simulator.

Vectorized over rows and elements, following the unit's operation order
(docs/HARDWARE.md): the simulator, which issues the same operations one by
one on a cycle schedule, must produce these bits exactly.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from ... import rsqrt, schedules
from ..._arith import Arithmetic
from ..._pipeline import row_exponent
from ...formats import ldexp
from . import schedule
from .config import UnitConfig, check_d


def arithmetic(cfg: UnitConfig) -> Arithmetic:
    return Arithmetic.resolve(torch.float32, cfg.fmt, cfg.acc_fmt)


def scaled_product(a: torch.Tensor, b: torch.Tensor, n, rnd, ar: Arithmetic) -> torch.Tensor:
    """``rnd(a * b * 2**n)``, rounded once: the unit folds a power-of-two
    scale (the three-pass pre-scale 2^-k, the estimate's 2^-j) into the
    multiplier's exponent. The operands are datapath values (at most 24
    significant bits), so their product and its scaling are exact in
    float64, and the result is rounded once even where it is subnormal."""
    exact = ldexp(a.to(torch.float64) * b.to(torch.float64), torch.as_tensor(n))
    return rnd(exact).to(ar.carrier)


def scaled_quotient(a: torch.Tensor, b: torch.Tensor, n, ar: Arithmetic) -> torch.Tensor:
    """``rnd(a * 2**n / b)``, the exact method's division with the scale folded
    in: a * 2**n is exact in float64, and its float64 quotient rounded to the
    datapath rounds once (53 >= 2 * 24 + 2 bits)."""
    exact = ldexp(a.to(torch.float64), torch.as_tensor(n)) / b.to(torch.float64)
    return ar.rnd(exact).to(ar.carrier)


def reduce(values: torch.Tensor, cfg: UnitConfig, ar: Arithmetic) -> torch.Tensor:
    """Sum over the last dimension in the unit's order (:mod:`.schedule`), every
    add rounded to the accumulator, all rows and chunks at once. (rows, d) -> (rows,)"""
    rows, d = values.shape
    p = cfg.lanes
    chunks = -(-d // p)
    x = torch.nn.functional.pad(values, (0, chunks * p - d)).reshape(rows, chunks, p)
    add = lambda a, b, _level=None: ar.rnd_acc(a + b)  # noqa: E731
    if cfg.reduction == "tree":  # one value per chunk: a single "lane"
        x = schedule.tree_sum([x[..., lane] for lane in range(p)], add).unsqueeze(-1)
    zero = torch.zeros_like(x[:, 0, 0])
    partials = [
        zero if held is None else held
        for lane in range(x.shape[-1])
        for held in schedule.slot_sums(list(x[:, :, lane].unbind(1)), cfg.slots, add)
    ]
    width = schedule.padded_width(len(partials))
    return schedule.tree_sum(partials + [zero] * (width - len(partials)), add)


def statistics(v: torch.Tensor, cfg: UnitConfig, ar: Arithmetic):
    """(y, k, q): the vector to normalize, its pre-scale exponent and
    q = sum((y 2^-k)^2), each square rounded once, as the unit computes them.
    (rows, d) -> (rows, d), (rows,), (rows,)"""
    d = v.shape[-1]
    zero = torch.zeros(v.shape[0], dtype=torch.int64)
    if cfg.statistics == "l2":
        return v, zero, reduce(ar.rnd_acc(v * v), cfg, ar)
    c = ar.const_acc(Fraction(1, d))
    s1 = reduce(ar.rnd_acc(v), cfg, ar)
    mean = ar.rnd_acc(s1 * c)  # (rows,)
    y = ar.sub_once(v, mean[:, None])
    if cfg.statistics == "three-pass":
        # The first pass found the largest exponent of x; |y| < 2 max|x|.
        # The squares are (y 2^-k)^2, the scale folded into the multiplier.
        k = row_exponent(v)[0][:, 0]
        return y, k, reduce(scaled_product(y, y, -2 * k[:, None], ar.rnd_acc, ar), cfg, ar)
    s2 = reduce(ar.rnd_acc(v * v), cfg, ar)  # two-pass: alongside s1
    p = ar.rnd_acc(ar.rnd_acc(s1 * s1) * c)
    return y, zero, ar.rnd_acc(s2 - p)


def estimate(qn: torch.Tensor, cfg: UnitConfig, ar: Arithmetic) -> torch.Tensor:
    """qn^-1/2 by the configured method (scalar mode)."""
    return schedules.run(qn, ar, cfg.iteration)


def reference(
    x: torch.Tensor,
    cfg: UnitConfig,
    gamma: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
) -> torch.Tensor:
    """What the unit outputs for each row of ``x`` (rows, d); float64 values of fmt."""
    d = check_d(x.shape[-1])
    ar = arithmetic(cfg)
    v = ar.quantize(x)
    y, k, q = statistics(v, cfg, ar)
    # Zero rows, and two-pass rows whose cancelled variance is not positive,
    # have no direction: the unit outputs zeros (then the affine part).
    empty = q <= 0
    bad = ~torch.isfinite(q)
    q = torch.where(empty | bad, torch.ones_like(q), q)
    j = rsqrt.exponent_split(q)
    qn = ar.rnd(ar.scale(q, -2 * j))[:, None]  # (rows, 1), in [1/2, 2]
    # y' = y 2^-k times r 2^-j: one multiply with an exponent offset.
    shift = -(k + j)[:, None]
    if cfg.mode == "vector":
        z = scaled_product(y, rsqrt.initial_estimate(qn, ar, cfg.init), shift, ar.rnd, ar)
        for _ in range(cfg.steps):
            w = reduce(ar.rnd_acc(z * z), cfg, ar)[:, None]
            g = ar.rnd(0.5 * ar.rnd(1.0 - ar.rnd(w)))
            z = ar.rnd(z + ar.rnd(g * z))
        out = z
    elif cfg.method == "exact":
        out = scaled_quotient(y, ar.sqrt(qn), shift, ar)
    else:
        out = scaled_product(y, estimate(qn, cfg, ar), shift, ar.rnd, ar)
    out = torch.where(empty[:, None], torch.zeros_like(out), out)
    out = torch.where(bad[:, None], torch.full_like(out, float("nan")), out)
    if cfg.affine:
        out = affine(out, d, gamma, beta, ar)
    return out.to(torch.float64)


def affine_constants(d: int, gamma, beta, ar: Arithmetic):
    """sqrt(d) * gamma (rounded once from float64) and beta, as the unit stores them."""
    gamma = torch.ones(d, dtype=torch.float64) if gamma is None else gamma.to(torch.float64)
    beta = torch.zeros(d, dtype=torch.float64) if beta is None else beta.to(torch.float64)
    return ar.quantize(gamma * math.sqrt(d)), ar.quantize(beta)


def affine(z: torch.Tensor, d: int, gamma, beta, ar: Arithmetic) -> torch.Tensor:
    g, b = affine_constants(d, gamma, beta, ar)
    return ar.rnd(ar.rnd(z * g) + b)
