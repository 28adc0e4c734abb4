"""The emulated arithmetic: one rounding per operation, in a defined order."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

import exact_reference as ref
from iterl2norm._arith import Arithmetic
from iterl2norm.formats import FORMATS, round_to_format


def test_sub_once_rounds_mixed_width_operands_once():
    ar = Arithmetic.resolve(torch.float32, "bf16")  # datapath bf16, accumulator fp32
    # a - b lies just above a bf16 midpoint; float64 would round onto the
    # midpoint first and then tie down to even.
    a = torch.tensor([1 + 2**-8], dtype=torch.float64)
    b = torch.tensor([-(2.0**-100)], dtype=torch.float64)
    assert round_to_format(a - b, "bf16").item() == 1.0  # the double rounding
    assert ar.sub_once(a, b).item() == 1 + 2**-7


def test_sub_once_equals_exact_rounding_on_random_operands():
    gen = torch.Generator().manual_seed(0)
    for fmt, acc in (("bf16", "fp32"), ("fp16", "fp32"), ("fp32", "fp64"), ("fp8_e4m3", "fp32")):
        ar = Arithmetic.resolve(torch.float32, fmt, acc)
        a = round_to_format(torch.randn(2000, generator=gen, dtype=torch.float64), fmt)
        b = round_to_format(
            torch.randn(2000, generator=gen, dtype=torch.float64)
            * torch.exp2(torch.randint(-40, 3, (2000,), generator=gen)).double()
            + a,
            acc,
        )  # close to a: heavy cancellation, long tails
        got = ar.sub_once(a, b).tolist()
        want = [
            float(ref.rne(Fraction(x) - Fraction(y), FORMATS[fmt]))
            for x, y in zip(a.tolist(), b.tolist(), strict=True)
        ]
        assert got == want, fmt


def test_sum_is_a_balanced_tree_in_the_accumulation_format():
    ar = Arithmetic.resolve(torch.float32, "bf16", "bf16")
    x = torch.tensor([[1.0, 2.0**-8, 2.0**-8]], dtype=torch.float64)
    # Tree, zero-padded to 4 leaves: (1 + 2^-8) + (2^-8 + 0) -> 1 + 2^-8 ties
    # to 1, then 1 + 2^-8 ties to 1 again. A (2^-8 + 2^-8) pairing would give
    # 1 + 2^-7: the order is part of the result.
    assert ar.sum_acc(x).item() == 1.0
    y = torch.tensor([[2.0**-8, 2.0**-8, 1.0]], dtype=torch.float64)
    assert ar.sum_acc(y).item() == 1 + 2**-7
    for row in (x, y):
        assert (
            ref.tree_sum([Fraction(v) for v in row[0].tolist()], FORMATS["bf16"])
            == ar.sum_acc(row).item()
        )


def test_scale_is_exact_across_the_fp32_range():
    ar = Arithmetic.resolve(torch.float32)
    tiny = torch.tensor([FORMATS["fp32"].smallest_subnormal * 3])
    up = ar.scale(tiny, torch.tensor([149]))
    assert up.item() == 3.0  # 2**149 alone is not an fp32 number
    assert ar.scale(up, torch.tensor([-149])).item() == tiny.item()


def test_fp64_targets_round_to_nearest_not_to_odd():
    from iterl2norm.formats import round_scalar

    ar = Arithmetic.resolve(torch.float64, "fp64")
    one, tiny = torch.tensor([1.0], dtype=torch.float64), torch.tensor([2.0**-60])
    assert ar.sub_once(one, tiny.double()).item() == 1.0
    assert round_scalar(Fraction(1, 5), "fp64") == 0.2


@pytest.mark.parametrize("fmt", ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])
def test_float32_carrier_equals_float64_carrier(fmt):
    """8- and 16-bit emulation runs on a float32 carrier; the float64 carrier
    (the general one) must give the same bits."""
    from iterl2norm import rsqrt
    from iterl2norm._pipeline import normalize_scalar, normalize_vector

    fast = Arithmetic.resolve(torch.float32, fmt)
    assert fast.carrier == torch.float32
    slow = Arithmetic(fast.fmt, fast.acc, torch.float64, True)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 300, generator=gen, dtype=torch.float64)
    x = x * torch.exp2(torch.randint(-20, 20, (64, 1), generator=gen)).double()
    for ar in (fast, slow):
        ar_x = ar.quantize(x)
        estimate = lambda qn, a: rsqrt.iteration(qn, a, rates=[0.5] * 3, init="magic")  # noqa: E731
        ar_out = (
            normalize_scalar(ar_x, ar, estimate, inv_d=Fraction(1, 300), eps=1e-5),
            normalize_vector(ar_x, ar, init="exponent", rates=[0.5] * 2),
        )
        if ar is fast:
            fast_out = [o.double() for o in ar_out]
        else:
            for f, s in zip(fast_out, ar_out, strict=True):  # rows overflowing fp16 are NaN
                assert torch.equal(f.isnan(), s.isnan()) and torch.equal(
                    f[~f.isnan()], s[~s.isnan()]
                )
