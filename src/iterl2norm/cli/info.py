"""``iterl2norm info``: what is installed and in use, for bug reports."""

from __future__ import annotations

import json
import platform

COMMANDS = ("info",)


def add_commands(sub) -> None:
    info = sub.add_parser(
        "info",
        help="versions, whether the compiled kernels are active, formats (for bug reports)",
        description="Print the package and torch versions, whether the compiled kernels "
        "are in use and which instruction-set variant runs, the threads and the formats.",
    )
    info.add_argument("--json", action="store_true", help="print it as JSON")


def collect() -> dict:
    import torch

    from .. import __version__, _fused
    from ..formats import FORMATS

    return {
        "iterl2norm": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        **_fused.status(),
        "threads": torch.get_num_threads(),
        "formats": list(FORMATS),
    }


def run(args, argv) -> int:
    facts = collect()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    width = max(len(k) for k in facts)
    for key, value in facts.items():
        if isinstance(value, list):
            value = ", ".join(value) if value else "-"
        if key == "kernels":
            value = {
                "compiled": "compiled (built with the package)",
                "jit": "jit (built on first use, cached)",
                "none": "none: the torch paths run, up to 100x slower "
                "(a C++ compiler lets the first import build them)",
            }[value]
        if key == "why_not" and value is None:
            continue
        print(f"{key:<{width}}  {value}")
    return 0
