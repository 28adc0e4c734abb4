"""Operation counts: iterl2norm.cost against the operations the code performs."""

from __future__ import annotations

import pytest
import torch

from iterl2norm import rsqrt
from iterl2norm._arith import Arithmetic
from iterl2norm._pipeline import front_end, vector_iterates
from iterl2norm.cost import Cost, estimate_cost

ROUNDED = [0]  # elements rounded so far


class CountingArithmetic(Arithmetic):
    """Emulated arithmetic that counts every rounded result."""

    def rnd(self, x):
        ROUNDED[0] += x.numel()
        return super().rnd(x)

    def rnd_acc(self, x):
        ROUNDED[0] += x.numel()
        return super().rnd_acc(x)


def counting(fmt="bf16") -> Arithmetic:
    ar = Arithmetic.resolve(torch.float64, fmt)
    return CountingArithmetic(ar.fmt, ar.acc, ar.carrier, ar.emulated)


def rounded_ops(fn) -> int:
    ROUNDED[0] = 0
    fn()
    return ROUNDED[0]


def fp_ops(cost: Cost) -> int:
    """Every counted operation that rounds: multiplies, adds, power-of-two scalings."""
    return cost.multiplies + cost.adds + cost.pow2_scalings


QN = torch.tensor([[1.37]], dtype=torch.float64)

SCALAR = [
    (
        "iterl2norm",
        {"init": "exponent"},
        lambda qn, ar, n: rsqrt.iteration(qn, ar, rates=[0.5] * n, init="exponent"),
    ),
    (
        "iterl2norm",
        {"init": "magic", "update_rate": 0.3},
        lambda qn, ar, n: rsqrt.iteration(qn, ar, rates=[0.3] * n, init="magic"),
    ),
    (
        "iterl2norm",
        {"init": "exponent+mantissa"},
        lambda qn, ar, n: rsqrt.iteration(qn, ar, rates=[0.5] * n, init="exponent+mantissa"),
    ),
    ("fisr", {}, lambda qn, ar, n: rsqrt.fisr(qn, ar, steps=n, magic=None)),
    ("invsqrt2", {}, lambda qn, ar, n: rsqrt.invsqrt2(qn, ar, steps=n)),
    ("sqrt23", {}, lambda qn, ar, n: rsqrt.sqrt23(qn, ar, steps=n)),
]


@pytest.mark.parametrize(
    ("method", "kwargs", "fn"), SCALAR, ids=[f"{m}-{k.get('init', '')}" for m, k, _ in SCALAR]
)
@pytest.mark.parametrize("steps", [0, 1, 2, 5])
def test_scalar_costs_match_the_rounded_operations(method, kwargs, fn, steps):
    ar = counting()
    cost = estimate_cost(method, steps, **kwargs)
    assert rounded_ops(lambda: fn(QN, ar, steps)) == fp_ops(cost)


def test_update_rates_that_are_powers_of_two_cost_no_multiply():
    assert estimate_cost("iterl2norm", 5).multiplies == 15
    assert estimate_cost("iterl2norm", 5, update_rate=0.3).multiplies == 20
    assert estimate_cost("iterl2norm", 2, update_rate=(0.5, 0.75)).multiplies == 7
    assert estimate_cost("fisr", 1) == Cost(multiplies=3, adds=1, pow2_scalings=1, integer_ops=2)


@pytest.mark.parametrize("d", [8, 64])
def test_vector_mode_cost_matches_the_rounded_operations(d):
    ar = counting()
    x = torch.randn(1, d, dtype=torch.float64)
    fe_ops = rounded_ops(lambda: front_end(x, ar))
    steps = 3
    total = rounded_ops(lambda: list(vector_iterates(x, ar, init="exponent", rates=[0.5] * steps)))
    z0 = d  # z_0 = vs * a_0: the vector mode's counterpart of the final scaling
    per_step_conversion = 1  # |z|^2 leaves the accumulator for the datapath
    cost = estimate_cost("iterl2norm", steps, mode="vector", d=d)
    assert total - fe_ops - z0 == fp_ops(cost) + steps * per_step_conversion


def test_costs_need_d_where_they_depend_on_it():
    with pytest.raises(ValueError, match="pass d"):
        estimate_cost("iterl2norm", 2, mode="vector")
    with pytest.raises(ValueError, match="pass d"):
        estimate_cost("exact", 0)
    assert estimate_cost("exact", 0, d=16) == Cost(sqrts=1, divides=16)
    with pytest.raises(ValueError, match="'newton'"):
        estimate_cost("newton", 1)
