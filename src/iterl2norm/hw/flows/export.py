"""Verilog, a self-checking testbench and test vectors for one operator.

:func:`write_op` writes into a directory:

- ``iterl2norm_op.v``: the operator (top module ``iterl2norm_op``);
- ``tb.v``: a plain-Verilog testbench (module ``tb``) that reads
  ``inputs.hex`` (two operands a line) and ``expected.hex`` (one result a
  line) to their end, or the files ``+inputs=FILE +expected=FILE`` name,
  prints one line per failure, the latency as ``cycles=C`` and a last line
  ``N passed, M failed``;
- ``inputs.hex``, ``expected.hex``: lowercase hex bit patterns in the
  format's width, the expected results from the library's rounding;
- ``README.md``: how to run it;
- ``report.json`` (:mod:`.bundle`): the operator, and with synthesis its
  gate count (``synthesis.log``: Yosys's log).

Anyone with Icarus Verilog runs it as ``iverilog -g2012 -o sim DIR/*.v && vvp sim``.
"""

from __future__ import annotations

from pathlib import Path

from ..rtl.fp import FpFormat, operator
from .bundle import output_dir, write_bundle
from .vectors import test_vectors

__all__ = ["hex_lines", "verilog", "write_op"]

TOP = "iterl2norm_op"


def verilog(component, name: str = TOP) -> str:
    """The component as Verilog (Amaranth's back-end, through Yosys)."""
    from amaranth.back import verilog as back

    return back.convert(component, name=name, emit_src=False)


def hex_lines(values, width: int) -> str:
    """One lowercase hex bit pattern a line, in the format's width."""
    digits = (width + 3) // 4
    return "".join(f"{int(v):0{digits}x}\n" for v in values)


# The testbench's last lines: the latency and the counts.
_TESTBENCH_END = """    $display("cycles=%0d", cycles);
    $display("%0d passed, %0d failed", passed, failed);
    $finish;
  end
endmodule
"""


def _testbench_open() -> str:
    """The clock tick and the opening of +inputs=FILE and +expected=FILE
    (default inputs.hex, expected.hex) at the start of the initial block."""
    return """  task tick;
    begin
      #5 clk = 1;
      #5 clk = 0;
    end
  endtask

  initial begin
    if (!$value$plusargs("inputs=%s", inputs_file)) inputs_file = "inputs.hex";
    if (!$value$plusargs("expected=%s", expected_file)) expected_file = "expected.hex";
    fin = $fopen(inputs_file, "r");
    fexp = $fopen(expected_file, "r");
    if (fin == 0 || fexp == 0) begin
      $display("cannot open %0s or %0s", inputs_file, expected_file);
      $finish;
    end
"""


def testbench(formats: tuple[FpFormat, FpFormat, FpFormat], latency: int) -> str:
    """A self-checking testbench: each vector on its own, so that the cycles
    from valid_in to valid_out are the operator's latency."""
    fa, fb, fmt = formats
    w = fmt.width
    names = fmt.name if fa == fb == fmt else f"{fa.name} x {fb.name} -> {fmt.name}"
    ports = ".clk(clk), .rst(rst), .a(a), .b(b), .valid_in(valid_in), .result(result), " + (
        ".valid_out(valid_out)"
    )
    return f"""// Self-checking testbench for {TOP} ({names}, latency {latency}).
// Reads +inputs=FILE (default inputs.hex: "a b" a line) and +expected=FILE
// (default expected.hex), prints one line per failure, cycles=C, and
// "N passed, M failed". Every result must be the expected bits, NaNs included
// (the operators give the canonical quiet NaN).
`timescale 1ns/1ps
module tb;
  // No initial values on the inputs: their first assignment must be an event,
  // so that every combinational block of the design evaluates (Icarus does
  // not run "always @*" at time zero).
  reg clk = 0, rst, valid_in;
  reg [{fa.width - 1}:0] a;
  reg [{fb.width - 1}:0] b;
  reg [{w - 1}:0] want;
  wire [{w - 1}:0] result;
  wire valid_out;
  {TOP} dut({ports});
  integer fin, fexp, n, passed, failed, cycles, got_lines;
  reg [1023:0] inputs_file, expected_file;

{_testbench_open()}    passed = 0; failed = 0; n = 0; cycles = -1;
    rst = 1; valid_in = 0;
    tick; rst = 0;
    while (!$feof(fin)) begin
      got_lines = $fscanf(fin, "%h %h\\n", a, b);
      if (got_lines == 2) begin
        if ($fscanf(fexp, "%h\\n", want) != 1) begin
          $display("expected file ends before vector %0d", n);
          $finish;
        end
        valid_in = 1;
        tick;
        valid_in = 0;
        cycles = 1;
        while (!valid_out) begin tick; cycles = cycles + 1; end
        if (result === want) passed = passed + 1;
        else begin
          failed = failed + 1;
          $display("FAIL vector %0d: a=%h b=%h result=%h expected=%h", n, a, b, result, want);
        end
        n = n + 1;
      end
    end
{_TESTBENCH_END}"""


def write_op(
    out: str | Path,
    op: str,
    fmt: str,
    latency: int,
    count: int = 10000,
    seed: int = 0,
    synthesis: bool = True,
    acc_fmt: str | None = None,
) -> tuple[list[Path], dict | None]:
    """Write the operator's Verilog, testbench, vectors, README and
    ``report.json`` into ``out`` (:func:`.bundle.write_bundle`), with
    ``synthesis`` its gate count (and ``synthesis.log``). Returns the files
    and, with synthesis, the report with the gate count's fields at its top
    level (else None)."""
    if not isinstance(latency, int) or isinstance(latency, bool) or latency < 1:
        raise ValueError(f"latency must be an integer >= 1, got {latency!r}")
    component = operator(op, fmt, latency, acc_fmt)
    formats = (*component.inputs, component.fmt)
    f = component.fmt
    if count < 1:
        raise ValueError(f"the number of test vectors must be positive, got {count!r}")
    out = output_dir(out)
    pairs, expected = test_vectors(op, fmt, count, seed, acc_fmt)
    da, db = ((g.width + 3) // 4 for g in component.inputs)
    files = {
        f"{TOP}.v": verilog(component),
        "tb.v": testbench(formats, latency),
        "inputs.hex": "".join(f"{int(x):0{da}x} {int(y):0{db}x}\n" for x, y in pairs),
        "expected.hex": hex_lines(expected, f.width),
        "README.md": _readme(op, formats, latency, count),
    }
    report = {
        "op": op,
        "fmt": formats[1].name,  # the datapath operand's
        "acc_fmt": None if formats[1] == f else f.name,
        "latency": latency,
        "vectors": count,
    }
    written, report = write_bundle(out, files, report, _synthesis if synthesis else None)
    if not synthesis:
        return written, None
    return written, {**{k: v for k, v in report.items() if k != "synthesis"}, **report["synthesis"]}


def _synthesis(out: Path) -> tuple[dict, list[Path]]:
    from .synth import synthesize

    return synthesize(out / f"{TOP}.v", TOP), [out / "synthesis.log"]


def _readme(op: str, formats, latency: int, count: int) -> str:
    symbol = "*" if op == "mul" else "+"
    fa, fb, fmt = formats
    acc = "" if fa == fb == fmt else f" --acc-fmt {fmt.name}"
    data = fb.name if op == "add" else fa.name
    title = f"a {symbol} b, a in {fa.name}, b in {fb.name}, result in {fmt.name}"
    return f"""# {TOP}: {title}, latency {latency}

Generated by `iterl2norm rtl op --op {op} --fmt {data}{acc} --latency {latency}`.
The result is the exact a {symbol} b rounded once to {fmt.name} (nearest, ties
to even; subnormals kept; overflow to infinity), bit for bit the iterl2norm
library's; a NaN result is the quiet NaN 0x{fmt.quiet_nan():x}, which the
testbench checks.

Ports: `a` ({fa.width} bits), `b` ({fb.width} bits), `valid_in` in; `result` ({fmt.width} bits),
`valid_out` out, {latency} clock cycles later; `clk` and `rst` (synchronous,
active high) drive the pipeline registers, one operation a cycle.

Run the testbench ({count} vectors: random bit patterns and pairs with close
exponents, expected results from the library):

    iverilog -g2012 -o sim *.v && vvp sim

It prints one line per failure, `cycles={latency}` and `N passed, M failed`;
`vvp sim +inputs=FILE +expected=FILE` runs other vectors (`a b` a line, one
result a line, lowercase hex).

`report.json`: the operator and its settings, and (unless `--no-synthesis`,
under "synthesis") the operator mapped to generic CMOS gates by Yosys
(`synth -flatten; dfflegalize -cell $_DFF_P_ 01; abc -g cmos; stat -tech
cmos`): transistors, NAND2 equivalents (transistors
/ 4), flip-flops, latches and the cell histogram; `synthesis.log` is Yosys's log.
"""
