"""The loop the per-preset measurement scripts share: each named preset
measured in turn, a line on standard error for each, and the JSON file
rewritten after each one (units already in it kept unless measured again:
a unit is its preset, lanes and flow), so that a run cut short keeps what
it finished. The file is read again before each write, so that runs of
different presets may write to it side by side; each unit carries the git
revision and date it was measured at."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from iterl2norm._env import environment
from iterl2norm.hw import PRESETS


def run_presets(
    names: list[str],
    out: Path,
    tools: dict,
    what: str,
    measure: Callable[[str], dict],
    summary: Callable[[dict], str],
) -> int:
    """``measure(name)`` each preset of ``names`` (``what`` names the step in
    the progress lines; ``summary(unit)`` is the line after it) into ``out``;
    0, or 1 with a one-line error when a measurement fails."""
    for n, name in enumerate(names, 1):
        print(f"[{n}/{len(names)}] {name}: {what} ...", file=sys.stderr, flush=True)
        try:
            unit = measure(name)
        except (RuntimeError, ValueError) as error:
            print(f"error: {name}: {error}".splitlines()[0], file=sys.stderr)
            return 1
        print(f"  {summary(unit)}", file=sys.stderr, flush=True)
        env = environment()
        unit["measured"] = {key: env[key] for key in ("git_revision", "date")}
        old = json.loads(out.read_text()) if out.exists() else {"units": []}
        units = {unit_key(u): u for u in old["units"]}
        units[unit_key(unit)] = unit
        report = {"environment": env, "tools": tools, "units": sorted(units.values(), key=order)}
        out.write_text(json.dumps(report, indent=1) + "\n")
    return 0


def unit_key(unit: dict) -> tuple:
    """What tells two measured units apart: preset, lanes and flow."""
    return unit["preset"], unit["lanes"], unit.get("flow")


def order(unit: dict) -> tuple:
    """The presets' order, then the most lanes first, then the flow."""
    return list(PRESETS).index(unit["preset"]), -unit["lanes"], unit.get("flow") or ""
