"""Argument types and checks shared by the ``iterl2norm`` sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def check_output_path(path: str | Path | None) -> None:
    """Raise if ``path``'s directory is missing: fail before minutes of work, not after."""
    if path and not Path(path).resolve().parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: its directory does not exist")
