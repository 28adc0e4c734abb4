"""Argument types and checks shared by the ``iterl2norm`` sub-commands."""

from __future__ import annotations

import argparse
from pathlib import Path


def _int_at_least(text: str, least: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """A count that may be 0, such as a number of steps."""
    return _int_at_least(text, 0, "an integer >= 0")


def check_output_path(path: str | Path | None) -> None:
    """Raise if ``path``'s directory is missing: fail before minutes of work, not after."""
    if path and not Path(path).resolve().parent.is_dir():
        raise ValueError(f"cannot write {str(path)!r}: its directory does not exist")
