"""The loop the per-preset measurement scripts share: each named preset
measured in turn, a line on standard error for each, and the JSON file
rewritten after each one (presets already in it kept unless measured again),
so that a run cut short keeps what it finished."""

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
    old = json.loads(out.read_text()) if out.exists() else {"units": []}
    units = {u["preset"]: u for u in old["units"]}
    for n, name in enumerate(names, 1):
        print(f"[{n}/{len(names)}] {name}: {what} ...", file=sys.stderr, flush=True)
        try:
            units[name] = measure(name)
        except (RuntimeError, ValueError) as error:
            print(f"error: {name}: {error}".splitlines()[0], file=sys.stderr)
            return 1
        print(f"  {summary(units[name])}", file=sys.stderr, flush=True)
        ordered = [units[k] for k in PRESETS if k in units]
        report = {"environment": environment(), "tools": tools, "units": ordered}
        out.write_text(json.dumps(report, indent=1) + "\n")
    return 0
