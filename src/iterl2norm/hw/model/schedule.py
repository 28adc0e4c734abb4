"""The unit's schedule, in one place: the issue rule, the reduction order
and the scalar operation graphs, read by the simulator (:mod:`.simulator`),
the golden model (:mod:`.reference`) and the RTL (:mod:`iterl2norm.hw.rtl`).

- **The issue rule** (:class:`Unit`): an operation issues at the first cycle
  its operands are ready and its unit has a free issue slot; a pipelined
  unit of ``count`` instances takes ``count`` operations a cycle and returns
  each result ``latency`` cycles later.
- **The reduction order** (:func:`pairwise`, :func:`slot_of`): the d values
  arrive P a cycle in C = ceil(d / P) chunks, zero-padded. With the adder
  tree, a pairwise tree reduces each chunk to one value; with one
  accumulator per lane, each lane keeps its own. Chunk c goes to slot
  c mod S of its accumulator, summed in arrival order, each slot starting
  from its first value; a pairwise tree over the slots (lane-major),
  zero-padded to a power of two, gives the total.
- **The scalar graphs** (:func:`scalar_graph`, :func:`statistics_graph`):
  the operations between the reductions and the output pass, as
  :class:`ScalarOp` lists; :func:`issue` places them by the rule, which
  gives the static schedule the RTL builds its control from.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

from ... import rsqrt
from ...schedules import Iteration

__all__ = [
    "Issue",
    "ScalarOp",
    "Unit",
    "issue",
    "padded_width",
    "pairwise",
    "scalar_graph",
    "scalar_schedule",
    "scalar_unit",
    "slot_of",
    "slot_sums",
    "statistics_graph",
    "statistics_schedule",
    "tree_sum",
    "units",
]


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


def units(cfg) -> dict[str, Unit]:
    """The functional units of a configuration: the one list the simulator
    issues on and the RTL builds (its trace probe counts by these names)."""
    p, lm, la, le = cfg.lanes, cfg.mul_latency, cfg.add_latency, cfg.exp_latency
    out = [
        Unit("read", 1, 1),  # one P-wide read per cycle
        # P lanes of each pipeline stage: centring, squares, scaling, vector-mode
        # update, affine.
        Unit("lane.sub", la, p),
        Unit("lane.sq", lm, p),
        Unit("lane.mul", lm, p),
        Unit("lane.add", la, p),
        Unit("affine.mul", lm, p),
        Unit("affine.add", la, p),
        Unit("scalar.mul", lm, 1),
        Unit("scalar.add", la, 1),
        # The statistics' own multiplier and adder (the mean, s2 - s1^2 / d).
        Unit("stats.mul", lm, 1),
        Unit("stats.add", la, 1),
        Unit("exp", le, 1),  # exponent field, integer and table operations
        Unit("sqrt", cfg.sqrt_latency, 1),
        Unit("lane.div", cfg.div_latency, p),
    ]
    for stream in ("sum", "sq"):  # two reductions can run at once (two-pass statistics)
        if cfg.reduction == "tree":
            out += [Unit(f"{stream}.tree{n}", la, p >> n) for n in range(1, p.bit_length())]
            out.append(Unit(f"{stream}.acc", la, 1))
        else:
            out.append(Unit(f"{stream}.acc", la, p))
        out.append(Unit(f"{stream}.final", la, 1))
    return {u.name: u for u in out}


# The reduction order --------------------------------------------------------------

Operand = tuple[str, int]  # ("leaf", i) or ("op", k): a leaf or the result of op k


def pairwise(width: int) -> list[tuple[Operand, Operand, int]]:
    """The pairwise tree over ``width`` leaves (a power of two), level by
    level, left to right: each addition's (left, right, level) in program
    order, levels from 1. The last addition gives the total."""
    if width < 1 or width & (width - 1):
        raise ValueError(f"a pairwise tree needs a power-of-two width, got {width!r}")
    level: list[Operand] = [("leaf", s) for s in range(width)]
    ops: list[tuple[Operand, Operand, int]] = []
    depth = 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for i in range(0, len(level), 2):
            ops.append((level[i], level[i + 1], depth))
            nxt.append(("op", len(ops) - 1))
        level = nxt
    return ops


def padded_width(leaves: int) -> int:
    """The final tree's width: ``leaves`` zero-padded to a power of two."""
    return 1 << (leaves - 1).bit_length()


def slot_of(chunk: int, slots: int) -> int:
    """The accumulator slot chunk ``chunk`` is added to."""
    return chunk % slots


def tree_sum(leaves: list, add):
    """The total of ``leaves`` (a power-of-two count) by :func:`pairwise`,
    ``add(a, b, level)`` for each addition."""
    results = []
    for left, right, level in pairwise(len(leaves)):
        a, b = ((leaves if kind == "leaf" else results)[n] for kind, n in (left, right))
        results.append(add(a, b, level))
    return results[-1] if results else leaves[0]


def slot_sums(arrivals: list, slots: int, add) -> list:
    """Each slot's sum of the values arriving in order (``None`` where no
    value arrives): the first value loads its slot, each later one is added."""
    held: list = [None] * slots
    for c, value in enumerate(arrivals):
        s = slot_of(c, slots)
        held[s] = value if held[s] is None else add(held[s], value)
    return held


# The scalar graphs -------------------------------------------------------------------


@dataclass(frozen=True)
class ScalarOp:
    """One operation of a scalar graph: ``block`` computes ``out`` from
    ``args`` (value names, or ("const", value) for a constant of the
    datapath) on ``unit`` (``None``: no unit, the result is ready with its
    operands); ``kind`` is what the simulator counts it as."""

    unit: str | None  # "exp", "scalar.mul", "scalar.add", "stats.mul", "stats.add"
    block: str  # "split", "one", "start", "lut", "scale", "mul", "add", "sub"
    out: tuple[str, ...]
    args: tuple
    kind: str | None
    shift: int = 0  # "scale": the power of two


def scalar_unit(ar, op: rsqrt.Op) -> tuple[str, str]:
    """(unit, kind) that runs ``op``: a product with a power-of-two constant
    is an exponent-field shift, other products the multiplier's, sums the adder's."""
    if op.kind != "mul":
        return "scalar.add", "add"
    constant = next((v for v in (op.a, op.b) if not isinstance(v, str)), None)
    if constant is not None and math.frexp(ar.const(constant))[0] == 0.5:
        return "exp", "exp"
    return "scalar.mul", "mul"


def scalar_graph(iteration: Iteration, ar) -> list[tuple[str, list[ScalarOp]]]:
    """The scalar unit's operations from q to a, by phase: ("exponent split",
    ...), ("start", ...), ("step 1", ...), ...; ``ar`` the datapath's
    arithmetic (its constants decide which products are shifts)."""
    phases = [("exponent split", [ScalarOp("exp", "split", ("qn", "j", "cls"), ("q",), "exp")])]
    if iteration.start == "exponent":  # a_0 = 1: the split did the work
        start = [ScalarOp(None, "one", ("a",), ("qn",), None)]
    elif iteration.start == "table":  # read (c0, c1) from ROM, then c0 - c1 qn
        start = [
            ScalarOp("exp", "lut", ("c0", "c1"), ("qn",), "lut"),
            ScalarOp("scalar.mul", "mul", ("p",), ("c1", "qn"), "mul"),
            ScalarOp("scalar.add", "sub", ("a",), ("c0", "p"), "add"),
        ]
    else:
        kind = "cmp" if iteration.start == "exponent+mantissa" else "int"
        start = [ScalarOp("exp", "start", ("a",), ("qn",), kind)]
    phases.append(("start", start))
    for n, ops in enumerate(rsqrt.iteration_ops(iteration.steps)):
        step = []
        for op in ops:
            unit, kind = scalar_unit(ar, op)
            args = tuple(v if isinstance(v, str) else ("const", v) for v in (op.a, op.b))
            if unit == "exp":  # a product with 2**k: the exponent field's shift
                value = next(v for v in (op.a, op.b) if not isinstance(v, str))
                names = tuple(a for a in args if isinstance(a, str))
                shift = math.frexp(ar.const(value))[1] - 1
                step.append(ScalarOp(unit, "scale", (op.out,), names, kind, shift))
            else:
                step.append(ScalarOp(unit, op.kind, (op.out,), args, kind))
        phases.append((f"step {n + 1}", step))
    return phases


def statistics_graph(statistics: str) -> list[ScalarOp]:
    """The statistics' scalar operations, in the accumulator format, on the
    statistics multiplier and adder: from s1 = sum(x) (and s2 = sum(x^2),
    two-pass) and 1/d to the mean (and q = s2 - s1^2 / d)."""
    mean = ScalarOp("stats.mul", "mul", ("mean",), ("s1", "inv_d"), "mul")
    if statistics == "three-pass":
        return [mean]
    if statistics == "two-pass":
        return [
            ScalarOp("stats.mul", "mul", ("p1",), ("s1", "s1"), "mul"),
            ScalarOp("stats.mul", "mul", ("p",), ("p1", "inv_d"), "mul"),
            mean,
            ScalarOp("stats.add", "sub", ("q",), ("s2", "p"), "add"),
        ]
    return []


@dataclass(frozen=True)
class Issue:
    """One operation placed by the rule: issued at ``cycle``, its result
    ready (on its block's output) at ``ready``."""

    op: ScalarOp
    cycle: int
    ready: int

    # The RTL reads these directly.
    @property
    def block(self) -> str:
        return self.op.block

    @property
    def out(self) -> tuple[str, ...]:
        return self.op.out

    @property
    def args(self) -> tuple:
        return self.op.args

    @property
    def shift(self) -> int:
        return self.op.shift


def issue(ops, units: dict[str, Unit], ready: dict[str, int]) -> list[Issue]:
    """Place ``ops`` in order by the rule, on ``units``, from the cycles
    ``ready`` gives the inputs; ``ready`` gains every result's cycle."""
    out = []
    for op in ops:
        earliest = max((ready[a] for a in op.args if isinstance(a, str)), default=0)
        if op.unit is None:
            cycle = at = earliest
        else:
            u = units[op.unit]
            cycle = u.issue(earliest)
            at = cycle + u.latency
        out.append(Issue(op, cycle, at))
        for name in op.out:
            ready[name] = at
    return out


def scalar_schedule(
    iteration: Iteration, ar, mul_latency: int, add_latency: int, exp_latency: int
) -> tuple[list[Issue], dict[str, int]]:
    """The scalar unit's operations placed for a q ready on cycle 0, and the
    cycle each value is ready (``a``: the last); the RTL's
    ``iterl2norm_rsqrt`` takes exactly these cycles."""
    units = {
        "exp": Unit("exp", exp_latency, 1),
        "scalar.mul": Unit("scalar.mul", mul_latency, 1),
        "scalar.add": Unit("scalar.add", add_latency, 1),
    }
    ready = {"q": 0}
    ops = [op for _, phase in scalar_graph(iteration, ar) for op in phase]
    return issue(ops, units, ready), ready


def statistics_schedule(statistics: str, mul_latency: int, add_latency: int) -> list[Issue]:
    """The statistics' operations placed for s1 ready on cycle 0 (and s2 on
    ``mul_latency``: its squares pass through one more multiplier; 1/d is
    there before either)."""
    units = {
        "stats.mul": Unit("stats.mul", mul_latency, 1),
        "stats.add": Unit("stats.add", add_latency, 1),
    }
    return issue(statistics_graph(statistics), units, {"s1": 0, "s2": mul_latency, "inv_d": 0})
