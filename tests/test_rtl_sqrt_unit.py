"""The exact method's scalar unit iterl2norm_sqrt: its root is the model's
rnd(sqrt(qn)) (and MPFR's), its j the model's exponent split, and it takes
exactly exp_latency + sqrt_latency cycles. Every 16-bit q, and 200,000 fp32
q, through the compiled simulation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("amaranth", reason="the RTL needs amaranth: pip install '.[rtl]'")

from rtl_support import mpfr_context, require_compiled_simulation

from iterl2norm import rsqrt
from iterl2norm._arith import Arithmetic
from iterl2norm.formats import FORMATS, decode, encode
from iterl2norm.hw.rtl.sqrt_unit import SqrtUnit


def model(q_bits: np.ndarray, fmt: str, q_fmt: str):
    """(root bits, j) as hw.reference computes them, for positive finite q."""
    ar = Arithmetic.resolve(torch.float32, fmt, q_fmt)
    q = decode(torch.from_numpy(q_bits), q_fmt).to(torch.float32)
    j = rsqrt.exponent_split(q)
    qn = ar.rnd(ar.scale(q, -2 * j))
    return encode(ar.sqrt(qn).double(), fmt).numpy(), j.numpy(), qn.double()


def q_patterns(q_fmt: str) -> np.ndarray:
    """Every positive finite pattern of a 16-bit format; 200,000 random fp32 ones."""
    f = FORMATS[q_fmt]
    top = ((1 << f.exponent_bits) - 1) << f.mantissa_bits  # +inf
    if f.bits == 16:
        return np.arange(1, top, dtype=np.int64)
    rng = np.random.Generator(np.random.PCG64(17))
    q = rng.integers(1, top, 200_000, dtype=np.int64)
    q[:1000] = np.arange(1, 1001)  # subnormal q
    return q


@pytest.mark.parametrize(
    ("fmt", "q_fmt"), [("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "bf16"), ("fp16", "fp16")]
)
def test_the_root_and_split_are_the_models(tmp_path, fmt, q_fmt):
    require_compiled_simulation()
    import gmpy2

    from iterl2norm.hw.flows.cxxrtl import compile_stream_unit, evaluate_stream

    dut = SqrtUnit(fmt, q_fmt, exp_latency=1, sqrt_latency=12)
    q = q_patterns(q_fmt)
    binary = compile_stream_unit(dut, tmp_path, top="iterl2norm_sqrt")
    got, _ = evaluate_stream(binary, q)  # with input gaps and output stalls
    width = FORMATS[fmt].bits
    want_root, want_j, qn = model(q, fmt, q_fmt)
    root, j = got & ((1 << width) - 1), got >> width
    bits = dut.q_fmt.exp_shape.width  # j: a signed field
    j = np.where(j >= 1 << (bits - 1), j - (1 << bits), j)
    bad = np.nonzero((root != want_root) | (j != want_j))[0][:5]
    assert not len(bad), [(hex(q[i]), hex(root[i]), hex(want_root[i]), j[i]) for i in bad]
    _, cycles = evaluate_stream(binary, q[::100], gaps=0, stalls=0)
    assert set(cycles.tolist()) == {13}
    # and the model's root is MPFR's, rounded once (qn is exact in MPFR)
    values = [gmpy2.mpfr(v) for v in qn[::97].tolist()]
    with mpfr_context(fmt):
        theirs = [float(gmpy2.sqrt(v)) for v in values]
    assert decode(torch.from_numpy(want_root[::97]), fmt).tolist() == theirs


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sqrt_latency": -1}, "sqrt_latency must be an integer >= 0, got -1"),
        ({"exp_latency": 0, "sqrt_latency": 0}, "at least 1 cycle"),
        ({"q_fmt": "fp16"}, "q_fmt='fp16' does not hold fmt='bf16'"),
    ],
)
def test_bad_parameters_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SqrtUnit("bf16", **{"q_fmt": "fp32", **kwargs})
