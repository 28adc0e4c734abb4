"""Running the command line as a user would: in this process, or in a fresh one."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

from iterl2norm.cli import main


def run_here(argv: Sequence[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``iterl2norm *argv`` run by :func:`main` in this
    process: its return value, or the status of argparse's SystemExit. An
    exception escaping main fails the calling test, as its traceback would."""
    capsys.readouterr()  # drop what earlier calls printed
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = exc.code
    return status, capsys.readouterr().err


def run_fresh(argv: Sequence[str], cwd=None) -> tuple[int, str]:
    """(exit status, stderr) of ``python -m iterl2norm.cli *argv`` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-m", "iterl2norm.cli", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stderr
