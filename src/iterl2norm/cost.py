"""What each method spends per vector, beyond the work every method shares.

Every method shares the pre-scaling, the sum of squares, the exponent split
and (except vector mode) one final scaling of the d outputs. What differs is
how r ~ q**-0.5 is obtained; this module counts those operations, as the
code in ``rsqrt.py`` and ``_pipeline.py`` performs them, so methods can be
compared at equal cost. ``tests/test_cost.py`` checks every count against
the number of rounded operations the emulation actually performs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .methods import method_name
from .rsqrt import Op, iteration_ops
from .schedules import Iteration, euler_iteration, fisr_iteration, schedule_iteration

__all__ = ["Cost", "estimate_cost", "iteration_cost"]


@dataclass(frozen=True)
class Cost:
    """Operation counts per vector.

    Args:
        multiplies: floating-point multiplications.
        adds: floating-point additions and subtractions.
        pow2_scalings: multiplications by a power of two (an exponent add in
            hardware, e.g. an update rate of 1/2).
        integer_ops: integer operations on bit patterns (the magic-constant start).
        compares: mantissa comparisons (the exponent+mantissa start).
        table_entries: constants a table start keeps in ROM.
        sqrts, divides: square roots and divisions (the exact method only).
    """

    multiplies: int = 0
    adds: int = 0
    pow2_scalings: int = 0
    integer_ops: int = 0
    compares: int = 0
    sqrts: int = 0
    divides: int = 0
    table_entries: int = 0  # constants held in ROM (a table start)

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            *(a + b for a, b in zip(vars(self).values(), vars(other).values(), strict=True))
        )

    def __mul__(self, n: int) -> Cost:
        return Cost(*(a * n for a in vars(self).values()))


def _is_pow2(value: float) -> bool:
    mantissa, _ = math.frexp(value)
    return value > 0 and mantissa == 0.5


_INIT_COST = {
    "exponent": Cost(),  # a_0 = 1: the exponent split is shared
    "exponent+mantissa": Cost(compares=1),
    "magic": Cost(integer_ops=2),  # shift, subtract
}


def _times(c: float) -> Cost:
    """A product with a constant: a shift when it is a power of two."""
    return Cost(pow2_scalings=1) if _is_pow2(c) else Cost(multiplies=1)


def _op_cost(op: Op) -> Cost:
    if op.kind != "mul":
        return Cost(adds=1)
    constant = next((v for v in (op.a, op.b) if not isinstance(v, str)), None)
    return Cost(multiplies=1) if constant is None else _times(constant)


def iteration_cost(iteration: Iteration) -> Cost:
    """The start and the steps of a scalar iteration (iterl2norm.schedules.Iteration),
    each operation of rsqrt.step_ops counted."""
    if iteration.start == "table":  # c0 - c1 * qn
        table = sum(len(row) * 2 for row in iteration.table)
        start = Cost(multiplies=1, adds=1, table_entries=table)
    else:
        start = _INIT_COST[iteration.start]
    ops = [op for step in iteration_ops(iteration.steps) for op in step]
    return start + sum((_op_cost(op) for op in ops), Cost())


def _vector_step(rate: float, d: int) -> Cost:
    # |z|^2: d squares and d-1 adds; 1 - w; lambda*e; g*z_i and z_i + ..., d each.
    return Cost(multiplies=2 * d, adds=(d - 1) + 1 + d) + _times(rate)


def schedule_cost(name: str, steps: int) -> Cost:
    """A named schedule's start and ``steps`` steps (iterl2norm.schedules)."""
    return iteration_cost(schedule_iteration(name, steps))


def estimate_cost(
    method: str,
    steps: int,
    *,
    init: str = "exponent",
    update_rate: float | Sequence[float] = 0.5,
    mode: str = "scalar",
    d: int | None = None,
    schedule: str | None = None,
) -> Cost:
    """Operations ``method`` spends per vector beyond the shared work.

    ``method`` is ``"iterl2norm"``, ``"fisr"``, ``"invsqrt2"``, ``"sqrt23"`` or
    ``"exact"``. Vector mode (``mode="vector"``) also needs ``d``: each of its
    steps reduces and rescales the whole vector, and it has no final scaling
    (its d initial multiplies z_0 = vs * a_0 take that place). ``schedule``
    (IterL2Norm only) names a preset of :mod:`iterl2norm.schedules`.

    >>> estimate_cost("iterl2norm", 5).multiplies, estimate_cost("fisr", 1).multiplies
    (15, 3)
    >>> estimate_cost("iterl2norm", 2, schedule="table")
    Cost(multiplies=7, adds=5, pow2_scalings=2, integer_ops=0, compares=0, sqrts=0, divides=0, table_entries=32)
    """  # noqa: E501
    method = method_name(method)
    rates = tuple(update_rate) if isinstance(update_rate, Sequence) else (update_rate,) * steps
    if method == "iterl2norm" and schedule is not None:
        return schedule_cost(schedule, steps)
    if method == "iterl2norm":
        if mode == "vector":
            if d is None:
                raise ValueError("vector mode's cost depends on d; pass d")
            return _INIT_COST[init] + sum((_vector_step(r, d) for r in rates), Cost())
        return iteration_cost(euler_iteration(init, rates))
    if method in ("fisr", "invsqrt2"):  # the constants k do not change the count
        return iteration_cost(fisr_iteration(steps))
    if method == "sqrt23":
        # Step 1: qn*r, *r, c*(k2 + c), r*(k1 + ...); later: h*r, *r, r*(0.5 - t), r + ...
        first = Cost(multiplies=4, adds=2) if steps >= 1 else Cost()
        later = (
            Cost(pow2_scalings=1) + Cost(multiplies=3, adds=2) * (steps - 1)
            if steps >= 2
            else Cost()
        )
        return _INIT_COST["magic"] + first + later
    # exact: sqrt(qn), then d divisions in place of the final scaling.
    if d is None:
        raise ValueError("the exact method divides every element; pass d")
    return Cost(sqrts=1, divides=d)
