"""Test vectors and their expected results, in one place: operand pairs for
the operators, q values for the scalar units, rows (and LayerNorm's gamma
and beta) for the whole unit, each with the library's or the golden model's
bits. The testbenches, the compiled simulations and the tests all draw from
here.
"""

from __future__ import annotations

import numpy as np
import torch

from ..._arith import Arithmetic
from ...formats import FORMATS, decode, encode, round_to_format
from ...normalize import iter_rsqrt
from ...rsqrt import exponent_split
from ..model.config import check_d, get_preset
from ..model.reference import affine_constants, arithmetic, reference
from ..model.simulator import simulate
from ..rtl.fp import FpFormat, operand_formats

__all__ = [
    "ROW_KINDS",
    "close_exponent_pairs",
    "library_result",
    "mixed_pairs",
    "rsqrt_inputs",
    "rsqrt_vectors",
    "sqrt_divide_reference",
    "test_vectors",
    "unit_params",
    "unit_rows",
    "unit_vectors",
]

ROW_KINDS = ("gaussian", "outliers", "zero", "constant", "largest", "smallest", "nan", "inf")


# Operators ----------------------------------------------------------------------


def close_exponent_pairs(fmt: str, n: int, rng: np.random.Generator, fmt_b: str | None = None):
    """``n`` finite operand pairs (a in ``fmt``, b in ``fmt_b``, default the
    same) whose exponents differ by at most the precision plus four:
    alignment, sticky bits and cancellation."""
    f, g = FpFormat.of(fmt), FpFormat.of(fmt_b or fmt)
    exp_a = rng.integers(0, (1 << f.ebits) - 1, n)
    near = exp_a - f.bias + g.bias + rng.integers(-(f.mbits + 5), f.mbits + 6, n)
    exp_b = np.clip(near, 0, (1 << g.ebits) - 2)
    frac_a, frac_b = rng.integers(0, 1 << f.mbits, n), rng.integers(0, 1 << g.mbits, n)
    sign_a, sign_b = rng.integers(0, 2, n), rng.integers(0, 2, n)
    a = (sign_a << (f.width - 1)) | (exp_a << f.mbits) | frac_a
    b = (sign_b << (g.width - 1)) | (exp_b << g.mbits) | frac_b
    return a, b


def mixed_pairs(
    fmt: str, random: int, close: int, rng: np.random.Generator, fmt_b: str | None = None
):
    """``random`` pairs of random bit patterns (every class), then ``close``
    pairs from :func:`close_exponent_pairs`."""
    wa, wb = FpFormat.of(fmt).width, FpFormat.of(fmt_b or fmt).width
    a, b = rng.integers(0, 1 << wa, random), rng.integers(0, 1 << wb, random)
    near_a, near_b = close_exponent_pairs(fmt, close, rng, fmt_b)
    return np.concatenate([a, near_a]), np.concatenate([b, near_b])


def library_result(
    op: str, fmt: str, a: np.ndarray, b: np.ndarray, acc_fmt: str | None = None
) -> torch.Tensor:
    """The library's values for a op b (formats as :func:`operand_formats`):
    the exact result rounded once. Float64 holds every product of two operands
    of these formats, and a float64 sum rounded to them rounds once (53 bits
    are more than 2 p + 1 for p <= 24)."""
    fa, fb, fr = operand_formats(op, fmt, acc_fmt)
    va, vb = decode(torch.from_numpy(a), fa), decode(torch.from_numpy(b), fb)
    return round_to_format(va * vb if op == "mul" else va + vb, fr)


def test_vectors(
    op: str, fmt: str, count: int, seed: int = 0, acc_fmt: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Operand pairs (half random bit patterns, half with close exponents) and
    the bits of the library's result for each."""
    fa, fb, fr = operand_formats(op, fmt, acc_fmt)
    rng = np.random.Generator(np.random.PCG64(seed))
    a, b = mixed_pairs(fa, count // 2, count - count // 2, rng, fb)
    return np.stack([a, b], axis=1), encode(library_result(op, fmt, a, b, acc_fmt), fr).numpy()


# Scalar units ------------------------------------------------------------------


def rsqrt_inputs(fmt: str, count: int, seed: int = 0) -> np.ndarray:
    """q bit patterns: for a 16-bit format every pattern when ``count`` reaches
    2^16; else every class (zeros, subnormals, normals of each exponent and
    both parities, the largest finite, inf, NaN, negatives), then random
    positive finite patterns and random patterns."""
    f = FpFormat.of(fmt)
    if f.width == 16 and count >= 1 << 16:
        return np.arange(1 << 16, dtype=np.int64)
    top = (1 << f.ebits) - 1
    fixed = [0, 1, 2, 3, (1 << f.mbits) - 1, top << f.mbits, (top << f.mbits) | 1]
    fixed += [(e << f.mbits) | frac for e in range(1, top) for frac in (0, (1 << f.mbits) - 1)]
    fixed += [v | (1 << (f.width - 1)) for v in (0, 1, f.bias << f.mbits, top << f.mbits)]
    rng = np.random.Generator(np.random.PCG64(seed))
    rest = max(count - len(fixed), 0)
    positive = rng.integers(1, top << f.mbits, rest - rest // 8)
    anything = rng.integers(0, 1 << f.width, rest // 8)
    return np.concatenate([np.array(fixed, dtype=np.int64), positive, anything])[: max(count, 1)]


def rsqrt_vectors(unit_args: dict, q: np.ndarray) -> np.ndarray:
    """iter_rsqrt's result bits for each q, with the unit's settings."""
    fmt = unit_args["fmt"]
    settings = {k: v for k, v in unit_args.items() if k not in ("fmt", "latencies")}
    r = iter_rsqrt(decode(torch.from_numpy(q), fmt), fmt=fmt, **settings)
    return encode(r, fmt).numpy()


def sqrt_divide_reference(q_bits: torch.Tensor, fmt: str) -> torch.Tensor:
    """The library's rnd(1 / rnd(sqrt(qn))) * 2**-j for each bit pattern, with
    iter_rsqrt's results for q <= 0, inf and NaN: the unit's definition."""
    ar = Arithmetic.resolve(torch.float64, fmt, None)
    q = decode(q_bits, fmt)
    ok = torch.isfinite(q) & (q > 0)
    safe = torch.where(ok, q, 1.0)
    j = exponent_split(safe)
    qn = ar.rnd(ar.scale(safe, -2 * j))
    r = ar.rnd(ar.scale(ar.rnd(1.0 / ar.sqrt(qn)), -j))
    special = torch.where(q == 0, float("inf"), torch.where(q == float("inf"), 0.0, float("nan")))
    return encode(torch.where(ok, r, special), fmt)


# The whole unit ----------------------------------------------------------------


def unit_rows(d: int, fmt: str, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` rows of length d in float64, cycling through ROW_KINDS:
    Gaussian rows, rows with a few outliers 1000x the rest, zero rows,
    constant rows, rows near the format's largest value (whose squares
    overflow) and smallest normal (whose squares underflow), rows with a NaN
    and rows with an inf."""
    f = FORMATS[fmt]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in range(count):
        kind = ROW_KINDS[n % len(ROW_KINDS)]
        x = torch.randn(d, generator=g, dtype=torch.float64)
        if kind == "outliers":
            x[torch.randint(0, d, (3,), generator=g)] *= 1000
        elif kind == "zero":
            x = torch.zeros(d, dtype=torch.float64)
        elif kind == "constant":
            x = torch.full((d,), float(x[0]), dtype=torch.float64)
        elif kind == "largest":
            x = x.clamp(-3, 3) * (f.max / 4)
        elif kind == "smallest":
            x = x * f.smallest_normal
        elif kind == "nan":
            x[int(torch.randint(0, d, (1,), generator=g))] = float("nan")
        elif kind == "inf":
            x[int(torch.randint(0, d, (1,), generator=g))] = float("inf")
        rows.append(x)
    return torch.stack(rows) if rows else torch.zeros(0, d, dtype=torch.float64)


def unit_params(cfg, d: int, seed: int = 0, *, gamma=None, beta=None):
    """LayerNorm's gamma and beta at d (given, or for a test: gamma near 1, a
    few negative, beta near 0; float64) and the bits the unit stores for
    them, sqrt(d) gamma and beta in the datapath format: (gamma, beta,
    (g bits, b bits))."""
    cfg = get_preset(cfg)
    g = torch.Generator().manual_seed(seed)
    if gamma is None:
        gamma = 1 + 0.5 * torch.randn(check_d(d), generator=g, dtype=torch.float64)
    if beta is None:
        beta = 0.25 * torch.randn(d, generator=g, dtype=torch.float64)
    scaled, shift = affine_constants(d, gamma, beta, arithmetic(cfg))
    return gamma, beta, (encode(scaled, cfg.fmt).numpy(), encode(shift, cfg.fmt).numpy())


def unit_vectors(
    cfg, rows: torch.Tensor, gamma=None, beta=None
) -> tuple[np.ndarray, np.ndarray, int]:
    """(input bits, expected bits, cycles) of rows (n, d) for the unit of
    ``cfg`` (with LayerNorm's ``gamma`` and ``beta`` when it is affine)."""
    cfg = get_preset(cfg)
    check_d(rows.shape[-1])
    x = round_to_format(rows.to(torch.float64), cfg.fmt)
    want = reference(x, cfg, gamma, beta)
    cycles = simulate(x[:1], cfg).cycles  # the schedule does not depend on the data
    return encode(x, cfg.fmt).numpy(), encode(want, cfg.fmt).numpy(), cycles
