"""Verilog, a self-checking testbench and test vectors for the normalization
unit ``iterl2norm_unit`` (:mod:`iterl2norm.hw.rtl.unit`).

:func:`write_unit` writes into a directory ``iterl2norm_unit.v``, ``tb.v``
(module ``tb``), ``inputs.hex`` (each vector: a line with its d in decimal,
then its d elements' bit patterns, one a line), ``expected.hex``
(``hw.reference``'s outputs, the same layout), ``params.hex`` for an affine
unit (each vector: a line with its d, then d lines ``G B``, the bits of
sqrt(d) gamma and beta the unit loads before it), ``cycles.txt``
(``hw.simulate``'s latency for each vector, which the testbench checks), a
README and the synthesis report.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..model.config import check_d, get_preset
from ..rtl.unit import NormUnit
from .export import TESTBENCH_END, output_dir, testbench_common, verilog
from .vectors import unit_params, unit_rows, unit_vectors

__all__ = ["write_unit"]

TOP = "iterl2norm_unit"


def _vector_lines(d: int, bits: np.ndarray, width: int) -> str:
    digits = (width + 3) // 4
    return f"{d}\n" + "".join(f"{int(v):0{digits}x}\n" for v in bits)


def _params_lines(d: int, gamma: np.ndarray, beta: np.ndarray, width: int) -> str:
    digits = (width + 3) // 4
    return f"{d}\n" + "".join(
        f"{int(g):0{digits}x} {int(b):0{digits}x}\n" for g, b in zip(gamma, beta, strict=True)
    )


def testbench(unit: NormUnit) -> str:
    """The testbench: each vector streamed in without gaps (an affine unit's
    constants loaded first, outside the counted cycles), its outputs taken at
    once, every element and the latency checked."""
    cfg, f = unit.cfg, unit.fmt
    p, w = cfg.lanes, f.width
    affine = cfg.affine
    params_doc = (
        "\n// +params=FILE (default params.hex): per vector a line with d, then d\n"
        '// lines "G B", the bits of sqrt(d) gamma and beta, loaded before it.'
        if affine
        else ""
    )
    params_decl = (
        "  reg p_valid, p_first;\n"
        "  reg [P*W-1:0] p_gamma, p_beta;\n"
        "  wire [2*P*W:0] p_payload = {p_beta, p_gamma, p_first};\n"
        "  wire p_ready;\n"
        "  integer fpar;\n"
        "  reg [1023:0] params_file;\n"
        "  reg [W-1:0] gam [0:1023];\n"
        "  reg [W-1:0] bet [0:1023];\n"
        if affine
        else ""
    )
    params_ports = (
        ",\n    .params__payload(p_payload), .params__valid(p_valid), .params__ready(p_ready)"
        if affine
        else ""
    )
    params_open = (
        """    if (!$value$plusargs("params=%s", params_file)) params_file = "params.hex";
    fpar = $fopen(params_file, "r");
    if (fpar == 0) begin
      $display("cannot open %0s", params_file);
      $finish;
    end
    p_valid = 0; p_first = 0; p_gamma = 0; p_beta = 0;
"""
        if affine
        else ""
    )
    params_load = (
        """        if ($fscanf(fpar, "%d\\n", k) != 1 || k != d) begin
          $display("the params file ends or disagrees at vector %0d", n);
          $finish;
        end
        for (k = 0; k < d; k = k + 1) status = $fscanf(fpar, "%h %h\\n", gam[k], bet[k]);
        for (beat = 0; beat < chunks; beat = beat + 1) begin
          p_valid = 1; p_first = beat == 0;
          for (lane = 0; lane < P; lane = lane + 1) begin
            p_gamma[lane*W +: W] = (beat * P + lane < d) ? gam[beat * P + lane] : 0;
            p_beta[lane*W +: W] = (beat * P + lane < d) ? bet[beat * P + lane] : 0;
          end
          #1;
          while (!p_ready) tick;
          #4 clk = 1;
          #5 clk = 0;
        end
        p_valid = 0;
"""
        if affine
        else ""
    )
    return f"""// Self-checking testbench for {TOP} ({cfg.name}: {cfg.fmt}, P={p}).
// Reads +inputs=FILE (default inputs.hex), +expected=FILE (default
// expected.hex) and +cycles=FILE (default cycles.txt): per vector a line
// with d, then d lines of bit patterns; one latency a line.{params_doc}
// Prints per vector "vector I d=D cycles=C ok" (or FAIL, with the first
// wrong elements), then "N passed, M failed". A NaN output passes for any
// NaN expected.
`timescale 1ns/1ps
module tb;
  localparam P = {p}, W = {w};
  reg clk = 0, rst, i_valid, o_ready;
  reg [10:0] d;
  reg [P*W-1:0] x;
  wire [P*W+10:0] i_payload = {{x, d}};
  wire [P*W:0] o_payload;
  wire i_ready, o_valid, error;
{params_decl}  {TOP} dut(.clk(clk), .rst(rst), .i__payload(i_payload), .i__valid(i_valid),
    .i__ready(i_ready), .o__payload(o_payload), .o__valid(o_valid),
    .o__ready(o_ready), .error(error){params_ports});
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
{params_open}    passed = 0; failed = 0; n = 0; cycles = -1;
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
{params_load}        beat = 0; out_beat = 0; t = 0; t0 = -1; t_last = -1; done = 0;
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
    params: str | Path | None = None,
    seed: int = 0,
    synthesis: bool = True,
) -> tuple[list[Path], dict]:
    """Write the unit's Verilog, testbench, vectors, cycles and README into
    ``out``; ``inputs``: a .npy file of rows (n, d) to run instead of the
    generated rows (``vectors`` of each d in ``dims``); ``params``: for an
    affine unit, a .npy file of (2, d), LayerNorm's gamma and beta for those
    rows (default: generated ones). Returns the files and a report (the
    configuration, the cycles per d, the gate count)."""
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
    given = None
    if params is not None:
        if not cfg.affine:
            raise ValueError(f"--params needs an affine unit; {cfg.name!r} has affine=False")
        if inputs is None:
            raise ValueError("--params goes with --inputs (the rows it belongs to)")
        given = np.load(params)
        if given.shape != (2, rows.shape[1]):
            raise ValueError(
                f"--params must hold gamma and beta as an array of shape (2, {rows.shape[1]}), "
                f"got shape {given.shape}"
            )
    out = output_dir(out)
    unit = NormUnit(cfg)  # after every check of the arguments: a built unit is used
    text = {"inputs.hex": [], "expected.hex": [], "cycles.txt": [], "params.hex": []}
    cycles_by_d = {}
    for rows in groups:
        d, w = rows.shape[1], unit.fmt.width
        gamma = beta = stored = None
        if given is not None:
            gamma, beta = (torch.from_numpy(v.astype(np.float64)) for v in given)
            stored = unit_params(cfg, d, gamma=gamma, beta=beta)[2]
        elif cfg.affine:
            gamma, beta, stored = unit_params(cfg, d, seed + d)
        bits, want, cycles = unit_vectors(cfg, rows, gamma, beta)
        cycles_by_d[d] = cycles
        for r in range(rows.shape[0]):
            text["inputs.hex"].append(_vector_lines(d, bits[r], w))
            text["expected.hex"].append(_vector_lines(d, want[r], w))
            text["cycles.txt"].append(f"{cycles}\n")
            if stored is not None:
                text["params.hex"].append(_params_lines(d, *stored, w))
    report = {
        "unit": TOP,
        "config": cfg.summary(),
        "cycles": cycles_by_d,
        "vectors": len(text["cycles.txt"]),
    }
    files = {f"{TOP}.v": verilog(unit, TOP), "tb.v": testbench(unit)}
    files.update({name: "".join(lines) for name, lines in text.items() if lines})
    files["README.md"] = _readme(unit, report)
    written = []
    for name, body in files.items():
        (out / name).write_text(body)
        written.append(out / name)
    if synthesis:
        from .unit_synthesis import unit_synthesis

        report["synthesis"] = unit_synthesis(out / f"{TOP}.v", TOP)
        report["synthesis"]["buffer_bits"] = unit.buffer_bits
        written += [out / "synthesis_input.v", out / "synthesis.log"]
    name = "synthesis.json" if synthesis else "report.json"
    (out / name).write_text(json.dumps(report, indent=2) + "\n")
    written.append(out / name)
    return written, report


def _readme(unit: NormUnit, report: dict) -> str:
    cfg, f = unit.cfg, unit.fmt
    p, w = cfg.lanes, f.width
    cycles = ", ".join(f"d={d}: {c}" for d, c in report["cycles"].items())
    params_port, plus_params, cli_params = "", "", ""
    if cfg.affine:
        params_port = f"""- `params__payload` [{2 * p * w}:0] in: bit 0 marks a vector's first word,
  then P = {p} values of sqrt(d) gamma, then P of beta, {cfg.fmt} bits, lane 0
  lowest; ceil(d/P) words, the first one flagged, loaded while no vector is
  in the unit (`params__ready` is low from a vector's first beat to its last
  output). They stay for every later vector until loaded again.
  `params__valid` in, `params__ready` out. The testbench loads `params.hex`
  before each vector, outside the counted cycles.
"""
        plus_params, cli_params = " +params=FILE", " --params gamma_beta.npy"
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
{params_port}
Run the testbench ({report["vectors"]} vectors, expected outputs and cycles from the library):

    iverilog -g2012 -o sim *.v && vvp sim

It prints `vector I d=D cycles=C ok` (or `FAIL`) per vector and
`N passed, M failed`; `vvp sim +inputs=FILE +expected=FILE +cycles=FILE{plus_params}`
runs others (`iterl2norm rtl unit --inputs rows.npy{cli_params}` writes them for your rows).

`synthesis.json` (unless `--no-synthesis`): the unit mapped to generic CMOS
gates by Yosys module by module (`synthesis_input.v`: this Verilog with
identical modules merged, each mapped once), with the transistors,
NAND2 equivalents and flip-flops of each block (lanes, reduction, scalar
unit, output, control); the memories (the vector buffer, the affine
constants, the 1/d table) are counted in bits, apart from the logic.
"""
