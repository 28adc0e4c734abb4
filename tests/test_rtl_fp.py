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

import numpy as np
import pytest
import torch

amaranth = pytest.importorskip("amaranth", reason="the RTL needs amaranth: pip install '.[rtl]'")
gmpy2 = pytest.importorskip("gmpy2", reason="the MPFR check needs gmpy2: pip install '.[rtl]'")

from amaranth.hdl import Module  # noqa: E402
from amaranth.lib import wiring  # noqa: E402
from amaranth.lib.wiring import In, Out  # noqa: E402
from amaranth.sim import Simulator  # noqa: E402
from rtl_support import mpfr_context, require_compiled_simulation  # noqa: E402

from iterl2norm.formats import FORMATS, decode, encode  # noqa: E402
from iterl2norm.hw.flows.vectors import (  # noqa: E402
    close_exponent_pairs,
    library_result,
    mixed_pairs,
)
from iterl2norm.hw.rtl import SUPPORTED, FpAdd, FpConvert, FpDiv, FpMul  # noqa: E402
from iterl2norm.hw.rtl.fp import operand_formats  # noqa: E402

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


def mpfr_result(op: str, fmt: str, a: np.ndarray, b: np.ndarray, acc_fmt=None) -> list[float]:
    fa, fb, fr = operand_formats(op, fmt, acc_fmt)
    ctx = mpfr_context(fr)
    # The operands are exact at the result's precision (they are no wider).
    va = decode(torch.from_numpy(a), fa).tolist()
    vb = decode(torch.from_numpy(b), fb).tolist()
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
    require_compiled_simulation()
    from iterl2norm.hw.flows.cxxrtl import compile_operator

    root = tmp_path_factory.mktemp("cxxrtl")
    return {
        (op, fmt): compile_operator(OPS[op](fmt), root / f"{op}_{fmt}")
        for op in OPS
        for fmt in SUPPORTED
    }


@pytest.mark.parametrize("fmt", SUPPORTED)
@pytest.mark.parametrize("op", OPS)
def test_a_million_pairs_through_the_compiled_simulation(compiled, op, fmt):
    from iterl2norm.hw.flows.cxxrtl import evaluate

    rng = np.random.Generator(np.random.PCG64(10))
    a, b = mixed_pairs(fmt, 500_000, 500_000, rng)
    assert_bits_equal(op, fmt, a, b, evaluate(compiled[op, fmt], a, b))


# The mixed forms the unit uses: 16-bit operands into an fp32 accumulator.
MIXED = [("mul", "bf16"), ("mul", "fp16"), ("add", "bf16"), ("add", "fp16")]


@pytest.mark.parametrize(("op", "fmt"), MIXED)
def test_mixed_forms_every_class_and_a_million_pairs(compiled_mixed, op, fmt):
    from iterl2norm.hw.flows.cxxrtl import evaluate
    from iterl2norm.hw.rtl.fp import operand_formats

    fa, fb, fr = operand_formats(op, fmt, "fp32")
    a_special = np.array(special_values(fa), dtype=np.int64)
    b_special = np.array(special_values(fb), dtype=np.int64)
    a = np.repeat(a_special, len(b_special))
    b = np.tile(b_special, len(a_special))
    rng = np.random.Generator(np.random.PCG64(11))
    ra, rb = mixed_pairs(fa, 500_000, 500_000, rng, fb)
    a, b = np.concatenate([a, ra]), np.concatenate([b, rb])
    got = evaluate(compiled_mixed[op, fmt], a, b)
    want = library_result(op, fmt, a, b, "fp32")
    got_t = torch.from_numpy(got)
    nan = torch.isnan(want)
    assert torch.isnan(decode(got_t, fr))[nan].all(), "a NaN result must be NaN"
    bad = torch.nonzero(~nan & (got_t != encode(want, fr))).flatten()[:5].tolist()
    assert not bad, [f"{a[i]:#x} {op} {b[i]:#x}: {got[i]:#x}" for i in bad]


@pytest.fixture(scope="module")
def compiled_mixed(tmp_path_factory):
    require_compiled_simulation()
    from iterl2norm.hw.flows.cxxrtl import compile_operator
    from iterl2norm.hw.rtl.fp import operator

    root = tmp_path_factory.mktemp("mixed")
    return {
        (op, fmt): compile_operator(operator(op, fmt, 0, "fp32"), root / f"{op}_{fmt}")
        for op, fmt in MIXED
    }


class _Converter(wiring.Component):
    """FpConvert seen as an operator (a, b -> result) for the compiled simulation."""

    def __init__(self, src, dst):
        self.convert = FpConvert(src, dst)
        super().__init__(
            {"a": In(self.convert.src.width), "b": In(1), "result": Out(self.convert.fmt.width)}
        )

    def elaborate(self, platform):
        m = Module()
        m.submodules.convert = self.convert
        m.d.comb += [self.convert.a.eq(self.a), self.result.eq(self.convert.result)]
        return m


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("bf16", "fp32"),
        ("fp16", "fp32"),
        ("fp32", "bf16"),
        ("fp32", "fp16"),
        ("bf16", "fp16"),
        ("fp16", "bf16"),
    ],
)
def test_conversions_round_once(tmp_path, src, dst):
    require_compiled_simulation()
    from iterl2norm.formats import round_to_format
    from iterl2norm.hw.flows.cxxrtl import compile_operator, evaluate

    binary = compile_operator(_Converter(src, dst), tmp_path)
    if src == "fp32":  # every class, random patterns, values at and next to halfway
        rng = np.random.Generator(np.random.PCG64(12))
        keep = FORMATS[dst].mantissa_bits
        halfway = (rng.integers(0, 1 << 32, 200_000) >> (23 - keep)) << (23 - keep)
        halfway |= 1 << (22 - keep)
        a = (
            np.concatenate(
                [
                    np.array(special_values("fp32"), dtype=np.int64),
                    rng.integers(0, 1 << 32, 500_000),
                    halfway,
                    halfway + 1,
                    halfway - 1,
                ]
            )
            & 0xFFFFFFFF
        )
    else:
        a = np.arange(1 << 16, dtype=np.int64)  # every pattern
    got = torch.from_numpy(evaluate(binary, a, np.zeros_like(a)))
    want = round_to_format(decode(torch.from_numpy(a), src), dst)
    nan = torch.isnan(want)
    assert torch.isnan(decode(got, dst))[nan].all()
    bad = torch.nonzero(~nan & (got != encode(want, dst))).flatten()[:5].tolist()
    assert not bad, [f"{a[i]:#x}: {int(got[i]):#x}" for i in bad]


@pytest.mark.parametrize(("op", "fmt"), MIXED)
def test_the_mixed_reference_is_mpfr(op, fmt):
    fa, fb, _ = operand_formats(op, fmt, "fp32")
    rng = np.random.Generator(np.random.PCG64(13))
    a, b = mixed_pairs(fa, 1000, 3000, rng, fb)
    ours = library_result(op, fmt, a, b, "fp32").tolist()
    theirs = mpfr_result(op, fmt, a, b, "fp32")
    mismatched = [i for i, (x, y) in enumerate(zip(ours, theirs, strict=True)) if x != y and x == x]
    assert not mismatched, [(hex(a[i]), hex(b[i]), ours[i], theirs[i]) for i in mismatched[:5]]


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_a_sum_rounded_once_to_a_narrower_format(tmp_path, fmt):
    # x - mean in a 16-bit LayerNorm: a 16-bit x and an fp32 mean give a
    # 16-bit difference, rounded once, as the model's Arithmetic.sub_once.
    require_compiled_simulation()
    import gmpy2

    from iterl2norm._arith import Arithmetic
    from iterl2norm.formats import round_to_format
    from iterl2norm.hw.flows.cxxrtl import compile_operator, evaluate

    binary = compile_operator(FpAdd(fmt, inputs=(fmt, "fp32")), tmp_path)
    a_special = np.array(special_values(fmt), dtype=np.int64)
    b_special = np.array(special_values("fp32"), dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(14))
    ra, rb = mixed_pairs(fmt, 200_000, 200_000, rng, "fp32")
    a = np.concatenate([np.repeat(a_special, len(b_special)), ra])
    b = np.concatenate([np.tile(b_special, len(a_special)), rb])
    got = torch.from_numpy(evaluate(binary, a, b))
    va, vb = decode(torch.from_numpy(a), fmt), decode(torch.from_numpy(b), "fp32")
    model = Arithmetic.resolve(torch.float32, fmt, "fp32").sub_once(
        va.to(torch.float32), -vb.to(torch.float32)
    )
    want = round_to_format(va + vb, fmt)
    nan = torch.isnan(want)
    assert torch.isnan(decode(got, fmt))[nan].all() and torch.isnan(model)[nan].all()
    assert (encode(model.double(), fmt) == encode(want, fmt))[~nan].all()
    bad = torch.nonzero(~nan & (got != encode(want, fmt))).flatten()[:5].tolist()
    assert not bad, [f"{a[i]:#x} + {b[i]:#x}: {int(got[i]):#x}" for i in bad]
    # and the reference is MPFR's sum of the exact operands, rounded once
    finite = torch.nonzero(~nan & torch.isfinite(want)).flatten()[-3000:].tolist()
    # (the operands are made outside the narrow context, whose exponent range
    # would round an fp32 operand)
    pairs = [(gmpy2.mpfr(va[i].item()), gmpy2.mpfr(vb[i].item())) for i in finite]
    with mpfr_context(fmt):
        theirs = [float(x + y) for x, y in pairs]
    assert want[finite].tolist() == theirs


class _Shifted(wiring.Component):
    """FpMul (or FpDiv) with an exponent offset seen as an operator for the
    compiled simulation: b carries the second operand and, above it, the offset."""

    def __init__(self, fmt, inputs, bits, operator=FpMul):
        kwargs = {} if inputs is None else {"inputs": inputs}
        self.mul = operator(fmt, shift_bits=bits, **kwargs)
        wa, wb = (w.width for w in self.mul.inputs)
        self.wb = wb
        super().__init__({"a": In(wa), "b": In(wb + bits), "result": Out(self.mul.fmt.width)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.mul = mul = self.mul
        m.d.comb += [
            mul.a.eq(self.a),
            mul.b.eq(self.b[: self.wb]),
            mul.shift.eq(self.b[self.wb :]),
            self.result.eq(mul.result),
        ]
        return m


@pytest.mark.parametrize(
    ("fmt", "inputs"), [("fp32", ("bf16", "bf16")), ("fp32", None), ("bf16", None), ("fp16", None)]
)
def test_a_product_with_an_exponent_offset_rounds_once(tmp_path, fmt, inputs):
    # (y 2^-k)^2 and y r 2^-(k + j) of the three-pass unit: the offset moves
    # the product into and out of the subnormal range, rounded once there.
    require_compiled_simulation()
    from iterl2norm.formats import ldexp, round_to_format
    from iterl2norm.hw.flows.cxxrtl import compile_operator, evaluate

    bits = 10
    top = _Shifted(fmt, inputs, bits)
    fa, fb = (f.name for f in top.mul.inputs)
    binary = compile_operator(top, tmp_path)
    rng = np.random.Generator(np.random.PCG64(15))
    a_special = np.array(special_values(fa), dtype=np.int64)
    b_special = np.array(special_values(fb), dtype=np.int64)
    ra, rb = mixed_pairs(fa, 100_000, 100_000, rng, fb)
    a = np.concatenate([np.repeat(a_special, len(b_special)), ra])
    b = np.concatenate([np.tile(b_special, len(a_special)), rb])
    limit = 1 << (bits - 1)
    shift = rng.integers(-limit, limit, len(a))
    shift[: len(a) // 2] //= 8  # and many near zero, where most results are normal
    got = torch.from_numpy(evaluate(binary, a, b | ((shift & (2 * limit - 1)) << top.wb)))
    va, vb = decode(torch.from_numpy(a), fa), decode(torch.from_numpy(b), fb)
    want = round_to_format(ldexp(va * vb, torch.from_numpy(shift)), fmt)
    nan = torch.isnan(want)
    assert torch.isnan(decode(got, fmt))[nan].all()
    bad = torch.nonzero(~nan & (got != encode(want, fmt))).flatten()[:5].tolist()
    assert not bad, [f"{a[i]:#x} * {b[i]:#x} * 2**{shift[i]}: {int(got[i]):#x}" for i in bad]
    subnormal = (want != 0) & (want.abs() < 2.0 ** FORMATS[fmt].emin)
    assert subnormal.sum() > 1000  # the offset reached the subnormal range


@pytest.mark.parametrize("fmt", SUPPORTED)
def test_a_quotient_with_an_exponent_offset_rounds_once(tmp_path, fmt):
    # y 2^-(k + j) / sqrt(qn), the exact method's output: every class pair,
    # random pairs (half with close exponents), offsets into and out of the
    # subnormal range; float64 holds a * 2**shift, and its quotient rounded
    # to the format rounds once (53 >= 2 p + 1).
    require_compiled_simulation()
    import gmpy2

    from iterl2norm.formats import ldexp, round_to_format
    from iterl2norm.hw.flows.cxxrtl import compile_operator, evaluate

    bits = 10
    top = _Shifted(fmt, None, bits, FpDiv)
    binary = compile_operator(top, tmp_path)
    rng = np.random.Generator(np.random.PCG64(16))
    special = np.array(special_values(fmt), dtype=np.int64)
    ra, rb = mixed_pairs(fmt, 100_000, 100_000, rng, fmt)
    a = np.concatenate([np.repeat(special, len(special)), ra])
    b = np.concatenate([np.tile(special, len(special)), rb])
    limit = 1 << (bits - 1)
    shift = rng.integers(-limit, limit, len(a))
    shift[: len(a) // 2] //= 8
    got = torch.from_numpy(evaluate(binary, a, b | ((shift & (2 * limit - 1)) << top.wb)))
    va, vb = decode(torch.from_numpy(a), fmt), decode(torch.from_numpy(b), fmt)
    scaled = ldexp(va, torch.from_numpy(shift))
    want = round_to_format(scaled / vb, fmt)
    nan = torch.isnan(want)
    assert torch.isnan(decode(got, fmt))[nan].all()
    bad = torch.nonzero(~nan & (got != encode(want, fmt))).flatten()[:5].tolist()
    assert not bad, [f"{a[i]:#x} * 2**{shift[i]} / {b[i]:#x}: {int(got[i]):#x}" for i in bad]
    subnormal = (want != 0) & (want.abs() < 2.0 ** FORMATS[fmt].emin)
    assert subnormal.sum() > 1000 and torch.isinf(want).sum() > 1000
    # and the reference is MPFR's quotient of the exact operands, rounded once
    finite = torch.nonzero(~nan & torch.isfinite(want) & (vb != 0)).flatten()[-3000:].tolist()
    pairs = [(gmpy2.mpfr(scaled[i].item()), gmpy2.mpfr(vb[i].item())) for i in finite]
    with mpfr_context(fmt):
        theirs = [float(x / y) for x, y in pairs]
    assert want[finite].tolist() == theirs


def test_a_sum_needs_a_format_that_holds_the_others():
    with pytest.raises(ValueError, match="no format of fp16, bf16 and bf16 holds the other two"):
        FpAdd("fp16", inputs=("bf16", "bf16"))


def test_mixed_operands_must_fit_the_result():
    with pytest.raises(ValueError, match="operands of fp32 do not fit a bf16 result"):
        FpMul("bf16", inputs=("fp32", "bf16"))


@pytest.mark.parametrize("latency", [1, 3])
def test_the_stream_operator_under_backpressure(latency):
    from iterl2norm.hw.rtl.streams import StreamOperator

    dut = StreamOperator("add", "bf16", latency, acc_fmt="fp32")  # fp32 + bf16 -> fp32
    rng = np.random.Generator(np.random.PCG64(14))
    a, b = mixed_pairs("fp32", 100, 100, rng, "bf16")
    offer = rng.random(2000) < 0.7  # the producer's valid, cycle by cycle
    take = rng.random(2000) < 0.6  # the consumer's ready
    results = []

    async def bench(ctx):
        sent = 0
        for cycle in range(2000):
            ctx.set(dut.i.valid, int(offer[cycle] and sent < len(a)))
            if sent < len(a):
                ctx.set(dut.i.payload, {"a": int(a[sent]), "b": int(b[sent])})
            ctx.set(dut.o.ready, int(take[cycle]))
            handshake_in = ctx.get(dut.i.valid) and ctx.get(dut.i.ready)
            if ctx.get(dut.o.valid) and ctx.get(dut.o.ready):
                results.append(ctx.get(dut.o.payload))
            await ctx.tick()
            if handshake_in:
                sent += 1
        assert sent == len(a)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(results) == len(a)  # each once, in order
    want = library_result("add", "bf16", a, b, "fp32")
    got = torch.from_numpy(np.array(results, dtype=np.int64))
    nan = torch.isnan(want)
    assert (got[~nan] == encode(want, "fp32")[~nan]).all()


def test_the_stream_operator_takes_a_pair_every_cycle():
    from iterl2norm.hw.rtl.streams import StreamOperator

    dut = StreamOperator("mul", "fp16", 2)
    seen = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        for cycle in range(12):
            ctx.set(dut.i.payload, {"a": 0x3C00 + cycle, "b": 0x4000})  # (1 + k ulp) * 2
            assert ctx.get(dut.i.ready)
            if ctx.get(dut.o.valid):
                seen.append((cycle, ctx.get(dut.o.payload)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [(c, 0x4000 + c - 2) for c in range(2, 12)]
