"""Verilog, a self-checking testbench and test vectors for the normalization
unit ``iterl2norm_unit`` (:mod:`iterl2norm.hw.rtl.unit`).

:func:`write_unit` writes into a directory ``iterl2norm_unit.v``, ``tb.v``
(module ``tb``, :mod:`.protocol`'s), ``inputs.hex`` (the stimulus: for an
affine unit, before each vector ``params D`` and d lines ``G B``, the bits
of sqrt(d) gamma and beta it loads; each vector ``vector D 0 0`` and its d
elements' bit patterns, one a line), ``expected.hex`` (``hw.reference``'s
outputs, one a line), ``cycles.txt`` (``hw.simulate``'s latency for each
vector, which the testbench checks when run ``+gapless``), a README and
``report.json`` (:mod:`.bundle`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model.config import check_d, get_preset
from ..rtl.unit import NormUnit
from .bundle import output_dir, write_bundle
from .export import hex_lines, verilog
from .protocol import Params, Ports, Transactions, Vector, stimulus_text, verilog_testbench
from .vectors import unit_params, unit_rows, unit_vectors

__all__ = ["write_unit"]

TOP = "iterl2norm_unit"


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
    items, expected, cycles_by_d, cycles = [], [], {}, []
    for rows in groups:
        d = rows.shape[1]
        gamma = beta = stored = None
        if given is not None:
            gamma, beta = (torch.from_numpy(v.astype(np.float64)) for v in given)
            stored = unit_params(cfg, d, gamma=gamma, beta=beta)[2]
        elif cfg.affine:
            gamma, beta, stored = unit_params(cfg, d, seed + d)
        bits, want, latency = unit_vectors(cfg, rows, gamma, beta)
        cycles_by_d[d] = latency
        for r in range(rows.shape[0]):
            if stored is not None:
                items.append(Params(*stored))
            items.append(Vector(bits[r]))
            expected.append(want[r])
            cycles.append(latency)
    transactions = Transactions(tuple(items))
    ports = Ports.of(unit)
    report = {"unit": TOP, "config": cfg.summary(), "cycles": cycles_by_d, "vectors": len(cycles)}
    title = f"{cfg.name}: {cfg.fmt}, P={cfg.lanes}"
    files = {
        f"{TOP}.v": verilog(unit, TOP),
        "tb.v": verilog_testbench(ports, TOP, title, transactions, verbose=True),
        "inputs.hex": stimulus_text(transactions, ports),
        "expected.hex": hex_lines(np.concatenate(expected), unit.fmt.width),
        "cycles.txt": "".join(f"{c}\n" for c in cycles),
        "README.md": _readme(unit, report),
    }

    def gates(directory: Path) -> tuple[dict, list[Path]]:
        from .unit_synthesis import unit_synthesis

        found = unit_synthesis(directory / f"{TOP}.v", TOP)
        found["buffer_bits"] = unit.buffer_bits
        return found, [directory / "synthesis_input.v", directory / "synthesis.log"]

    return write_bundle(out, files, report, gates if synthesis else None)


def _readme(unit: NormUnit, report: dict) -> str:
    cfg, f = unit.cfg, unit.fmt
    p, w = cfg.lanes, f.width
    cycles = ", ".join(f"d={d}: {c}" for d, c in report["cycles"].items())
    params_port, cli_params = "", ""
    if cfg.affine:
        params_port = f"""- `params__payload` [{2 * p * w}:0] in: bit 0 marks a vector's first word,
  then P = {p} values of sqrt(d) gamma, then P of beta, {cfg.fmt} bits, lane 0
  lowest; ceil(d/P) words, the first one flagged, loaded while no vector is
  in the unit (`params__ready` is low from a vector's first beat to its last
  output). They stay for every later vector until loaded again.
  `params__valid` in, `params__ready` out. The testbench loads them (the
  `params` records of `inputs.hex`) before each vector, outside its cycles.
"""
        cli_params = " --params gamma_beta.npy"
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

It streams the vectors, each offered while the unit is still busy with the
one before, with the input gapped and the output stalled at random
(`+gaps=N +stalls=N` out of 65536, `+seed=S`), checks every output bit
(NaNs included) and prints `vector I d=D first=T cycles=C ok` (or `FAIL`)
per vector and `N passed, M failed`; `vvp sim +gapless` turns the gaps and
stalls off and also checks each vector's latency against `cycles.txt`.
`vvp sim +inputs=FILE +expected=FILE +cycles=FILE` runs others
(`iterl2norm rtl unit --inputs rows.npy{cli_params}` writes them for your rows).

`report.json`: the configuration, the cycles per d and (unless
`--no-synthesis`, under "synthesis") the unit mapped to generic CMOS gates
by Yosys module by module (`synthesis_input.v`: this Verilog with identical
modules merged, each mapped once), with the transistors, NAND2 equivalents
and flip-flops of each block (lanes, reduction, scalar unit, output,
control); the memories (the vector buffer, the affine constants, the 1/d
table) are counted in bits, apart from the logic.
"""
