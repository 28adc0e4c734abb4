"""The unit's output as a plain function: the golden model of the simulator.

Vectorized over rows and elements, following the unit's operation order
(docs/HARDWARE.md): the simulator, which issues the same operations one by
one on a cycle schedule, must produce these bits exactly.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

from .. import rsqrt, schedules
from .._arith import Arithmetic
from .._pipeline import row_exponent
from .config import UnitConfig, check_d


def arithmetic(cfg: UnitConfig) -> Arithmetic:
    return Arithmetic.resolve(torch.float32, cfg.fmt, cfg.acc_fmt)


def reduce(values: torch.Tensor, cfg: UnitConfig, ar: Arithmetic) -> torch.Tensor:
    """Sum over the last dimension in the unit's order. (rows, d) -> (rows,)

    The d values are zero-padded to C chunks of P lanes, chunk c arriving on
    cycle c. ``"tree"``: a pairwise adder tree reduces each chunk to one
    value t_c, and accumulator slot s sums the t_c with c = s (mod S) in
    arrival order. ``"accumulators"``: lane j's slot s sums the chunk values
    of lane j with c = s (mod S). Every slot starts from its first value (no
    add), and a pairwise tree over the slots (lane-major), zero-padded to a
    power of two, gives the total. Every add rounds to the accumulator.
    """
    rows, d = values.shape
    p, s = cfg.lanes, cfg.slots
    chunks = -(-d // p)
    x = torch.nn.functional.pad(values, (0, chunks * p - d)).reshape(rows, chunks, p)
    if cfg.reduction == "tree":
        while x.shape[-1] > 1:
            x = ar.rnd_acc(x[..., 0::2] + x[..., 1::2])
        x = x[..., 0].unsqueeze(-1)  # (rows, C, 1): one value per cycle, one "lane"
    lanes = x.shape[-1]
    partials = []
    for lane in range(lanes):
        for slot in range(s):
            picked = x[:, slot::s, lane]  # chunks c = slot (mod S), in arrival order
            if picked.shape[1] == 0:
                partials.append(torch.zeros_like(x[:, 0, 0]))
                continue
            acc = picked[:, 0]
            for c in range(1, picked.shape[1]):
                acc = ar.rnd_acc(acc + picked[:, c])
            partials.append(acc)
    level = torch.stack(partials, dim=-1)
    width = 1 << (level.shape[-1] - 1).bit_length()
    level = torch.nn.functional.pad(level, (0, width - level.shape[-1]))
    while level.shape[-1] > 1:
        level = ar.rnd_acc(level[..., 0::2] + level[..., 1::2])
    return level[..., 0]


def statistics(v: torch.Tensor, cfg: UnitConfig, ar: Arithmetic):
    """(y, k, q): the vector to normalize, its pre-scale exponent and
    q = sum((y 2^-k)^2) as the unit computes them. (rows, d) -> (rows, d), (rows,), (rows,)"""
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
        k = row_exponent(v)[0][:, 0]
        ys = ar.scale(y, -k[:, None])
        return y, k, reduce(ar.rnd_acc(ys * ys), cfg, ar)
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
    ys = ar.scale(y, -k[:, None])
    shift = -j[:, None]
    if cfg.mode == "vector":
        z = ar.rnd(ys * ar.scale(rsqrt.initial_estimate(qn, ar, cfg.init), shift))
        for _ in range(cfg.steps):
            w = reduce(ar.rnd_acc(z * z), cfg, ar)[:, None]
            g = ar.rnd(0.5 * ar.rnd(1.0 - ar.rnd(w)))
            z = ar.rnd(z + ar.rnd(g * z))
        out = z
    elif cfg.method == "exact":
        out = ar.rnd(ar.scale(ys, shift) / ar.sqrt(qn))
    else:
        out = ar.rnd(ys * ar.scale(estimate(qn, cfg, ar), shift))
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
