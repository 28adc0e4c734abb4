"""docs/HARDWARE.md's unit tables are what scripts/unit_table.py renders from
the committed measurements: a figure edited by hand, or a measurement
committed without regenerating the tables, fails here."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

from script_support import load_script

ROOT = Path(__file__).resolve().parents[1]


def test_hardware_md_tables_match_the_measurements():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert load_script("unit_table").print_tables() == 0
    text = (ROOT / "docs" / "HARDWARE.md").read_text()
    marked = re.search(r"<!-- unit table -->\n(.*?)<!-- /unit table -->", text, re.S)
    assert marked, "docs/HARDWARE.md lost its <!-- unit table --> markers"
    assert marked[1].strip() == out.getvalue().strip(), (
        "docs/HARDWARE.md's unit tables differ from the measurements: run "
        ".venv/bin/python scripts/unit_table.py --write docs/HARDWARE.md"
    )
