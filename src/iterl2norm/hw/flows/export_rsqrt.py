"""Verilog, a self-checking testbench and test vectors for the scalar unit
(and for the sqrt + divide unit it is compared with, which has its ports).

:func:`write_rsqrt` writes into a directory ``iterl2norm_rsqrt.v`` (top
module ``iterl2norm_rsqrt``), ``tb.v`` (module ``tb``), ``inputs.hex`` (one q
a line), ``expected.hex`` (``iter_rsqrt``'s result for each), a README and
the synthesis report. The testbench checks every result and that each took
exactly the model's cycles, and holds the output stream back now and then
to check that the unit keeps its result until it is taken.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..model.simulator import rsqrt_stages
from ..rtl.fp import FpFormat
from ..rtl.rsqrt_unit import RsqrtUnit
from ..rtl.sqrt_divide import SqrtDivide
from .export import TESTBENCH_END, hex_lines, output_dir, testbench_common, verilog
from .vectors import rsqrt_inputs, rsqrt_vectors, sqrt_divide_reference

__all__ = ["write_rsqrt", "write_sqrt_divide"]

TOP = "iterl2norm_rsqrt"
SQRT_DIVIDE = "iterl2norm_sqrt_divide"


def testbench(fmt: FpFormat, cycles: int, top: str = TOP) -> str:
    """The testbench of a unit with the scalar unit's ports (module ``top``)."""
    w = fmt.width
    return f"""// Self-checking testbench for {top} ({fmt.name}, {cycles} cycles).
// Reads +inputs=FILE (default inputs.hex: one q a line) and +expected=FILE
// (default expected.hex), prints one line per failure (a wrong result, or a
// latency other than {cycles} cycles), cycles=C and "N passed, M failed".
// A NaN result passes for any NaN expected. Every fifth vector, the output
// stream is held back three cycles: the result must stay until taken.
`timescale 1ns/1ps
module tb;
  localparam CYCLES = {cycles};
  // No initial values on the unit's inputs: their first assignment must be an
  // event (Icarus does not run "always @*" at time zero).
  reg clk = 0, rst, i_valid, o_ready;
  reg [{w - 1}:0] q, want, first;
  wire [{w - 1}:0] r;
  wire i_ready, o_valid;
  {top} dut(.clk(clk), .rst(rst), .i__payload(q), .i__valid(i_valid), .i__ready(i_ready),
    .o__payload(r), .o__valid(o_valid), .o__ready(o_ready));
  integer fin, fexp, n, passed, failed, cycles, held;
  reg [1023:0] inputs_file, expected_file;

{testbench_common(fmt)}    passed = 0; failed = 0; n = 0; cycles = -1;
    rst = 1; i_valid = 0; o_ready = 1;
    tick; rst = 0;
    while (!$feof(fin)) begin
      if ($fscanf(fin, "%h\\n", q) == 1) begin
        if ($fscanf(fexp, "%h\\n", want) != 1) begin
          $display("expected file ends before vector %0d", n);
          $finish;
        end
        while (!i_ready) tick;
        i_valid = 1;
        o_ready = (n % 5 != 4);
        tick;
        i_valid = 0;
        cycles = 1;
        while (!o_valid && cycles <= 4 * CYCLES + 8) begin tick; cycles = cycles + 1; end
        first = r;
        held = 0;
        while (!o_ready) begin
          tick; held = held + 1;
          if (!o_valid || r !== first) begin
            $display("FAIL vector %0d: the result changed before it was taken", n);
            failed = failed + 1;
          end
          if (held == 3) o_ready = 1;
        end
        if (cycles != CYCLES) begin
          failed = failed + 1;
          $display("FAIL vector %0d: q=%h took %0d cycles, not %0d", n, q, cycles, CYCLES);
        end else if (first === want || (is_nan(want) && is_nan(first))) passed = passed + 1;
        else begin
          failed = failed + 1;
          $display("FAIL vector %0d: q=%h r=%h expected=%h", n, q, first, want);
        end
        tick;  // the output is taken
        n = n + 1;
      end
    end
{TESTBENCH_END}"""


def write_rsqrt(
    out: str | Path,
    fmt: str,
    *,
    steps: int = 5,
    init: str = "exponent",
    update_rate=0.5,
    schedule: str | None = None,
    mul_latency: int = 3,
    add_latency: int = 3,
    exp_latency: int = 1,
    count: int = 4096,
    seed: int = 0,
    synthesis: bool = True,
) -> tuple[list[Path], dict]:
    """Write the scalar unit's Verilog, testbench, vectors and README into
    ``out``, with ``synthesis`` its gate count; returns the files and a
    report (cycles, the model's stages and the gate count)."""
    settings = {"steps": steps, "init": init, "update_rate": update_rate, "schedule": schedule}
    latencies = {"mul_latency": mul_latency, "add_latency": add_latency, "exp_latency": exp_latency}
    unit = RsqrtUnit.from_settings(fmt, **settings, **latencies)
    f = unit.fmt
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of test vectors must be positive, got {count!r}")
    out = output_dir(out)
    q = rsqrt_inputs(f.name, count, seed)
    expected = rsqrt_vectors({"fmt": f.name, **settings}, q)
    stages = rsqrt_stages(unit.iteration, f.name, mul_latency, add_latency, exp_latency)
    report = {
        "unit": TOP,
        "fmt": f.name,
        **settings,
        "update_rate": list(update_rate) if isinstance(update_rate, (list, tuple)) else update_rate,
        **latencies,
        "cycles": unit.cycles,
        "model_stages": stages,
        "vectors": len(q),
    }
    return _write_unit(out, TOP, unit, q, expected, report, _readme(report), synthesis)


def write_sqrt_divide(
    out: str | Path, fmt: str, *, count: int = 4096, seed: int = 0, synthesis: bool = True
) -> tuple[list[Path], dict]:
    """The same for the sqrt + divide unit (:mod:`iterl2norm.hw.rtl.sqrt_divide`)."""
    unit = SqrtDivide(fmt)
    f = unit.fmt
    if not isinstance(count, int) or count < 1:
        raise ValueError(f"the number of test vectors must be positive, got {count!r}")
    out = output_dir(out)
    q = rsqrt_inputs(f.name, count, seed)
    expected = sqrt_divide_reference(torch.from_numpy(q), f.name).numpy()
    report = {"unit": SQRT_DIVIDE, "fmt": f.name, "cycles": unit.cycles, "vectors": len(q)}
    readme = f"""# {SQRT_DIVIDE}: q**-0.5 in {f.name} by a square root and a division

Generated by `iterl2norm rtl sqrt-divide --fmt {f.name}`. The result is
rnd(1 / rnd(sqrt(qn))) * 2**-j: a correctly rounded square root of the
normalized q, then a correctly rounded division, each by radix-2 digit
recurrence (one bit a cycle), {unit.cycles} cycles from the cycle q is taken.
The ports, the fixed results for q <= 0, inf and NaN, and the testbench are
those of iterl2norm_rsqrt (`iterl2norm rtl rsqrt`):

    iverilog -g2012 -o sim *.v && vvp sim

prints one line per failure, `cycles={unit.cycles}` and `N passed, M failed` over
{len(q)} vectors; `synthesis.json` is the Yosys gate count.
"""
    return _write_unit(out, SQRT_DIVIDE, unit, q, expected, report, readme, synthesis)


def _write_unit(out: Path, top, unit, q, expected, report, readme, synthesis):
    f = unit.fmt
    files = {
        f"{top}.v": verilog(unit, top),
        "tb.v": testbench(f, unit.cycles, top),
        "inputs.hex": hex_lines(q, f.width),
        "expected.hex": hex_lines(expected, f.width),
        "README.md": readme,
    }
    written = []
    for name, text in files.items():
        (out / name).write_text(text)
        written.append(out / name)
    if synthesis:
        from .synth import synthesize

        report["synthesis"] = synthesize(out / f"{top}.v", top)
        written.append(out / "synthesis.log")
    name = "synthesis.json" if synthesis else "report.json"
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    written.append(out / name)
    return written, report


def _readme(report: dict) -> str:
    how = (
        f"schedule={report['schedule']!r}"
        if report["schedule"]
        else f"init={report['init']!r}, update_rate={report['update_rate']!r}"
    )
    stages = ", ".join(f"{k} {v}" for k, v in report["model_stages"].items())
    return f"""# {TOP}: q**-0.5 in {report["fmt"]}, {report["steps"]} steps, {how}

The result is bit for bit `iter_rsqrt(q, fmt={report["fmt"]!r}, steps={report["steps"]}, {how})`
of the iterl2norm library, with no divider and no square root: one
multiplier (latency {report["mul_latency"]}), one adder (latency {report["add_latency"]}) and
exponent-field blocks (latency {report["exp_latency"]}) on a dependency chain. q <= 0 gives
inf for zeros and NaN below, inf gives 0, NaN gives NaN (the quiet NaN of the
format).

Ports (valid/ready streams): `i__payload` (q), `i__valid` in, `i__ready`
out; `o__payload` (r), `o__valid` out, `o__ready` in; `clk`, `rst`
(synchronous, active high). The unit takes one q while idle (`i__ready`
high) and gives r {report["cycles"]} cycles after the cycle it took q, as the
hardware model counts them ({stages}); it holds r until `o__ready`.

Run the testbench ({report["vectors"]} vectors, expected results from the library):

    iverilog -g2012 -o sim *.v && vvp sim

It prints one line per failure, `cycles={report["cycles"]}` and `N passed, M failed`;
`vvp sim +inputs=FILE +expected=FILE` runs other vectors (one lowercase hex
bit pattern a line).

`synthesis.json` (unless `--no-synthesis`): the unit mapped to generic CMOS
gates by Yosys (`synth -flatten; dfflegalize -cell $_DFF_P_ 01; abc -g cmos;
stat -tech cmos`): transistors, NAND2 equivalents, flip-flops, latches and
cells, beside the cycles and the model's stages.
"""
