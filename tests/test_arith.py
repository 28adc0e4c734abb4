"""The emulated arithmetic: one rounding per operation, in a defined order."""

from __future__ import annotations

from fractions import Fraction

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
