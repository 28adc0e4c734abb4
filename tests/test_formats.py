"""Formats as data: derived constants, bit fields, and exhaustive rounding checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from iterl2norm.formats import (
    FORMATS,
    decode,
    encode,
    fisr_magic,
    get_format,
    pow2,
    round_scalar,
    round_to_format,
    sqrt_rn,
)

# (name, max, smallest normal, smallest subnormal) as exact hex literals.
CONSTANTS = [
    ("fp64", "0x1.fffffffffffffp1023", "0x1p-1022", "0x1p-1074"),
    ("fp32", "0x1.fffffep127", "0x1p-126", "0x1p-149"),
    ("fp16", "0x1.ffcp15", "0x1p-14", "0x1p-24"),
    ("bf16", "0x1.fep127", "0x1p-126", "0x1p-133"),
    ("fp8_e4m3", "0x1.cp8", "0x1p-6", "0x1p-9"),
    ("fp8_e5m2", "0x1.cp15", "0x1p-14", "0x1p-16"),
]
NARROW = ["fp16", "bf16", "fp8_e4m3", "fp8_e5m2"]


@pytest.mark.parametrize(("name", "largest", "normal", "subnormal"), CONSTANTS)
def test_derived_constants_match_hex_literals(name, largest, normal, subnormal):
    f = FORMATS[name]
    assert f.max == float.fromhex(largest)
    assert f.smallest_normal == float.fromhex(normal)
    assert f.smallest_subnormal == float.fromhex(subnormal)
    assert f.eps == 2.0**-f.mantissa_bits
    assert f.bits in (8, 16, 32, 64)


@pytest.mark.parametrize("name", list(FORMATS))
def test_constants_agree_with_torch_finfo(name):
    f = FORMATS[name]
    info = torch.finfo(f.torch_dtype)
    assert (f.max, f.smallest_normal, f.eps, f.bits) == (info.max, info.tiny, info.eps, info.bits)


@pytest.mark.parametrize("name", ["fp64", "fp32", "fp16"])
def test_smallest_subnormal_agrees_with_numpy(name):
    assert FORMATS[name].smallest_subnormal == float(
        np.finfo(getattr(np, FORMATS[name].torch_dtype_name)).smallest_subnormal
    )


def _all_encodings(fmt):
    """Every bit pattern of an 8- or 16-bit format, and its torch value as float64."""
    n = 1 << fmt.bits
    ints = torch.arange(n, dtype=torch.int64)
    carrier = torch.int16 if fmt.bits == 16 else torch.uint8
    raw = (ints - (1 << 16) * (ints >= 1 << 15)) if fmt.bits == 16 else ints
    values = raw.to(carrier).view(fmt.torch_dtype).to(torch.float64)
    return ints, values


@pytest.mark.parametrize("name", NARROW)
def test_decode_and_encode_agree_with_torch_on_every_encoding(name):
    fmt = FORMATS[name]
    bits, values = _all_encodings(fmt)
    decoded = decode(bits, fmt)
    nan = torch.isnan(values)
    assert torch.equal(torch.isnan(decoded), nan)
    assert torch.equal(decoded[~nan], values[~nan])
    assert torch.equal(torch.signbit(decoded[~nan]), torch.signbit(values[~nan]))
    assert torch.equal(encode(values[~nan], fmt), bits[~nan])


@pytest.mark.parametrize("name", NARROW)
def test_every_encoding_is_a_fixed_point_of_rounding(name):
    _, values = _all_encodings(FORMATS[name])
    finite = values[torch.isfinite(values)]
    rounded = round_to_format(finite, name)
    assert torch.equal(rounded, finite)
    assert torch.equal(torch.signbit(rounded), torch.signbit(finite))


def _probe_points(fmt) -> torch.Tensor:
    """float32 values around every encoding: each value, each midpoint between
    neighbours, one float32 ulp either side of each midpoint, and the region
    past the largest value, with both signs."""
    _, values = _all_encodings(fmt)
    pos = torch.unique(values[torch.isfinite(values) & (values >= 0)])  # sorted
    upper = torch.tensor([fmt.max + (fmt.max - pos[-2].item())], dtype=torch.float64)
    grid = torch.cat([pos, upper])  # one virtual step above max, for the overflow midpoint
    mid = ((grid[:-1] + grid[1:]) / 2).to(torch.float32)
    assert torch.equal(mid.to(torch.float64), (grid[:-1] + grid[1:]) / 2), "midpoints exact in fp32"
    inf32 = torch.tensor(float("inf"), dtype=torch.float32)
    points = torch.cat(
        [
            pos.to(torch.float32),
            mid,
            torch.nextafter(mid, inf32),
            torch.nextafter(mid, -inf32),
            torch.tensor([fmt.max * 1.5, fmt.max * 4, 3e38, float("inf"), float("nan")]),
        ]
    )
    return torch.cat([points, -points])


@pytest.mark.parametrize("name", NARROW)
def test_rounding_matches_torch_casts_at_every_midpoint(name):
    fmt = FORMATS[name]
    points = _probe_points(fmt)
    expected = points.to(fmt.torch_dtype)
    ours = round_to_format(points, fmt).to(fmt.torch_dtype)  # exact: already in the format
    nan = torch.isnan(expected.to(torch.float32))
    assert torch.equal(torch.isnan(ours.to(torch.float32)), nan)
    carrier = torch.int16 if fmt.bits == 16 else torch.uint8
    assert torch.equal(ours[~nan].view(carrier), expected[~nan].view(carrier))


def test_fp32_rounding_matches_torch_double_to_float():
    # torch's float64 -> float32 cast is a correctly rounded IEEE conversion.
    gen = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 1 << 62, (200_000,), generator=gen, dtype=torch.int64)
    x = bits.view(torch.float64)
    x = x[torch.isfinite(x)]
    # Midpoints between float32 neighbours, exactly, across the whole range.
    f = torch.randint(0, 0x7F7FFFFF, (100_000,), generator=gen, dtype=torch.int32).view(
        torch.float32
    )
    f = f.to(torch.float64)
    nxt = torch.nextafter(f.to(torch.float32), torch.tensor(float("inf"))).to(torch.float64)
    mids = (f + nxt) / 2
    points = torch.cat([x, mids, -mids, torch.nextafter(mids, torch.zeros_like(mids))])
    ours = round_to_format(points, "fp32").to(torch.float32)
    assert torch.equal(ours.view(torch.int32), points.to(torch.float32).view(torch.int32))


def test_rounds_once_where_torch_rounds_twice():
    # 1 + 2**-8 + 2**-40 is just above a bf16 midpoint: correct rounding goes
    # up; torch's float64 -> bfloat16 cast passes through float32, lands on
    # the midpoint and ties down to even.
    x = torch.tensor([1 + 2**-8 + 2**-40], dtype=torch.float64)
    assert round_to_format(x, "bf16").item() == 1 + 2**-7
    assert x.to(torch.bfloat16).item() == 1.0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("fp32", 0x5F3759DF),
        ("fp16", 0x59BB),
        ("bf16", 0x5F37),
    ],
)
def test_fisr_magic_constants(name, expected):
    assert fisr_magic(name) == expected


def test_round_scalar_from_fraction_rounds_once():
    from fractions import Fraction

    # Just above the bf16 midpoint between 1 and 1 + 2**-7 by 2**-70: a float64
    # round trip would land on the midpoint and tie down.
    assert round_scalar(Fraction(1) + Fraction(1, 2**8) + Fraction(1, 2**70), "bf16") == 1 + 2**-7
    assert round_scalar(Fraction(1, 3), "fp32") == float(np.float32(1 / 3))


def test_holds():
    f = FORMATS
    assert f["fp32"].holds(f["bf16"]) and f["fp32"].holds(f["fp16"])
    assert f["fp16"].holds(f["fp8_e4m3"]) and f["fp16"].holds(f["fp8_e5m2"])
    assert not f["fp16"].holds(f["bf16"]) and not f["bf16"].holds(f["fp16"])
    assert all(f["fp64"].holds(g) for g in f.values())


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("fp12", ValueError),
        (torch.int32, ValueError),
        (3, TypeError),
        (None, TypeError),
    ],
)
def test_get_format_rejects_unknown(spec, error):
    with pytest.raises(error, match=repr(spec) if error is ValueError else "format"):
        get_format(spec)


def test_get_format_accepts_names_and_dtypes():
    assert get_format(" BF16 ") is FORMATS["bf16"]
    assert get_format(torch.float8_e4m3fn) is FORMATS["fp8_e4m3"]
    assert math.isnan(round_scalar(float("nan"), "fp16"))


# The correctly rounded square root ----------------------------------------------


def _isqrt_int64(n: torch.Tensor) -> torch.Tensor:
    """floor(sqrt(n)) exactly, for int64 n < 2**53: a float64 estimate, then
    integer corrections (the estimate is within one of the answer)."""
    r = n.double().sqrt().floor().long()
    for _ in range(2):
        r = r - (r * r > n).long()
        r = r + ((r + 1) * (r + 1) <= n).long()
    return r


def _sqrt_float32_by_integers(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float32 square root of positive normal float32 x,
    from an integer square root with a sticky bit: no floating-point root decides."""
    m, e = torch.frexp(x.double())  # x = m 2**e, m in [1/2, 1)
    big = (m * 2**24).long()  # 24 significant bits: x = big 2**(e - 24)
    exp = e.long() - 24
    odd = exp % 2 != 0
    big, exp = torch.where(odd, big * 2, big), torch.where(odd, exp - 1, exp)
    n = big << 28  # in [2**51, 2**53): a root of 26 or 27 bits
    exp = exp - 28
    root = _isqrt_int64(n)
    sticky = root * root != n
    shift = torch.where(root >= 1 << 26, 3, 2)  # down to 24 significant bits
    kept, rest = root >> shift, root & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    up = (rest > half) | ((rest == half) & (sticky | (kept % 2 == 1)))
    value = (kept + up.long()).double() * pow2(shift + exp // 2)  # exact powers of two
    return value.float()


def _sqrt_float64_by_integers(v: float) -> float:
    """The correctly rounded float64 square root of a positive finite float, exactly."""
    m, e = math.frexp(v)
    big, exp = int(math.ldexp(m, 53)), e - 53  # v = big 2**exp
    if exp % 2:
        big, exp = big * 2, exp - 1
    n, exp = big << 110, exp - 110
    root = math.isqrt(n)
    sticky = root * root != n
    shift = root.bit_length() - 53
    kept, rest = root >> shift, root & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rest > half or (rest == half and (sticky or kept & 1)):
        kept += 1
    return math.ldexp(kept, shift + exp // 2)


def test_sqrt_rn_float32_is_correctly_rounded_on_every_value_in_one_binade_pair():
    # Every float32 in [1/2, 2): every significand of both exponent parities.
    x = torch.arange(0x3F000000, 0x40000000, dtype=torch.int32).view(torch.float32)
    assert torch.equal(sqrt_rn(x), _sqrt_float32_by_integers(x))


def test_sqrt_rn_float64_is_correctly_rounded():
    rng = np.random.Generator(np.random.PCG64(11))
    mant = rng.integers(1 << 52, 1 << 53, size=20000, dtype=np.int64)
    exps = rng.integers(-1074, 971, size=20000)
    values = [math.ldexp(float(m), int(e)) for m, e in zip(mant, exps, strict=True)]
    values += [5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 2.0, 0.5, 3.0]
    values = [v for v in values if 0 < v < math.inf]
    got = sqrt_rn(torch.tensor(values, dtype=torch.float64)).tolist()
    assert got == [_sqrt_float64_by_integers(v) for v in values]


def test_sqrt_rn_special_values_and_gradient():
    x = torch.tensor([0.0, -0.0, math.inf, -1.0, math.nan, 4.0], dtype=torch.float64)
    r = sqrt_rn(x)
    assert r[:3].tolist() == [0.0, 0.0, math.inf] and math.copysign(1, r[1].item()) == -1
    assert r[3:5].isnan().all() and r[5].item() == 2.0
    q = torch.tensor([4.0, 0.25], requires_grad=True)
    sqrt_rn(q).sum().backward()
    assert q.grad.tolist() == [0.25, 1.0]  # 1 / (2 sqrt(q)), exact here
    with pytest.raises(TypeError, match="float32 or float64"):
        sqrt_rn(torch.tensor([4.0], dtype=torch.float16))
