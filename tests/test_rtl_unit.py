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
from iterl2norm.formats import decode, round_to_format
from iterl2norm.hw import PRESETS, UnitConfig, simulate
from iterl2norm.hw.flows.export_unit import write_unit
from iterl2norm.hw.flows.vectors import ROW_KINDS, unit_params, unit_rows, unit_vectors
from iterl2norm.hw.rtl.unit import NormUnit, unsupported_fields

DIMS = (64, 128, 768, 1000, 1024)
BUILT = [name for name, cfg in PRESETS.items() if not unsupported_fields(cfg)]


def run_unit(dut, vectors, *, params=None, gap_every=0, hold_every=0):
    """Stream each (d, bits) vector through the unit: (outputs, cycles) per
    vector. ``params``: per vector, the (sqrt(d) gamma, beta) bits an affine
    unit loads first. ``gap_every``: an input bubble every so many cycles;
    ``hold_every``: o.ready low every so many cycles (cycles then run long)."""
    p = dut.cfg.lanes
    results = []

    async def load(ctx, d, gamma, beta):
        chunks = -(-d // p)
        gamma, beta = (list(v) + [0] * (chunks * p - d) for v in (gamma, beta))
        for word in range(chunks):
            lanes = slice(word * p, (word + 1) * p)
            ctx.set(
                dut.params.payload, {"first": word == 0, "gamma": gamma[lanes], "beta": beta[lanes]}
            )
            ctx.set(dut.params.valid, 1)
            assert ctx.get(dut.params.ready), "no vector is in the unit: params load"
            await ctx.tick()
        ctx.set(dut.params.valid, 0)

    async def bench(ctx):
        t = 0
        for n, (d, bits) in enumerate(vectors):
            if params is not None:
                await load(ctx, d, *params[n])
            chunks = -(-d // p)
            padded = list(bits) + [0] * (chunks * p - d)
            beat, got, t0, t_last = 0, [], None, None
            while t_last is None:
                gap = gap_every and t % gap_every == gap_every - 1
                hold = hold_every and t % hold_every == 1
                ctx.set(dut.i.valid, int(beat < chunks and not gap))
                if beat < chunks:
                    ctx.set(dut.i.payload, {"d": d, "x": padded[beat * p : (beat + 1) * p]})
                ctx.set(dut.o.ready, 0 if hold else 1)
                if beat < chunks and not gap and ctx.get(dut.i.ready):
                    t0 = t if t0 is None else t0
                    beat += 1
                if ctx.get(dut.o.valid) and not hold:
                    payload = ctx.get(dut.o.payload)
                    got += list(payload["z"])
                    if payload["last"]:
                        t_last = t
                await ctx.tick()
                t += 1
                assert t < 200_000, "the unit never finished"
            ctx.set(dut.i.valid, 0)
            results.append((np.array(got[:d], dtype=np.int64), t_last - t0))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return results


def check(cfg, dims, count=None, seed=0, per_d=None, **stalls):
    """Every row kind at each d (or ``per_d`` kinds at each, the next ones
    at the next d): the unit's bits are hw.reference's and, when nothing
    stalls, its cycles hw.simulate's."""
    count = count or len(ROW_KINDS)
    dut = NormUnit(cfg)
    vectors, wanted, params, kinds = [], [], [], []
    for n, d in enumerate(dims):
        gamma, beta, stored = unit_params(cfg, d, seed + d) if cfg.affine else (None, None, None)
        rows = unit_rows(d, cfg.fmt, count, seed + d)
        picked = list(range(count))
        if per_d:
            picked = [(n * per_d + i) % count for i in range(per_d)]
            rows = rows[picked]
        kinds += [ROW_KINDS[i] if count == len(ROW_KINDS) else i for i in picked]
        bits, want, cycles = unit_vectors(cfg, rows, gamma, beta)
        vectors += [(d, row) for row in bits]
        wanted += [(want[r], cycles) for r in range(len(bits))]
        params += [stored] * len(bits)
    results = run_unit(dut, vectors, params=params if cfg.affine else None, **stalls)
    for n, ((got, cycles), (want, want_cycles)) in enumerate(zip(results, wanted, strict=True)):
        nan = torch.isnan(decode(torch.from_numpy(want), cfg.fmt)).numpy()
        got_nan = torch.isnan(decode(torch.from_numpy(got), cfg.fmt)).numpy()
        wrong = np.nonzero(np.where(nan, ~got_nan, got != want))[0]
        assert not len(wrong), (cfg.name, vectors[n][0], kinds[n], wrong[:5])
        if not stalls:
            assert cycles == want_cycles, (cfg.name, vectors[n][0], cycles, want_cycles)
    return results


@pytest.mark.parametrize("name", BUILT)
def test_every_preset_at_the_issue_dims(name):
    # d = 64, 128, 768, 1000 (not a multiple of P) and 1024, two row kinds at
    # each: Gaussian, outlier, zero, constant, near-largest, near-smallest,
    # NaN and inf rows all pass.
    assert BUILT == list(PRESETS)
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
    check(cfg, (64, 200))


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
    check(cfg, (64, 200))


@pytest.mark.parametrize(
    "fields",
    [
        # the paper's LayerNorm statistics: the mean, then (y 2^-k)^2 in pass 2
        {"statistics": "three-pass", "affine": False},
        {"statistics": "three-pass", "affine": True, "fmt": "fp16", "acc_fmt": "fp16"},
        {"statistics": "three-pass", "affine": True, "lanes": 64, "add_latency": 1},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_three_pass_variants(fields):
    cfg = UnitConfig("variant", **{"fmt": "fp32", **fields})
    check(cfg, (64, 200))


@pytest.mark.parametrize(
    "fields",
    [
        # a square root, then a divider per lane, with the LayerNorm forms:
        # y 2^-(k + j) / sqrt(qn) rounded once, into and out of subnormals
        {"statistics": "three-pass", "affine": True, "fmt": "bf16", "lanes": 32},
        {"statistics": "two-pass", "fmt": "fp16", "acc_fmt": "fp16", "div_latency": 3},
        {"fmt": "bf16", "acc_fmt": "bf16", "lanes": 8, "sqrt_latency": 1, "div_latency": 1},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_exact_method_variants(fields):
    cfg = UnitConfig("variant", method="exact", **{"fmt": "fp32", "sqrt_latency": 5, **fields})
    check(cfg, (64, 200))


@pytest.mark.parametrize("name", ["fast-layernorm-bf16", "paper-layernorm-bf16"])
def test_an_affine_unit_under_stalls_gives_the_same_bits(name):
    check(PRESETS[name], (100,), count=4, gap_every=3, hold_every=4)


def test_stalled_streams_give_the_same_bits():
    cfg = PRESETS["fast-l2-fp32"]
    check(cfg, (100,), count=4, gap_every=3, hold_every=4)
    # and the unit still counts the model's cycles afterwards
    results = check(cfg, (100,), count=2)
    assert results[0][1] == simulate(torch.ones(1, 100), cfg).cycles


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
    got, took = run_unit(NormUnit(cfg), [(64, bits[0])])[0]
    assert (got == want[0]).all() and took == cycles


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"mode": "vector"}, "mode='vector'"),
        ({"acc_slots": 2}, "acc_slots=2"),
        ({"acc_fmt": "fp64"}, "acc_fmt='fp64'"),
    ],
)
def test_unsupported_fields_are_named(fields, named):
    cfg = PRESETS["paper-l2-fp32"].with_(**fields)
    with pytest.raises(ValueError, match=named.replace("(", r"\(")):
        NormUnit(cfg)


@needs_icarus
@pytest.mark.parametrize("name", ["fisr-l2-fp32", "paper-layernorm-bf16", "sqrt-div-l2-fp32"])
def test_the_verilog_passes_its_testbench(tmp_path, name):
    write_unit(tmp_path, name, dims=(64, 1000), vectors=8, synthesis=False)
    assert (tmp_path / "params.hex").exists() == PRESETS[name].affine
    subprocess.run(
        ["iverilog", "-g2012", "-o", "sim", "iterl2norm_unit.v", "tb.v"], cwd=tmp_path, check=True
    )
    out = subprocess.run(
        ["vvp", "sim"], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout
    lines = out.strip().splitlines()
    assert lines[-1] == "16 passed, 0 failed", out[-2000:]
    cycles = {d: simulate(torch.ones(1, d), PRESETS[name]).cycles for d in (64, 1000)}
    assert f"vector 0 d=64 cycles={cycles[64]} ok" in lines
    assert f"vector 15 d=1000 cycles={cycles[1000]} ok" in lines
    # a wrong expectation fails, on the line of its vector
    (tmp_path / "cycles.txt").write_text("1\n" * 16)
    out = subprocess.run(["vvp", "sim"], cwd=tmp_path, capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "0 passed, 16 failed"


@needs_icarus
@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT)
def test_every_preset_passes_its_testbench_at_the_issue_dims(tmp_path, name):
    # 8 vectors at each issue d: every row kind once
    write_unit(tmp_path, name, dims=DIMS, vectors=len(ROW_KINDS), synthesis=False)
    subprocess.run(
        ["iverilog", "-g2012", "-o", "sim", "iterl2norm_unit.v", "tb.v"], cwd=tmp_path, check=True
    )
    out = subprocess.run(["vvp", "sim"], cwd=tmp_path, capture_output=True, text=True).stdout
    count = len(DIMS) * len(ROW_KINDS)
    assert out.strip().splitlines()[-1] == f"{count} passed, 0 failed", out[-2000:]


@needs_icarus
def test_the_testbench_loads_your_gamma_and_beta(tmp_path):
    rng = np.random.default_rng(1)
    np.save(tmp_path / "rows.npy", rng.standard_normal((2, 96)))
    np.save(tmp_path / "gb.npy", np.stack([1 + rng.standard_normal(96), rng.standard_normal(96)]))
    out = tmp_path / "unit"
    argv = ["rtl", "unit", "--preset", "fast-layernorm-bf16", "--lanes", "16", "--out", str(out)]
    argv += ["--inputs", str(tmp_path / "rows.npy"), "--params", str(tmp_path / "gb.npy")]
    assert main([*argv, "--no-synthesis"]) == 0
    subprocess.run(
        ["iverilog", "-g2012", "-o", "sim", "iterl2norm_unit.v", "tb.v"], cwd=out, check=True
    )
    run = lambda: subprocess.run(["vvp", "sim"], cwd=out, capture_output=True, text=True).stdout  # noqa: E731
    assert run().strip().splitlines()[-1] == "2 passed, 0 failed"
    # other constants give other outputs: the testbench does load them
    text = (out / "params.hex").read_text().replace("\n3f80 ", "\n4000 ")
    (out / "params.hex").write_text(text.replace("\n3f", "\n40"))
    assert run().strip().splitlines()[-1] == "0 passed, 2 failed"


def test_the_cli_runs_your_rows(tmp_path, capsys):
    rows = np.random.default_rng(0).standard_normal((3, 96))
    np.save(tmp_path / "rows.npy", rows)
    argv = ["rtl", "unit", "--preset", "paper-l2-fp32", "--lanes", "32", "--out", str(tmp_path)]
    assert main([*argv, "--inputs", str(tmp_path / "rows.npy"), "--no-synthesis"]) == 0
    text = (tmp_path / "inputs.hex").read_text().splitlines()
    assert text[0] == "96" and len(text) == 3 * 97
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
    got = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for value in encode(q, "fp32").tolist():
            ctx.set(dut.i.payload, value)
            ctx.set(dut.i.valid, 1)
            await ctx.tick()
            ctx.set(dut.i.valid, 0)
            while not ctx.get(dut.o.valid):
                await ctx.tick()
            got.append(ctx.get(dut.o.payload))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert got == want


def test_the_scalar_unit_rejects_a_q_format_of_another_exponent_width():
    from iterl2norm.hw.rtl.rsqrt_unit import RsqrtUnit

    with pytest.raises(ValueError, match="q_fmt='fp32' and fmt='fp16'"):
        RsqrtUnit("fp16", PRESETS["paper-l2-fp32"].iteration, q_fmt="fp32")
