"""The unit's schedule: the issue rule every operation follows, shared by the
simulator (:mod:`.simulator`) and the RTL (:mod:`iterl2norm.hw.rtl`).

An operation issues at the first cycle its operands are ready and its unit
has a free issue slot; a pipelined unit of ``count`` instances takes
``count`` operations a cycle and returns each result ``latency`` cycles
later.
"""

from __future__ import annotations

import math
from collections import Counter

from ... import rsqrt

__all__ = ["Unit", "scalar_unit"]


class Unit:
    """``count`` pipelined instances with one latency."""

    def __init__(self, name: str, latency: int, count: int):
        self.name, self.latency, self.count = name, latency, count
        self.issued: Counter = Counter()

    def issue(self, earliest: int) -> int:
        cycle = earliest
        while self.issued[cycle] >= self.count:
            cycle += 1
        self.issued[cycle] += 1
        return cycle


def scalar_unit(ar, op: rsqrt.Op) -> tuple[str, str]:
    """(unit, kind) that runs ``op``: a product with a power-of-two constant
    is an exponent-field shift, other products the multiplier's, sums the adder's."""
    if op.kind != "mul":
        return "scalar.add", "add"
    constant = next((v for v in (op.a, op.b) if not isinstance(v, str)), None)
    if constant is not None and math.frexp(ar.const(constant))[0] == 0.5:
        return "exp", "exp"
    return "scalar.mul", "mul"
