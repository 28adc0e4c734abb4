"""The normalization unit iterl2norm_unit: its outputs are hw.reference's bits
and its latency hw.simulate's cycles, for every L2 preset and the variants
its fields allow; streams that stall still give the same bits."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch
from amaranth.sim import Simulator
from rtl_support import needs_icarus

from iterl2norm.cli import main
from iterl2norm.formats import round_to_format
from iterl2norm.hw import PRESETS, UnitConfig, simulate
from iterl2norm.hw.flows.export_unit import write_unit
from iterl2norm.hw.flows.protocol import (
    DEFAULT_GAPS,
    DEFAULT_STALLS,
    Transactions,
    Vector,
    run_amaranth,
)
from iterl2norm.hw.flows.vectors import ROW_KINDS, unit_params, unit_rows, unit_vectors
from iterl2norm.hw.rtl.unit import NormUnit, unsupported_fields

DIMS = (64, 128, 768, 1000, 1024)
BUILT = [name for name, cfg in PRESETS.items() if not unsupported_fields(cfg)]


def run_unit(dut, vectors, *, params=None, probe=None, **patterns):
    """Stream each (d, bits) vector through the unit with the protocol's
    Amaranth driver (:mod:`iterl2norm.hw.flows.protocol`): (outputs, cycles)
    per vector. ``params``: per vector, the (sqrt(d) gamma, beta) bits an
    affine unit loads first. ``probe(ctx, vector, cycle)``: called each cycle
    from a vector's first beat (cycle 0) to its last output beat.
    ``patterns``: gaps, stalls and seed, by default random gaps and stalls
    (the cycles are the model's only with ``gaps=0, stalls=0``)."""
    transactions = Transactions.of(vectors, params, **patterns)
    return [(r.bits, r.cycles) for r in run_amaranth(dut, transactions, probe)]


def check(cfg, dims, count=None, seed=0, per_d=None, offset=0, **patterns):
    """Every row kind at each d (or ``per_d`` kinds at each, from kind
    ``offset`` on, the next ones at the next d): the unit's bits are
    hw.reference's, NaNs included, and, when nothing stalls (the default
    here), its cycles hw.simulate's."""
    count = count or len(ROW_KINDS)
    patterns = {"gaps": 0, "stalls": 0, **patterns}
    gapless = patterns["gaps"] == patterns["stalls"] == 0
    dut = NormUnit(cfg)
    vectors, wanted, params, kinds = [], [], [], []
    for n, d in enumerate(dims):
        gamma, beta, stored = unit_params(cfg, d, seed + d) if cfg.affine else (None, None, None)
        rows = unit_rows(d, cfg.fmt, count, seed + d)
        picked = list(range(count))
        if per_d:
            picked = [(offset + n * per_d + i) % count for i in range(per_d)]
            rows = rows[picked]
        kinds += [ROW_KINDS[i] if count == len(ROW_KINDS) else i for i in picked]
        bits, want, cycles = unit_vectors(cfg, rows, gamma, beta)
        vectors += [(d, row) for row in bits]
        wanted += [(want[r], cycles) for r in range(len(bits))]
        params += [stored] * len(bits)
    results = run_unit(dut, vectors, params=params if cfg.affine else None, **patterns)
    for n, ((got, cycles), (want, want_cycles)) in enumerate(zip(results, wanted, strict=True)):
        wrong = np.nonzero(got != want)[0]
        assert not len(wrong), (cfg.name, vectors[n][0], kinds[n], wrong[:5])
        if gapless:
            assert cycles == want_cycles, (cfg.name, vectors[n][0], cycles, want_cycles)
    return results


@pytest.mark.parametrize("name", BUILT)
def test_every_preset_at_the_shortest_and_an_unaligned_d(name):
    # d = 64 and 200 (not a multiple of P), two row kinds at each: half the
    # presets get the Gaussian, outlier, zero and constant rows, the others
    # the near-largest, near-smallest, NaN and inf rows (every kind of every
    # preset at every issue d: -m slow).
    assert BUILT == list(PRESETS)
    check(PRESETS[name], (64, 200), per_d=2, offset=4 * (BUILT.index(name) % 2))


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT)
def test_every_preset_at_the_issue_dims(name):
    # d = 64, 128, 768, 1000 and 1024, two row kinds at each
    check(PRESETS[name], DIMS, per_d=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT)
def test_every_preset_every_row_kind_at_the_issue_dims(name):
    check(PRESETS[name], DIMS)


@pytest.mark.parametrize(
    "fields",
    [
        # bf16 datapath, fp32 sum of squares: qn rounds to bf16 (it can reach 2).
        {"fmt": "bf16", "lanes": 32, "add_latency": 2, "schedule": "table", "steps": 0},
        {"fmt": "bf16", "acc_fmt": "bf16", "lanes": 8, "init": "exponent+mantissa", "steps": 3},
        {"fmt": "fp16", "acc_fmt": "fp16", "lanes": 16, "init": "magic", "steps": 2},
        # 64 lanes: one beat at d = 64, slots with no beat, the final tree's padding.
        {"lanes": 64, "add_latency": 4, "mul_latency": 2, "steps": 1},
        # one slot (no final tree), one lane per cycle
        {"lanes": 2, "add_latency": 1, "mul_latency": 1, "exp_latency": 2, "steps": 2},
        # more slots than the adder's latency, not a power of two
        {"acc_slots": 5, "add_latency": 3, "schedule": "minimax", "steps": 2},
        {"method": "fisr", "steps": 3, "lanes": 4, "mul_latency": 4},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_variants_the_fields_allow(fields):
    cfg = UnitConfig("variant", statistics="l2", affine=False, **{"fmt": "fp32", **fields})
    check(cfg, (64, 200), per_d=4)  # every row kind once


@pytest.mark.parametrize(
    "fields",
    [
        # LayerNorm's statistics without its affine part, and RMSNorm-like
        # l2 with it; 16-bit accumulators; x - mean with a bf16 x and fp32 mean.
        {"statistics": "two-pass", "affine": False},
        {"statistics": "l2", "affine": True, "lanes": 8},
        {"statistics": "two-pass", "affine": True, "fmt": "bf16", "acc_fmt": "bf16"},
        {"statistics": "two-pass", "affine": True, "fmt": "fp16", "acc_fmt": "fp16", "steps": 3},
        {"statistics": "two-pass", "affine": True, "fmt": "bf16", "mul_latency": 1},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_layernorm_variants(fields):
    cfg = UnitConfig("variant", **{"fmt": "fp32", **fields})
    check(cfg, (64, 200), per_d=4)  # every row kind once


@pytest.mark.parametrize(
    "fields",
    [
        # the paper's LayerNorm statistics: the mean, then (y 2^-k)^2 in pass 2
        {"statistics": "three-pass", "affine": False},
        {"statistics": "three-pass", "affine": True, "fmt": "fp16", "acc_fmt": "fp16"},
        pytest.param(
            {"statistics": "three-pass", "affine": True, "lanes": 64, "add_latency": 1},
            marks=pytest.mark.slow,
        ),
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_three_pass_variants(fields):
    cfg = UnitConfig("variant", **{"fmt": "fp32", **fields})
    check(cfg, (64, 200), per_d=4)  # every row kind once


@pytest.mark.parametrize(
    "fields",
    [
        # a square root, then a divider per lane, with the LayerNorm forms:
        # y 2^-(k + j) / sqrt(qn) rounded once, into and out of subnormals
        pytest.param(
            {"statistics": "three-pass", "affine": True, "fmt": "bf16", "lanes": 32},
            marks=pytest.mark.slow,
        ),
        {"statistics": "two-pass", "fmt": "fp16", "acc_fmt": "fp16", "div_latency": 3},
        {"fmt": "bf16", "acc_fmt": "bf16", "lanes": 8, "sqrt_latency": 1, "div_latency": 1},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_exact_method_variants(fields):
    cfg = UnitConfig("variant", method="exact", **{"fmt": "fp32", "sqrt_latency": 5, **fields})
    check(cfg, (64, 200), per_d=4)  # every row kind once


@pytest.mark.parametrize("name", ["fast-layernorm-bf16", "paper-layernorm-bf16"])
def test_an_affine_unit_under_stalls_gives_the_same_bits(name):
    # the protocol's default: random input gaps and output stalls
    check(PRESETS[name], (100,), count=4, gaps=DEFAULT_GAPS, stalls=DEFAULT_STALLS)


def test_stalled_streams_give_the_same_bits():
    cfg = PRESETS["fast-l2-fp32"]
    stalled = check(cfg, (100,), count=4, gaps=0.5, stalls=0.5)
    # the stalls did cost cycles, and the unit still counts the model's
    # cycles afterwards
    want = simulate(torch.ones(1, 100), cfg).cycles
    assert min(cycles for _, cycles in stalled) > want
    results = check(cfg, (100,), count=2)
    assert results[0][1] == want


def test_a_bad_d_raises_error_and_the_next_vector_runs():
    cfg = PRESETS["paper-l2-fp32"]
    dut = NormUnit(cfg)
    bits, want, cycles = unit_vectors(cfg, unit_rows(64, "fp32", 1))
    seen = {}

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.i.payload, {"d": 1025, "x": [0] * 16})
        await ctx.tick()
        seen["error"] = ctx.get(dut.error)
        seen["ready"] = ctx.get(dut.i.ready)  # the bad beat was dropped
        ctx.set(dut.i.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {"error": 1, "ready": 1}
    got, took = run_unit(NormUnit(cfg), [(64, bits[0])], gaps=0, stalls=0)[0]
    assert (got == want[0]).all() and took == cycles


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"mode": "vector"}, "mode='vector'"),
        ({"acc_fmt": "fp64"}, "acc_fmt='fp64'"),
    ],
)
def test_unsupported_fields_are_named(fields, named):
    cfg = PRESETS["paper-l2-fp32"].with_(**fields)
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        NormUnit(cfg)


def run_testbench(directory, *plusargs) -> list[str]:
    done = subprocess.run(
        ["vvp", "sim", *plusargs], cwd=directory, capture_output=True, text=True, check=True
    )
    return done.stdout.strip().splitlines()


def compile_testbench(directory) -> None:
    subprocess.run(
        ["iverilog", "-g2012", "-o", "sim", "iterl2norm_unit.v", "tb.v"], cwd=directory, check=True
    )


@needs_icarus
@pytest.mark.parametrize(
    "name",
    [
        "fisr-l2-fp32",
        pytest.param("paper-layernorm-bf16", marks=pytest.mark.slow),
        pytest.param("sqrt-div-l2-fp32", marks=pytest.mark.slow),
    ],
)
def test_the_verilog_passes_its_testbench(tmp_path, name):
    write_unit(tmp_path, name, dims=(64, 1000), vectors=8, synthesis=False)
    text = (tmp_path / "inputs.hex").read_text()
    assert text.count("params ") == 16 * PRESETS[name].affine and text.count("vector ") == 16
    compile_testbench(tmp_path)
    lines = run_testbench(tmp_path, "+gapless")
    assert lines[-1] == "16 passed, 0 failed"
    cycles = {d: simulate(torch.ones(1, d), PRESETS[name]).cycles for d in (64, 1000)}
    assert f"vector 0 d=64 first=0 cycles={cycles[64]} ok" in lines
    assert any(
        ln.startswith("vector 15 d=1000 ") and f"cycles={cycles[1000]} ok" in ln for ln in lines
    )
    # a wrong expectation fails, on the line of its vector, where cycles are checked
    (tmp_path / "cycles.txt").write_text("1\n" * 16)
    assert run_testbench(tmp_path, "+gapless")[-1] == "0 passed, 16 failed"


@needs_icarus
def test_the_verilog_passes_its_stalled_testbench(tmp_path):
    # the testbench's default: random input gaps and output stalls, bits only
    write_unit(tmp_path, "fisr-l2-fp32", dims=(64, 1000), vectors=8, synthesis=False)
    compile_testbench(tmp_path)
    assert run_testbench(tmp_path)[-1] == "16 passed, 0 failed"


@needs_icarus
@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT)
def test_every_preset_passes_its_testbench_at_the_issue_dims(tmp_path, name):
    # 8 vectors at each issue d: every row kind once
    write_unit(tmp_path, name, dims=DIMS, vectors=len(ROW_KINDS), synthesis=False)
    compile_testbench(tmp_path)
    count = len(DIMS) * len(ROW_KINDS)
    for plusargs in ([], ["+gapless"]):
        assert run_testbench(tmp_path, *plusargs)[-1] == f"{count} passed, 0 failed"


@needs_icarus
def test_the_testbench_loads_your_gamma_and_beta(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "rows.npy", rng.standard_normal((2, 96)))
    np.save(tmp_path / "gb.npy", np.stack([1 + rng.standard_normal(96), rng.standard_normal(96)]))
    out = tmp_path / "unit"
    argv = ["rtl", "unit", "--preset", "fast-layernorm-bf16", "--lanes", "4", "--out", str(out)]
    argv += ["--inputs", str(tmp_path / "rows.npy"), "--params", str(tmp_path / "gb.npy")]
    assert main([*argv, "--no-synthesis"]) == 0
    compile_testbench(out)
    assert run_testbench(out, "+gapless")[-1] == "2 passed, 0 failed"
    # other constants give other outputs: the testbench does load them
    lines = (out / "inputs.hex").read_text().splitlines()
    pairs = [  # the "G B" lines after each "params D" record
        n
        for n, line in enumerate(lines)
        if len(line.split()) == 2 and not line.startswith(("params", "vector"))
    ]
    assert len(pairs) == 2 * 96
    for n in pairs:
        g, b = lines[n].split()
        lines[n] = f"{int(g, 16) ^ 0x0080:04x} {b}"  # gamma's lowest exponent bit flipped
    (out / "inputs.hex").write_text("\n".join(lines) + "\n")
    assert run_testbench(out, "+gapless")[-1] == "0 passed, 2 failed"


def test_the_cli_runs_your_rows(tmp_path, capsys):
    rows = np.random.default_rng(0).standard_normal((3, 96))
    np.save(tmp_path / "rows.npy", rows)
    argv = ["rtl", "unit", "--preset", "paper-l2-fp32", "--lanes", "8", "--out", str(tmp_path)]
    assert main([*argv, "--inputs", str(tmp_path / "rows.npy"), "--no-synthesis"]) == 0
    text = (tmp_path / "inputs.hex").read_text().splitlines()
    assert text[0] == "vector 96 0 0" and len(text) == 3 * 97
    assert "cycles d=96:" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "nope"], "unknown unit preset 'nope'"),
        (["--preset", "paper-l2-fp32", "--mode", "vector"], "does not build mode='vector'"),
        (["--preset", "paper-l2-fp32", "--dims", "32"], "d=32 is outside"),
        (["--preset", "paper-l2-fp32", "--lanes", "3"], "lanes must be a power of two"),
        (["--preset", "paper-l2-fp32", "--params", "gb.npy"], "--params needs an affine unit"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    assert main(["rtl", "unit", *argv, "--out", str(tmp_path), "--no-synthesis"]) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("how", [{"schedule": "table", "steps": 0}, {"init": "exponent+mantissa"}])
def test_qn_rounded_up_to_two_takes_the_librarys_start(how):
    # An fp32 q whose qn rounds up to 2 in bf16: the table start and the
    # exponent+mantissa start must read it as the library does (qn >= 1).
    from iterl2norm import schedules
    from iterl2norm._arith import Arithmetic
    from iterl2norm._validation import IterSettings
    from iterl2norm.formats import encode, ldexp
    from iterl2norm.hw.rtl.rsqrt_unit import RsqrtUnit
    from iterl2norm.rsqrt import exponent_split

    settings = IterSettings(fmt="bf16", **{"steps": 2, **how})
    q = torch.tensor([2 - 2**-10, 8 - 2**-7, 0.5 - 2**-12, 1.9990234375], dtype=torch.float64)
    ar = Arithmetic.resolve(torch.float32, "bf16", "fp32")
    j = exponent_split(q)
    qn = round_to_format(ldexp(q, -2 * j), "bf16")
    assert (qn == 2).sum() >= 3
    want = encode(ldexp(schedules.run(qn, ar, settings.iteration), -j), "bf16").tolist()
    dut = RsqrtUnit("bf16", settings.iteration, q_fmt="fp32")
    transactions = Transactions(tuple(Vector((v,)) for v in encode(q, "fp32").tolist()))
    got = [int(r.bits[0]) for r in run_amaranth(dut, transactions)]
    assert got == want


def test_the_scalar_unit_rejects_a_q_format_of_another_exponent_width():
    from iterl2norm.hw.rtl.rsqrt_unit import RsqrtUnit

    with pytest.raises(ValueError, match="q_fmt='fp32' and fmt='fp16'"):
        RsqrtUnit("fp16", PRESETS["paper-l2-fp32"].iteration, q_fmt="fp32")
