"""The stream protocol (:mod:`iterl2norm.hw.flows.protocol`): its three
generated drivers (Amaranth's simulator, CXXRTL, Icarus Verilog) give the
same outputs on the same cycles for one description of the transactions,
with random gaps and stalls; and what the units must do under it: make a
vector offered while busy wait, take a first beat offered on the cycle the
previous vector finishes, recover from a reset mid-vector, and give the
canonical quiet NaN."""

from __future__ import annotations

import re
import subprocess
from itertools import pairwise

import numpy as np
import pytest

pytest.importorskip("amaranth", reason="the RTL needs amaranth: pip install '.[rtl]'")

from rtl_support import compiled_unit, needs_icarus

from iterl2norm.hw import PRESETS
from iterl2norm.hw.flows.export import hex_lines, verilog
from iterl2norm.hw.flows.protocol import (
    Params,
    Ports,
    Transactions,
    Vector,
    expected_text,
    run_amaranth,
    run_cxxrtl,
    stimulus_text,
    verilog_testbench,
    xorshift32,
)
from iterl2norm.hw.flows.vectors import ROW_KINDS, unit_params, unit_rows, unit_vectors
from iterl2norm.hw.rtl.fp import FpFormat
from iterl2norm.hw.rtl.rsqrt_unit import RsqrtUnit
from iterl2norm.hw.rtl.unit import NormUnit

# A small affine LayerNorm (two-pass, bf16 into fp32): 4 lanes compile in
# seconds and give long enough vectors (16 beats at d = 64) to stall.
SMALL = PRESETS["fast-layernorm-bf16"].with_(lanes=4)
PORTS = Ports(4, 16, 16, 11, True, True)


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    return compiled_unit(SMALL, tmp_path_factory)


def rows_of(d: int, kinds, seed: int = 0):
    """(params, input bits, expected bits, cycles) of one row of each kind at d."""
    gamma, beta, stored = unit_params(SMALL, d, seed + d)
    rows = unit_rows(d, SMALL.fmt, len(ROW_KINDS), seed + d)[[ROW_KINDS.index(k) for k in kinds]]
    bits, want, cycles = unit_vectors(SMALL, rows, gamma, beta)
    return Params(*stored), bits, want, cycles


def check_results(results, transactions, wanted, cycles=None):
    """Each vector not reset has the expected bits (exactly: NaNs too) and,
    given ``cycles``, the model's latency; a reset one has no output."""
    for n, (vector, result) in enumerate(zip(transactions.vectors, results, strict=True)):
        if vector.reset_after:
            assert result.bits is None and result.first is not None, n
            continue
        assert (result.bits == wanted[n]).all(), (n, np.nonzero(result.bits != wanted[n])[0][:5])
        if cycles is not None:
            assert result.cycles == cycles[n], (n, result.cycles, cycles[n])


def mixed():
    """Params before each vector but the last (the constants stay); two d; a
    reset during the input beats and one during the stalled output pass; a
    vector offered only from the cycle the previous one finishes; NaN and inf
    rows."""
    p64, bits64, want64, c64 = rows_of(64, ["gaussian", "nan", "outliers"])
    p100, bits100, want100, c100 = rows_of(100, ["inf", "largest"])
    items = [
        p64,
        Vector(bits64[0]),
        p64,
        Vector(bits64[1], reset_after=9),  # during its 16 input beats
        p100,
        Vector(bits100[0], wait=True),
        p100,
        Vector(bits100[1], reset_after=c100 - 3),  # its outputs held back
        p64,
        Vector(bits64[1]),
        Vector(bits64[2], wait=True),
    ]
    wanted = [want64[0], None, want100[0], None, want64[1], want64[2]]
    return items, wanted, [c64, None, c100, None, c64, c64]


def run_icarus(tmp_path, transactions, wanted, cycles, *plusargs):
    """The generated testbench on the stimulus: per vector (first, cycles),
    None for a reset one, and its last line."""
    ports = Ports.of(NormUnit(SMALL))
    if not (tmp_path / "sim").exists():
        (tmp_path / "unit.v").write_text(verilog(NormUnit(SMALL), "iterl2norm_unit"))
        text = verilog_testbench(ports, "iterl2norm_unit", "protocol", transactions, verbose=True)
        (tmp_path / "tb.v").write_text(text)
        subprocess.run(
            ["iverilog", "-g2012", "-o", "sim", "unit.v", "tb.v"], cwd=tmp_path, check=True
        )
    kept = [w for w in wanted if w is not None]
    (tmp_path / "inputs.hex").write_text(stimulus_text(transactions, ports))
    (tmp_path / "expected.hex").write_text(expected_text(transactions, kept, 16))
    (tmp_path / "cycles.txt").write_text("".join(f"{c}\n" for c in cycles if c is not None))
    out = subprocess.run(
        ["vvp", "sim", *plusargs], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    seen = {}
    for line in out.splitlines():
        if m := re.match(r"vector (\d+) d=\d+ first=(\d+) (?:cycles=(\d+)|reset)", line):
            seen[int(m[1])] = (int(m[2]), None if m[3] is None else int(m[3]))
    return [seen.get(n) for n in range(len(transactions.vectors))], out.strip().splitlines()[-1]


def test_xorshift32_and_the_thresholds():
    # Marsaglia's (13, 17, 5): 1 -> 270369, and the period never reaches 0
    assert xorshift32(1) == 270369 and xorshift32(270369) == 67634689
    t = Transactions((), gaps=0.25, stalls=0.5)
    assert (t.gap_threshold, t.stall_threshold) == (1 << 14, 1 << 15)
    assert t.gapless().gap_threshold == t.gapless().stall_threshold == 0


@needs_icarus
def test_the_three_drivers_agree_cycle_for_cycle(binary, tmp_path):
    items, wanted, cycles = mixed()
    stalled = Transactions(items)  # the default: random gaps and stalls
    amaranth = run_amaranth(NormUnit(SMALL), stalled)
    compiled = run_cxxrtl(binary, stalled, PORTS)
    icarus, _ = run_icarus(tmp_path, stalled, wanted, cycles)
    check_results(amaranth, stalled, wanted)
    check_results(compiled, stalled, wanted)
    timing = [(r.first, r.cycles) for r in amaranth]
    assert [(r.first, r.cycles) for r in compiled] == timing == icarus
    assert all(
        a.bits is None or (a.bits == c.bits).all() for a, c in zip(amaranth, compiled, strict=True)
    )
    # the stalls cost cycles; gapless, every driver counts the model's
    assert sum(c for _, c in timing if c) > sum(c for c in cycles if c)
    gapless = stalled.gapless()
    check_results(run_cxxrtl(binary, gapless, PORTS), gapless, wanted, cycles)
    assert run_icarus(tmp_path, gapless, wanted, cycles, "+gapless")[1] == "4 passed, 0 failed"


@needs_icarus
def test_the_verilog_gives_every_bit_under_stalls(tmp_path):
    items, wanted, cycles = mixed()
    assert run_icarus(tmp_path, Transactions(items), wanted, cycles)[1] == "4 passed, 0 failed"


def test_a_vector_offered_while_the_unit_is_busy_waits(binary):
    params, bits, want, cycles = rows_of(100, ["gaussian", "constant", "outliers"])
    # Back to back: each vector's first beat is offered from the cycle after
    # the previous one's last input beat, while that one is still in the unit.
    stalled = Transactions.of(list(bits), [(params.gamma, params.beta)] * 3)
    for transactions in (stalled, stalled.gapless()):
        results = run_cxxrtl(binary, transactions, PORTS)
        gapless = transactions.stall_threshold == 0
        check_results(results, transactions, want, [cycles] * 3 if gapless else None)
        for a, b in pairwise(results):
            assert b.first > a.first + a.cycles  # taken once the previous one has left


def test_a_first_beat_on_the_cycle_the_previous_vector_finishes(binary):
    _, bits, want, cycles = rows_of(64, ["gaussian", "zero", "smallest"])
    streamed = Transactions(tuple(Vector(b) for b in bits), gaps=0, stalls=0)
    waiting = Transactions(tuple(Vector(b, wait=True) for b in bits), gaps=0, stalls=0)
    # constants loaded once, before the first vector
    params = rows_of(64, ["gaussian"])[0]
    streamed = Transactions((params, *streamed.items), gaps=0, stalls=0)
    waiting = Transactions((params, *waiting.items), gaps=0, stalls=0)
    late = run_cxxrtl(binary, waiting, PORTS)
    check_results(late, waiting, want, [cycles] * 3)
    for a, b in pairwise(late):
        assert b.first >= a.first + a.cycles  # offered on the finishing cycle
    # offered early or exactly then, the unit takes it on the same cycle
    early = run_cxxrtl(binary, streamed, PORTS)
    assert [r.first for r in early] == [r.first for r in late]


@pytest.mark.parametrize("when", ["input", "statistics", "output"])
def test_a_reset_mid_vector_and_the_next_vector_is_right(binary, when):
    params, bits, want, cycles = rows_of(100, ["outliers", "gaussian"])
    after = {"input": 5, "statistics": 30, "output": cycles - 2}[when]
    items = (params, Vector(bits[0], reset_after=after), params, Vector(bits[1]), Vector(bits[0]))
    for transactions in (Transactions(items), Transactions(items, gaps=0, stalls=0)):
        results = run_cxxrtl(binary, transactions, PORTS)
        gapless = transactions.gap_threshold == 0
        check_results(
            results,
            transactions,
            [None, want[1], want[0]],
            [None, cycles, cycles] if gapless else None,
        )


def test_nan_outputs_are_the_canonical_quiet_nan(binary):
    _, bits, want, _ = rows_of(1000, ["nan", "inf", "largest"])
    quiet = FpFormat.of(SMALL.fmt).quiet_nan()
    # The rows with a NaN or inf, and the one whose squares overflow, are all NaN.
    assert (want == quiet).all()
    params = rows_of(1000, ["nan"])[0]
    transactions = Transactions((params, *(Vector(b) for b in bits)))
    check_results(run_cxxrtl(binary, transactions, PORTS), transactions, want)


def test_the_probe_sees_each_cycle_of_each_vector():
    dut = RsqrtUnit.from_settings("bf16", steps=1, init="magic")
    q = [0x3F80, 0x4000, 0x0000, 0x7FC0, 0xC000]
    for transactions in (
        Transactions(tuple(Vector((v,)) for v in q), gaps=0, stalls=0),
        Transactions(tuple(Vector((v,)) for v in q), gaps=0.5, stalls=0.5),
    ):
        seen, valid = [], []

        def probe(ctx, vector, cycle, seen=seen, valid=valid):
            seen.append((vector, cycle))
            valid.append(ctx.get(dut.o.valid))

        results = run_amaranth(dut, transactions, probe)
        want = [(n, c) for n, r in enumerate(results) for c in range(r.cycles + 1)]
        assert seen == want
        # the last call of each vector: its output is valid (and taken)
        ends = np.cumsum([r.cycles + 1 for r in results]) - 1
        assert all(valid[k] for k in ends)
        if transactions.stall_threshold == 0:
            assert {r.cycles for r in results} == {dut.cycles}
            # one q a vector: the next taken the cycle after the result is
            assert [b.first - a.first - a.cycles for a, b in pairwise(results)] == [1] * 4


def test_the_stimulus_and_expected_files():
    ports = Ports(2, 16, 16, 11, True, True)
    t = Transactions((Params((1, 2), (3, 4)), Vector(range(64), reset_after=7), Vector([5] * 64)))
    text = stimulus_text(t, ports).splitlines()
    assert text[:3] == ["params 2", "0001 0003", "0002 0004"]
    assert (
        text[3] == "vector 64 7 0" and text[4:6] == ["0000", "0001"] and text[68] == "vector 64 0 0"
    )
    assert expected_text(t, [np.arange(64)], 16) == hex_lines(range(64), 16)
    with pytest.raises(ValueError, match="1 vectors are not reset, but 2 outputs"):
        expected_text(t, [[0], [1]], 16)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (
            lambda: Transactions((), gaps=1.0),
            ValueError,
            r"gaps must be a probability in \[0, 1\), got 1.0",
        ),
        (lambda: Transactions((), stalls=-0.1), ValueError, "stalls must be .* got -0.1"),
        (
            lambda: Transactions((), seed=0),
            ValueError,
            "seed must be a nonzero 32-bit integer, got 0",
        ),
        (lambda: Transactions((3,)), TypeError, "must be a Params or a Vector, got 3"),
        (lambda: Vector(()), ValueError, "at least one element"),
        (lambda: Vector((1,), reset_after=-2), ValueError, "reset_after must be .* got -2"),
        (lambda: Params((1,), ()), ValueError, "got 1 and 0"),
        (
            lambda: Ports(1, 16, 16, 0, False, False).check(Transactions((Vector((1, 2)),))),
            ValueError,
            "item 0: a scalar unit takes one q a vector, got d=2",
        ),
        (
            lambda: PORTS.check(Transactions((Vector(range(32)),))),
            ValueError,
            "item 0: d=32 is outside 64..1024",
        ),
        (
            lambda: Ports(1, 16, 16, 0, False, False).check(Transactions((Params((1,), (1,)),))),
            ValueError,
            "item 0 loads params, but the unit has no params port",
        ),
        (lambda: Ports.of(object()), TypeError, "no stream protocol for object"),
    ],
)
def test_bad_descriptions_name_the_value(make, error, message):
    with pytest.raises(error, match=message):
        make()
