"""The one writer of the Verilog bundles (``iterl2norm rtl op | rsqrt |
sqrt-divide | unit``): the files into a directory, the gate count when asked
for, and the report, always ``report.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

__all__ = ["REPORT", "output_dir", "write_bundle"]

REPORT = "report.json"


def output_dir(out: str | Path) -> Path:
    """``out``, made if missing; a ValueError if it is a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_bundle(
    out: str | Path,
    files: dict[str, str],
    report: dict,
    synthesis: Callable[[Path], tuple[dict, list[Path]]] | None = None,
) -> tuple[list[Path], dict]:
    """Write ``files`` (name: text) into ``out``; with ``synthesis``, run it
    on the directory (it returns the gate count and the files it wrote) and
    keep its count as ``report["synthesis"]``; then write the report as
    ``report.json``. Returns the files written and the report."""
    out = output_dir(out)
    written = []
    for name, text in files.items():
        (out / name).write_text(text)
        written.append(out / name)
    if synthesis is not None:
        report["synthesis"], more = synthesis(out)
        written += more
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    written.append(out / REPORT)
    return written, report
