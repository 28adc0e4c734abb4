"""Convergence of the iteration, and the peers against their published errors.

The sweeps are exhaustive: every FP32 mantissa in both exponent parities
(q in [1, 4), 2**24 values), every positive FP16 and BF16 value.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iterl2norm import iter_rsqrt
from iterl2norm._arith import Arithmetic
from iterl2norm.formats import FORMATS, decode
from iterl2norm.rsqrt import euler_steps, fisr, initial_estimate, invsqrt2, sqrt23
from iterl2norm.study.convergence import convergence_rows
from tolerances import WORST_SCALE_ERROR_5, tol


def newton_error_bounds(n_max: int) -> list[float]:
    """|e_n| bounds for Newton from the exponent start, in exact arithmetic.

    u_0 = a_0**2 q lies in [1/2, 2), so e_0 = sqrt(u_0) - 1 lies in
    [sqrt(1/2) - 1, sqrt(2) - 1). The error map e -> -e**2 (3 + e) / 2 is
    monotone on either side of 0, so the image of an interval is bounded
    by the images of its ends; all later e_n are <= 0.
    """

    def g(e):
        return -e * e * (3 + e) / 2

    lo, hi = math.sqrt(0.5) - 1, math.sqrt(2) - 1
    bounds = [max(-lo, hi)]
    for _ in range(n_max):
        lo, hi = min(g(lo), g(hi)), 0.0
        bounds.append(-lo)
    return bounds


# Rounding slack, in units u = 2**-(m+1) of the format. Per step the computed
# u = a*a*q carries <= 2u (two roundings), which lambda = 1/2 halves into a,
# and the final add rounds once more (<= 1u): 2u per step. An error from
# earlier steps propagates with |g'(e)| = |3e + 1.5e**2| <= 1.12 for the
# |e| <= 0.29 seen after step 1, then falls fast (0.37, 0.06, ...), so the
# total stays below 2u * (1 + 1.12 + 0.37 + 0.06 + ...) < 6u.
SLACK_UNITS = 6


def _u(fmt: str) -> float:
    return 2.0 ** -(FORMATS[fmt].mantissa_bits + 1)


@pytest.fixture(scope="module")
def fp32_grid() -> torch.Tensor:
    """Every FP32 value in [1, 4): all mantissas, exponent 0 and 1."""
    mant = torch.arange(1 << 23, dtype=torch.int32)
    return torch.cat(
        [(mant | (127 << 23)).view(torch.float32), (mant | (128 << 23)).view(torch.float32)]
    )


def _worst_errors(q: torch.Tensor, ar: Arithmetic, steps: int, init: str = "exponent"):
    """max |a_n sqrt(q) - 1| for n = 0..steps, q already in [1/2, 4)."""
    # The library splits q = qn * 4**j with qn in [1/2, 2]: do the same here.
    j = (q >= 2).to(torch.int64)
    qn = ar.rnd(ar.scale(q.to(ar.carrier), -2 * j))
    exact = torch.sqrt(qn.to(torch.float64))
    a = initial_estimate(qn, ar, init)
    errors = []
    for n in range(steps + 1):
        if n:
            a = euler_steps(qn, a, ar, [0.5])
        errors.append((a.to(torch.float64) * exact - 1).abs().max().item())
    return errors


def test_fp32_exhaustive_convergence_within_the_derived_bound(fp32_grid):
    ar = Arithmetic.resolve(torch.float32)  # native fp32: IEEE single per operation
    measured = _worst_errors(fp32_grid, ar, 6)
    bounds = newton_error_bounds(6)
    for n, (m, b) in enumerate(zip(measured, bounds, strict=True)):
        assert m <= b + SLACK_UNITS * _u("fp32"), f"step {n}: {m:.3e} > bound {b:.3e}"
    # The bound is attained (it is the worst case, not a loose envelope) ...
    assert measured[1] > 0.999 * bounds[1] and measured[3] > 0.999 * bounds[3]
    # ... and five steps land within 10 ulps of 1 (the exact-arithmetic error
    # 4.8e-7 is about 4 ulps, plus rounding).
    assert measured[5] < 10 * 2.0**-23 < measured[4]


def test_emulated_fp32_equals_native_fp32(fp32_grid):
    q = fp32_grid[:: 1 << 6]  # 262144 values over both binades
    native = _worst_errors(q, Arithmetic.resolve(torch.float32), 5)
    emulated = _worst_errors(q, Arithmetic.resolve(torch.float32, "fp32"), 5)
    assert native == emulated
    assert torch.equal(iter_rsqrt(q, fmt="fp32"), iter_rsqrt(q))


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_16bit_exhaustive_convergence_within_the_derived_bound(fmt):
    f = FORMATS[fmt]
    values = decode(torch.arange(1, 1 << 15), f)  # every positive encoding
    q = values[torch.isfinite(values)]
    a = iter_rsqrt(q, steps=5, fmt=fmt)
    err = (a * torch.sqrt(q) - 1).abs().max().item()
    # The output a = a' * 2**-j is rounded once more: + 1u.
    assert err <= newton_error_bounds(5)[5] + (SLACK_UNITS + 1) * _u(fmt)
    # On [1/2, 4) the step-by-step bounds hold too.
    grid = q[(q >= 0.5) & (q < 4)]
    measured = _worst_errors(grid, Arithmetic.resolve(torch.float64, fmt), 5)
    for n, (m, b) in enumerate(zip(measured, newton_error_bounds(5), strict=True)):
        assert m <= b + SLACK_UNITS * _u(fmt), f"{fmt} step {n}: {m:.3e} > {b:.3e}"


# Published worst-case relative errors in FP32, at their printed precision.
PUBLISHED = [
    # Lomont 2003: classic FISR with one Newton step.
    ("fisr", 1, lambda q, ar: fisr(q, ar, steps=1, magic=None), "1.75e-03"),
    # Walczyk, Moroz, Cieslinski 2021, InvSqrt2.
    ("invsqrt2", 1, lambda q, ar: invsqrt2(q, ar, steps=1), "8.8e-04"),
    ("invsqrt2", 2, lambda q, ar: invsqrt2(q, ar, steps=2), "7.4e-07"),
    # Kokosinski, Moroz et al. 2024, SQRT_23-bits.
    ("sqrt23", 1, lambda q, ar: sqrt23(q, ar, steps=1), "2.0e-05"),
    ("sqrt23", 2, lambda q, ar: sqrt23(q, ar, steps=2), "1.0e-07"),
]


@pytest.mark.parametrize(
    ("name", "steps", "fn", "published"), PUBLISHED, ids=[f"{p[0]}-{p[1]}" for p in PUBLISHED]
)
def test_peers_reproduce_their_published_errors(fp32_grid, name, steps, fn, published):
    ar = Arithmetic.resolve(torch.float32)
    r = fn(fp32_grid, ar)
    worst = (r.to(torch.float64) * torch.sqrt(fp32_grid.to(torch.float64)) - 1).abs().max().item()
    digits = len(published.split("e")[0]) - 2
    assert f"{worst:.{digits}e}" == published


def test_iter_rsqrt_values_and_special_cases():
    q = torch.tensor([4.0, 0.25, 0.0, float("inf"), -1.0, float("nan"), 1e-45, 3e38])
    r = iter_rsqrt(q, steps=6)
    assert r.dtype == torch.float32
    assert r[:2].tolist() == [0.5, 2.0]
    assert r[2] == float("inf") and r[3] == 0 and math.isnan(r[4]) and math.isnan(r[5])
    ref = 1 / torch.sqrt(q[6:].double())
    torch.testing.assert_close(r[6:].double(), ref, **tol("iter_rsqrt_converged", "fp32"))


def test_iter_rsqrt_accepts_numpy_and_emulates():
    q = np.array([2.0, 3.0], dtype=np.float16)
    r = iter_rsqrt(q, steps=5, fmt="bf16")
    assert isinstance(r, np.ndarray) and r.dtype == np.float32  # fp16 cannot hold bf16
    np.testing.assert_allclose(r, 1 / np.sqrt([2.0, 3.0]), **tol("iter_rsqrt_converged", "bf16"))


def test_lambda_half_is_newton():
    q = torch.rand(1000, dtype=torch.float64) * 1.5 + 0.5
    ar = Arithmetic.resolve(torch.float64)
    a = torch.full_like(q, 0.9)
    euler = euler_steps(q, a, ar, [0.5])
    newton = a * (1.5 - 0.5 * q * a * a)
    torch.testing.assert_close(euler, newton, **tol("euler_vs_newton_form", "fp64"))


def test_derivative_of_the_iterate_lags_one_step():
    """Autograd differentiates the computed iteration. Its derivative d(a_N)/dq
    converges one step behind a_N: the worst relative error over q at N = 5 is
    5.05e-5 (tolerances.py builds the norm layers' backward tolerance on it),
    at N = 6 below 1e-10."""
    q = torch.linspace(1, 4, 2_000_001, dtype=torch.float64)[:-1].requires_grad_(True)
    exact = -0.5 * q.detach() ** -1.5
    worst = []
    for steps in (5, 6):
        (grad,) = torch.autograd.grad(iter_rsqrt(q, steps=steps).sum(), q)
        worst.append(((grad - exact) / exact).abs().max().item())
    assert 4.9e-5 < worst[0] < 5.1e-5
    assert worst[1] < 1e-10


@pytest.mark.parametrize("fmt", list(WORST_SCALE_ERROR_5))
def test_worst_scale_error_after_five_steps(fmt):
    """The tolerance table's WORST_SCALE_ERROR_5 is the exhaustive worst case."""
    rows = convergence_rows(fmt, 5, inits=("exponent",), rates=(0.5,))
    measured = rows[-1]["worst_rel"]
    assert rows[-1]["steps"] == 5 and rows[-1]["stride"] == 1
    assert measured <= WORST_SCALE_ERROR_5[fmt] < 1.01 * measured
