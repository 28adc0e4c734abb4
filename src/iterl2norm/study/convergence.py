"""Convergence: the worst case over every input of the scalar iteration.

The estimate only ever sees qn in [1/2, 2) (docs/ALGORITHM.md, step 3), so
sweeping every value of the format there (every mantissa of both exponent
parities) covers every possible input. For each step the study records the
worst relative error of a_n ~ qn**-0.5 and the worst distance, in ulps, from
the correctly rounded qn**-0.5; "steps to converge" is the first step at
which every input is within 1 ulp of it.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from .. import rsqrt
from .._arith import Arithmetic
from ..formats import decode, get_format, pow2, round_to_format, sqrt_rn
from ..methods import METHODS
from ..rsqrt import INITS

RATES = (0.5, 0.25, 0.375, 0.75)


def every_q(fmt: str, stride: int = 1) -> torch.Tensor:
    """Every value of ``fmt`` in [1/2, 2), float64; FP32 keeps every ``stride``-th
    mantissa (stride 1: all 2**24 values)."""
    f = get_format(fmt)
    mant = torch.arange(0, 1 << f.mantissa_bits, stride, dtype=torch.int64)
    fields = torch.cat(
        [mant | ((f.bias - 1) << f.mantissa_bits), mant | (f.bias << f.mantissa_bits)]
    )
    return decode(fields, f)


def _ulp(c: torch.Tensor, fmt) -> torch.Tensor:
    """Spacing above c for positive normal values of fmt."""
    _, e = torch.frexp(c)
    return pow2(e.to(torch.int64) - 1 - get_format(fmt).mantissa_bits)


def correctly_rounded_rsqrt(q: torch.Tensor, fmt: str) -> torch.Tensor:
    """qn**-0.5 rounded once to ``fmt`` (nearest even), for positive values of ``fmt``.

    float64 gives 1/sqrt(q) within 1 float64 ulp; the rounding to fmt can
    only go wrong where that lands near a midpoint of fmt, and those few
    values are settled exactly with integer arithmetic.
    """
    approx = 1 / sqrt_rn(q)
    c = round_to_format(approx, fmt)
    ulp = _ulp(c, fmt)
    below = torch.where(c == pow2(torch.frexp(c)[1].to(torch.int64) - 1), ulp / 2, ulp)
    near = ((approx - (c + ulp / 2)).abs() < 2.0**-45 * approx) | (
        (approx - (c - below / 2)).abs() < 2.0**-45 * approx
    )
    for i in torch.nonzero(near).flatten().tolist():
        qi = Fraction(q[i].item())
        ci, ui, bi = Fraction(c[i].item()), Fraction(ulp[i].item()), Fraction(below[i].item())
        # c is right iff (c - b/2)**2 q <= 1 <= (c + u/2)**2 q, ties to even aside.
        if (ci + ui / 2) ** 2 * qi < 1:
            c[i] = float(ci + ui)
        elif (ci - bi / 2) ** 2 * qi > 1:
            c[i] = float(ci - bi)
    return c


def _arithmetic(fmt: str) -> Arithmetic:
    # FP32 runs natively: IEEE single arithmetic is FP32 emulation bit for bit
    # (tests/test_rsqrt.py) and far faster over 2**24 values.
    if fmt == "fp32":
        return Arithmetic.resolve(torch.float32)
    return Arithmetic.resolve(torch.float64, fmt)


class _Sweep:
    """Every q of a format (every ``stride``-th), its exact and correctly rounded
    q^-1/2, and the same q in the carrier of the format's arithmetic."""

    def __init__(self, fmt: str, stride: int):
        self.q64 = every_q(fmt, stride)
        self.exact = sqrt_rn(self.q64)
        self.target = correctly_rounded_rsqrt(self.q64, fmt)
        self.ulp = _ulp(self.target, fmt)
        self.ar = _arithmetic(fmt)
        self.qn = self.q64.to(self.ar.carrier)

    def worst(self, a: torch.Tensor) -> dict:
        """The worst case of estimates ``a`` of q^-1/2 over the sweep."""
        a64 = a.to(torch.float64)
        return {
            "worst_rel": (a64 * self.exact - 1).abs().max().item(),
            "worst_ulps": ((a64 - self.target).abs() / self.ulp).max().item(),
        }


def convergence_rows(
    fmt: str, max_steps: int, *, inits=INITS, rates=RATES, stride: int = 1
) -> list[dict]:
    """Worst-case error per step for every (init, rate) on every q of ``fmt``."""
    sweep = _Sweep(fmt, stride)
    qn, ar = sweep.qn, sweep.ar
    rows = []
    for init in inits:
        for rate in rates:
            a = rsqrt.initial_estimate(qn, ar, init)
            for n in range(max_steps + 1):
                if n:
                    a = rsqrt.euler_steps(qn, a, ar, [rate])
                rows.append(
                    {
                        "format": fmt,
                        "init": init,
                        "update_rate": rate,
                        "steps": n,
                        "inputs": sweep.q64.numel(),
                        "stride": stride,
                        **sweep.worst(a),
                    }
                )
    return rows


PEERS = {  # shown name: (estimate(qn, ar, steps), steps to sweep)
    METHODS["fisr"]: (lambda qn, ar, n: rsqrt.fisr(qn, ar, steps=n, magic=None), 3),
    METHODS["invsqrt2"]: (lambda qn, ar, n: rsqrt.invsqrt2(qn, ar, steps=n), 3),
    METHODS["sqrt23"]: (lambda qn, ar, n: rsqrt.sqrt23(qn, ar, steps=n), 3),
}


def method_rows(
    fmt: str, max_steps: int, *, schedules=(), peers=tuple(PEERS), stride: int = 1
) -> list[dict]:
    """Worst case per step of each named schedule and each peer, with the
    multiplies each spends per vector (iterl2norm.cost)."""
    from ..cost import estimate_cost
    from ..schedules import estimate, get_schedule

    sweep = _Sweep(fmt, stride)
    qn, ar = sweep.qn, sweep.ar
    named = {name: get_schedule(name) for name in schedules}
    runs = [
        (
            name,
            lambda n, s=named[name]: estimate(qn, ar, schedule=s, steps=n),
            max_steps,
            lambda n, name=name: estimate_cost("iterl2norm", n, schedule=name),
        )
        for name in schedules
    ]
    runs += [
        (
            name,
            lambda n, f=PEERS[name][0]: f(qn, ar, n),
            PEERS[name][1],
            lambda n, name=name: estimate_cost(_PEER_COST[name], n),
        )
        for name in peers
    ]
    rows = []
    for name, run, last, cost in runs:
        for n in range(last + 1):
            rows.append(
                {
                    "format": fmt,
                    "method": name,
                    "steps": n,
                    "inputs": sweep.q64.numel(),
                    "stride": stride,
                    "multiplies": cost(n).multiplies,
                    **sweep.worst(run(n)),
                }
            )
    return rows


_PEER_COST = {METHODS[name]: name for name in ("fisr", "invsqrt2", "sqrt23")}


def full_precision_steps(rows: list[dict]) -> dict[tuple[str, str], int | None]:
    """First step at which every input is within 1 ulp of the correctly rounded
    result, per (format, method) of :func:`method_rows`; None if none is."""
    result: dict[tuple[str, str], int | None] = {}
    for row in rows:
        key = (row["format"], row["method"])
        result.setdefault(key, None)
        if result[key] is None and row["worst_ulps"] <= 1:
            result[key] = row["steps"]
    return result


def steps_to_converge(rows: list[dict]) -> dict[tuple[str, str, float], int | None]:
    """First step with every input within 1 ulp of the correctly rounded result,
    per (format, init, rate); None if no step up to the last one gets there."""
    result: dict[tuple[str, str, float], int | None] = {}
    for row in rows:
        key = (row["format"], row["init"], row["update_rate"])
        result.setdefault(key, None)
        if result[key] is None and row["worst_ulps"] <= 1:
            result[key] = row["steps"]
    return result
