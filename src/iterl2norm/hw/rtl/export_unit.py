"""Verilog, a self-checking testbench and test vectors for the normalization
unit ``iterl2norm_unit`` (:mod:`.unit`).

:func:`write_unit` writes into a directory ``iterl2norm_unit.v``, ``tb.v``
(module ``tb``), ``inputs.hex`` (each vector: a line with its d in decimal,
then its d elements' bit patterns, one a line), ``expected.hex``
(``hw.reference``'s outputs, the same layout), ``cycles.txt`` (``hw.simulate``'s
latency for each vector, which the testbench checks), a README and the
synthesis report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ...formats import FORMATS, encode, round_to_format
from ..config import check_d, get_preset
from ..reference import reference
from ..simulator import simulate
from .export import TESTBENCH_END, output_dir, testbench_common, verilog
from .unit import NormUnit

__all__ = ["ROW_KINDS", "unit_rows", "unit_vectors", "write_unit"]

TOP = "iterl2norm_unit"
ROW_KINDS = ("gaussian", "outliers", "zero", "constant", "largest", "smallest", "nan", "inf")


def unit_rows(d: int, fmt: str, count: int, seed: int = 0) -> torch.Tensor:
    """``count`` rows of length d in float64, cycling through ROW_KINDS:
    Gaussian rows, rows with a few outliers 1000x the rest, zero rows,
    constant rows, rows near the format's largest value (whose squares
    overflow) and smallest normal (whose squares underflow), rows with a NaN
    and rows with an inf."""
    f = FORMATS[fmt]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for n in range(count):
        kind = ROW_KINDS[n % len(ROW_KINDS)]
        x = torch.randn(d, generator=g, dtype=torch.float64)
        if kind == "outliers":
            x[torch.randint(0, d, (3,), generator=g)] *= 1000
        elif kind == "zero":
            x = torch.zeros(d, dtype=torch.float64)
        elif kind == "constant":
            x = torch.full((d,), float(x[0]), dtype=torch.float64)
        elif kind == "largest":
            x = x.clamp(-3, 3) * (f.max / 4)
        elif kind == "smallest":
            x = x * f.smallest_normal
        elif kind == "nan":
            x[int(torch.randint(0, d, (1,), generator=g))] = float("nan")
        elif kind == "inf":
            x[int(torch.randint(0, d, (1,), generator=g))] = float("inf")
        rows.append(x)
    return torch.stack(rows) if rows else torch.zeros(0, d, dtype=torch.float64)


def unit_vectors(cfg, rows: torch.Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    """(input bits, expected bits, cycles) of rows (n, d) for the unit of ``cfg``."""
    cfg = get_preset(cfg)
    check_d(rows.shape[-1])
    x = round_to_format(rows.to(torch.float64), cfg.fmt)
    want = reference(x, cfg)
    cycles = simulate(x[:1], cfg).cycles  # the schedule does not depend on the data
    return encode(x, cfg.fmt).numpy(), encode(want, cfg.fmt).numpy(), cycles


def _vector_lines(d: int, bits: np.ndarray, width: int) -> str:
    digits = (width + 3) // 4
    return f"{d}\n" + "".join(f"{int(v):0{digits}x}\n" for v in bits)


def testbench(unit: NormUnit) -> str:
    """The testbench: each vector streamed in without gaps, its outputs taken
    at once, every element and the latency checked."""
    cfg, f = unit.cfg, unit.fmt
    p, w = cfg.lanes, f.width
    return f"""// Self-checking testbench for {TOP} ({cfg.name}: {cfg.fmt}, P={p}).
// Reads +inputs=FILE (default inputs.hex), +expected=FILE (default
// expected.hex) and +cycles=FILE (default cycles.txt): per vector a line
// with d, then d lines of bit patterns; one latency a line. Prints per vector
// "vector I d=D cycles=C ok" (or FAIL, with the first wrong elements), then
// "N passed, M failed". A NaN output passes for any NaN expected.
`timescale 1ns/1ps
module tb;
  localparam P = {p}, W = {w};
  reg clk = 0, rst, i_valid, o_ready;
  reg [10:0] d;
  reg [P*W-1:0] x;
  wire [P*W+10:0] i_payload = {{x, d}};
  wire [P*W:0] o_payload;
  wire i_ready, o_valid, error;
  {TOP} dut(.clk(clk), .rst(rst), .i__payload(i_payload), .i__valid(i_valid),
    .i__ready(i_ready), .o__payload(o_payload), .o__valid(o_valid),
    .o__ready(o_ready), .error(error));
  integer fin, fexp, fcyc, n, passed, failed, cycles, want_cycles, k, beat, out_beat;
  integer t, t0, t_last, wrong, chunks, lane, status;
  reg [1023:0] inputs_file, expected_file, cycles_file;
  reg [W-1:0] elems [0:1023];
  reg [W-1:0] want [0:1023];
  reg [W-1:0] got [0:1023];
  reg done;

{testbench_common(f)}    if (!$value$plusargs("cycles=%s", cycles_file)) cycles_file = "cycles.txt";
    fcyc = $fopen(cycles_file, "r");
    if (fcyc == 0) begin
      $display("cannot open %0s", cycles_file);
      $finish;
    end
    passed = 0; failed = 0; n = 0; cycles = -1;
    rst = 1; i_valid = 0; o_ready = 1; d = 0; x = 0;
    tick; rst = 0;
    while (!$feof(fin)) begin
      if ($fscanf(fin, "%d\\n", d) == 1) begin
        for (k = 0; k < d; k = k + 1) status = $fscanf(fin, "%h\\n", elems[k]);
        status = $fscanf(fcyc, "%d\\n", want_cycles);
        if ($fscanf(fexp, "%d\\n", k) != 1 || k != d || status != 1) begin
          $display("the expected files end or disagree at vector %0d", n);
          $finish;
        end
        for (k = 0; k < d; k = k + 1) status = $fscanf(fexp, "%h\\n", want[k]);
        chunks = (d + P - 1) / P;
        beat = 0; out_beat = 0; t = 0; t0 = -1; t_last = -1; done = 0;
        while (!done && t < 100000) begin
          i_valid = beat < chunks;
          for (lane = 0; lane < P; lane = lane + 1)
            x[lane*W +: W] = (beat * P + lane < d) ? elems[beat * P + lane] : 0;
          #1;
          if (i_valid && i_ready) begin
            if (t0 < 0) t0 = t;
            beat = beat + 1;
          end
          if (o_valid) begin
            for (lane = 0; lane < P; lane = lane + 1)
              if (out_beat * P + lane < d) got[out_beat * P + lane] = o_payload[lane*W +: W];
            out_beat = out_beat + 1;
            if (o_payload[P*W]) begin done = 1; t_last = t; end
          end
          #4 clk = 1;
          #5 clk = 0;
          t = t + 1;
        end
        i_valid = 0;
        cycles = t_last - t0;
        wrong = 0;
        for (k = 0; k < d; k = k + 1)
          if (!(got[k] === want[k] || (is_nan(want[k]) && is_nan(got[k])))) begin
            if (wrong < 3) $display("  element %0d: %h, expected %h", k, got[k], want[k]);
            wrong = wrong + 1;
          end
        if (wrong == 0 && done && cycles == want_cycles) begin
          passed = passed + 1;
          $display("vector %0d d=%0d cycles=%0d ok", n, d, cycles);
        end else begin
          failed = failed + 1;
          $display("vector %0d d=%0d cycles=%0d FAIL (%0d wrong elements, %0d cycles expected)",
            n, d, cycles, wrong, want_cycles);
        end
        n = n + 1;
      end
    end
{TESTBENCH_END.replace('    $display("cycles=%0d", cycles);' + chr(10), "")}"""


def write_unit(
    out: str | Path,
    cfg,
    *,
    dims=(64, 128, 768, 1000, 1024),
    vectors: int = 8,
    inputs: str | Path | None = None,
    seed: int = 0,
    synthesis: bool = True,
) -> tuple[list[Path], dict]:
    """Write the unit's Verilog, testbench, vectors, cycles and README into
    ``out``; ``inputs``: a .npy file of rows (n, d) to run instead of the
    generated rows (``vectors`` of each d in ``dims``). Returns the files and
    a report (the configuration, the cycles per d, the gate count)."""
    cfg = get_preset(cfg)
    if inputs is not None:
        rows = np.load(inputs)
        if rows.ndim != 2:
            raise ValueError(f"--inputs must hold a 2-D array of rows, got shape {rows.shape}")
        check_d(rows.shape[1])
        groups = [torch.from_numpy(rows.astype(np.float64))]
    else:
        if not isinstance(vectors, int) or vectors < 1:
            raise ValueError(f"the number of vectors must be positive, got {vectors!r}")
        groups = [unit_rows(check_d(d), cfg.fmt, vectors, seed + d) for d in dims]
    out = output_dir(out)
    unit = NormUnit(cfg)  # after every check of the arguments: a built unit is used
    text_in, text_want, text_cycles, cycles_by_d = [], [], [], {}
    for rows in groups:
        bits, want, cycles = unit_vectors(cfg, rows)
        d = rows.shape[1]
        cycles_by_d[d] = cycles
        for r in range(rows.shape[0]):
            text_in.append(_vector_lines(d, bits[r], unit.fmt.width))
            text_want.append(_vector_lines(d, want[r], unit.fmt.width))
            text_cycles.append(f"{cycles}\n")
    report = {
        "unit": TOP,
        "config": cfg.summary(),
        "cycles": cycles_by_d,
        "vectors": len(text_cycles),
    }
    files = {
        f"{TOP}.v": verilog(unit, TOP),
        "tb.v": testbench(unit),
        "inputs.hex": "".join(text_in),
        "expected.hex": "".join(text_want),
        "cycles.txt": "".join(text_cycles),
        "README.md": _readme(unit, report),
    }
    written = []
    for name, text in files.items():
        (out / name).write_text(text)
        written.append(out / name)
    if synthesis:
        from .synth import synthesize

        report["synthesis"] = synthesize(out / f"{TOP}.v", TOP, memories=True)
        report["synthesis"]["buffer_bits"] = unit.buffer_bits
        written.append(out / "synthesis.log")
    name = "synthesis.json" if synthesis else "report.json"
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    written.append(out / name)
    return written, report


def _readme(unit: NormUnit, report: dict) -> str:
    cfg, f = unit.cfg, unit.fmt
    p, w = cfg.lanes, f.width
    cycles = ", ".join(f"d={d}: {c}" for d, c in report["cycles"].items())
    return f"""# {TOP}: {cfg.name}

{cfg.description or "A normalization unit."}

Configuration: {", ".join(f"{k}={v!r}" for k, v in cfg.summary().items() if k != "description")}.

The output is bit for bit `iterl2norm.hw.reference(x, cfg)`, x / ||x|| in
{cfg.fmt}, and the latency is `iterl2norm.hw.simulate(x, cfg).cycles` ({cycles}),
counted from the cycle the first beat is taken to the cycle the last output
beat is valid.

Ports (valid/ready streams; `clk`, `rst` synchronous, active high):

- `i__payload` [{p * w + 10}:0] in: bits 10:0 are d (read from a vector's first
  beat, 64..1024), then P = {p} elements of {w} bits, lane 0 lowest; ceil(d/P)
  beats make a vector, lanes past d in the last beat are ignored.
  `i__valid` in, `i__ready` out.
- `o__payload` [{p * w}:0] out: P outputs, lane 0 lowest, then bit {p * w}, the
  vector's last beat (whose lanes past d are zero). `o__valid` out,
  `o__ready` in; the output pass holds while `o__ready` is low.
- `error` out: a first beat whose d is outside 64..1024 is dropped and
  raises `error` until the next good first beat.

Run the testbench ({report["vectors"]} vectors, expected outputs and cycles from the library):

    iverilog -g2012 -o sim *.v && vvp sim

It prints `vector I d=D cycles=C ok` (or `FAIL`) per vector and
`N passed, M failed`; `vvp sim +inputs=FILE +expected=FILE +cycles=FILE`
runs others (`iterl2norm rtl unit --inputs rows.npy` writes them for your rows).

`synthesis.json` (unless `--no-synthesis`): the unit mapped to generic CMOS
gates by Yosys (the flow of `iterl2norm rtl op`); the vector buffer is
counted as the memory bits Yosys reports, apart from the logic.
"""
