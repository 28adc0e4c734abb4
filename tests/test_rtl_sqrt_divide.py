"""The sqrt + divide comparison unit: every 16-bit q and 10^5 fp32 q through
the compiled simulation against the library's rnd(1 / rnd(sqrt(qn))) * 2**-j,
that reference against MPFR, and its testbench in Icarus Verilog."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

pytest.importorskip("amaranth", reason="the RTL needs amaranth: pip install '.[rtl]'")
gmpy2 = pytest.importorskip("gmpy2", reason="the MPFR check needs gmpy2: pip install '.[rtl]'")

from rtl_support import mpfr_context, needs_icarus, require_compiled_simulation  # noqa: E402

from iterl2norm.cli import main  # noqa: E402
from iterl2norm.formats import FORMATS, decode  # noqa: E402
from iterl2norm.hw.flows.vectors import rsqrt_inputs, sqrt_divide_reference  # noqa: E402
from iterl2norm.hw.rtl import SUPPORTED  # noqa: E402
from iterl2norm.hw.rtl.sqrt_divide import SqrtDivide  # noqa: E402


@pytest.mark.parametrize("fmt", SUPPORTED)
def test_every_q_through_the_compiled_simulation(tmp_path, fmt):
    require_compiled_simulation()
    from iterl2norm.hw.flows.cxxrtl import compile_stream_unit, evaluate_stream

    dut = SqrtDivide(fmt)
    binary = compile_stream_unit(dut, tmp_path, top="iterl2norm_sqrt_divide")
    q = rsqrt_inputs(fmt, 100_000 if fmt == "fp32" else 1 << 16)
    got, _ = evaluate_stream(binary, q)  # with input gaps and output stalls
    want = sqrt_divide_reference(torch.from_numpy(q), fmt).numpy()
    # bit for bit, NaNs included: the unit gives the canonical quiet NaN
    bad = np.nonzero(got != want)[0]
    assert not len(bad), [f"q={q[i]:#x}: {got[i]:#x}, want {want[i]:#x}" for i in bad[:5]]
    assert dut.cycles == 2 * (FORMATS[fmt].mantissa_bits + 1) + 6  # 2p + 6
    _, cycles = evaluate_stream(binary, q[::100], gaps=0, stalls=0)
    assert set(cycles.tolist()) == {dut.cycles}


@pytest.mark.parametrize("fmt", SUPPORTED)
def test_the_reference_is_mpfr(fmt):
    # Both roundings against MPFR at the format's precision: sqrt, then 1/x.
    q = rsqrt_inputs(fmt, 3000, seed=3)
    v = decode(torch.from_numpy(q), fmt)
    q, v = q[((v > 0) & torch.isfinite(v)).numpy()], v[(v > 0) & torch.isfinite(v)]
    ours = decode(sqrt_divide_reference(torch.from_numpy(q), fmt), fmt).tolist()
    ctx = mpfr_context(fmt)
    with ctx:
        theirs = [float(1 / gmpy2.sqrt(gmpy2.mpfr(x))) for x in v.tolist()]
    # 1/sqrt(q) = (1/sqrt(qn)) 2**-j exactly, and scaling by 2**-j is exact here,
    # so MPFR's two roundings of q itself are the unit's definition.
    bad = [i for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert not bad, [(hex(q[i]), ours[i], theirs[i]) for i in bad[:5]]


@needs_icarus
def test_the_verilog_passes_its_testbench(tmp_path):
    out = tmp_path / "sd"
    argv = ["rtl", "sqrt-divide", "--fmt", "bf16", "--out", str(out), "--vectors", "800"]
    assert main([*argv, "--no-synthesis"]) == 0
    subprocess.run(
        ["iverilog", "-g2012", "-o", "sim", "iterl2norm_sqrt_divide.v", "tb.v"],
        cwd=out,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (out / "cycles.txt").read_text() == "22\n" * 800
    for plusargs in ([], ["+gapless"]):  # stalled (bits), gapless (bits and cycles)
        done = subprocess.run(
            ["vvp", "sim", *plusargs], cwd=out, capture_output=True, text=True, timeout=600
        )
        assert done.stdout.strip().splitlines() == ["800 passed, 0 failed"], done.stdout[-500:]
