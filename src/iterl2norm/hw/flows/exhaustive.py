"""Every operand pair of a 16-bit format (2^32) through an operator, against
the library: the compiled simulation (:mod:`.cxxrtl`) gives the results a row
of 65,536 at a time, and the library's rounding of the exact results (every
product and sum of two 16-bit operands is exact in float64) is compared a
block of rows at a time. NaN results match any NaN.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ...formats import decode, encode
from ..rtl.fp import FpFormat, operator
from .cxxrtl import compile_operator, exhaustive
from .vectors import library_result

__all__ = ["check_every_pair"]

ROW = 1 << 16


def _nan_mask(bits: torch.Tensor, fmt: str) -> torch.Tensor:
    return torch.isnan(decode(bits, fmt))


def check_every_pair(
    op: str,
    fmt: str,
    first: int = 0,
    count: int = ROW,
    block: int = 64,
    workdir: str | Path | None = None,
    progress=None,
) -> dict:
    """Check a = first .. first + count - 1 against every b; returns the pairs
    checked, the mismatches and up to ten of them. ``progress(n)`` is called
    after each block with the rows done."""
    if FpFormat.of(fmt).width != 16:
        raise ValueError(f"every pair is 2^32 pairs for 16-bit formats only, got {fmt!r}")
    if not (0 <= first and count >= 1 and first + count <= ROW):
        raise ValueError(f"rows {first}..{first + count - 1} are outside 0..{ROW - 1}")
    component = operator(op, fmt, 0)
    with tempfile.TemporaryDirectory() as tmp:
        binary = compile_operator(component, workdir or tmp, exhaustive=True)
        b_all = np.arange(ROW, dtype=np.int64)
        checked, failures, examples = 0, 0, []
        rows_a, rows_out = [], []

        def settle():
            nonlocal checked, failures
            a = np.repeat(np.array(rows_a, dtype=np.int64), ROW)
            b = np.tile(b_all, len(rows_a))
            got = torch.from_numpy(np.concatenate(rows_out).astype(np.int64))
            want = library_result(op, fmt, a, b)
            expected = encode(want, fmt)
            nan = torch.isnan(want)
            bad = torch.where(nan, ~_nan_mask(got, fmt), got != expected)
            failures += int(bad.sum())
            for i in torch.nonzero(bad).flatten()[: 10 - len(examples)].tolist():
                examples.append(
                    {
                        "a": f"{a[i]:#06x}",
                        "b": f"{b[i]:#06x}",
                        "result": f"{int(got[i]):#06x}",
                        "expected": f"{int(expected[i]):#06x}",
                    }
                )
            checked += len(a)
            if progress:
                progress(len(rows_a))
            rows_a.clear()
            rows_out.clear()

        for a, results in exhaustive(binary, first, count):
            rows_a.append(a)
            rows_out.append(results)
            if len(rows_a) == block:
                settle()
        if rows_a:
            settle()
    return {
        "op": op,
        "fmt": fmt,
        "rows": [first, first + count - 1],
        "pairs": checked,
        "failures": failures,
        "examples": examples,
    }
