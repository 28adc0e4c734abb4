"""Cycle-by-cycle simulation of one normalization unit.

Every arithmetic operation of the unit is issued, one at a time, on a
pipelined functional unit: at the first cycle when its operands are ready and
the unit has a free issue slot (each instance takes one operation per cycle
and returns its result ``latency`` cycles later). The values are computed as
they are issued, with the unit's rounding, so the same run gives the output
bits and the cycle count; stalls (an accumulator slot still busy, a shared
scalar unit) appear by themselves. All rows of a batch run in lockstep: the
schedule does not depend on the data.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from ... import rsqrt
from ..._pipeline import row_exponent
from ...schedules import start_estimate
from . import schedule
from .config import UnitConfig, check_d
from .reference import affine_constants, arithmetic, scaled_product, scaled_quotient


@dataclass
class Value:
    data: torch.Tensor  # (rows,)
    ready: int  # first cycle at which it can be used


@dataclass
class SimResult:
    """What one simulation produced."""

    out: torch.Tensor  # (rows, d) float64 values of the datapath format
    cycles: int  # total latency, from the first read to the last output
    stages: dict[str, int]  # cycles spent in each stage, in order; they add up to cycles
    ops: dict[str, int]  # operations issued, by kind
    trace: list[dict] | None = field(default=None)  # per cycle: {unit: operations issued}


class Machine:
    """The functional units of a configuration, and the issue bookkeeping."""

    def __init__(self, cfg: UnitConfig, rows: int):
        self.cfg, self.rows = cfg, rows
        self.ar = arithmetic(cfg)
        self.units = schedule.units(cfg)
        self.ops: Counter = Counter()

    def const(self, value) -> Value:
        return Value(torch.full((self.rows,), float(value), dtype=self.ar.carrier), 0)

    def op(self, unit: str, kind: str | None, fn, *args: Value) -> Value:
        """Issue ``fn`` on ``unit`` once its operands are ready; count it as ``kind``."""
        ready = max((a.ready for a in args), default=0)
        u = self.units[unit]
        start = u.issue(ready)
        if kind:
            self.ops[kind] += 1
        return Value(fn(*(a.data for a in args)), start + u.latency)

    def free(self, data: torch.Tensor, ready: int, kind: str | None = None) -> Value:
        """A result that costs no unit time (an exponent offset folded into the
        next operation, a register load); counted if ``kind``."""
        if kind:
            self.ops[kind] += 1
        return Value(data, ready)

    # Streams and reductions -------------------------------------------------------

    def read(self, x: torch.Tensor, start: int) -> list[Value]:
        """The d elements, P per cycle from cycle ``start``."""
        p = self.cfg.lanes
        out = []
        for c in range(-(-x.shape[1] // p)):
            cycle = self.units["read"].issue(start + c)
            out += [Value(x[:, i], cycle + 1) for i in range(c * p, min((c + 1) * p, x.shape[1]))]
        return out

    def reduce(self, values: list[Value], stream: str) -> Value:
        """The sum in the unit's order (:mod:`.schedule`), issued on the stream's units."""
        cfg, ar = self.cfg, self.ar
        p = cfg.lanes
        zero = lambda ready: self.free(torch.zeros(self.rows, dtype=ar.carrier), ready)  # noqa: E731

        def on(unit: str, per_level: bool = False):
            """Additions on ``unit`` (the lane tree: one unit per level)."""
            return lambda a, b, level=None: self.op(
                f"{unit}{level}" if per_level else unit,
                "add",
                lambda x, y: ar.rnd_acc(x + y),
                a,
                b,
            )

        chunks = [values[i : i + p] for i in range(0, len(values), p)]
        if cfg.reduction == "tree":  # per chunk, zero-padded, through the lane tree
            arrivals = []
            for chunk in chunks:
                arrived = max(v.ready for v in chunk)
                leaves = chunk + [zero(arrived) for _ in range(p - len(chunk))]
                arrivals.append(schedule.tree_sum(leaves, on(f"{stream}.tree", per_level=True)))
            lanes = [arrivals]
        else:
            lanes = [
                [chunk[lane] if lane < len(chunk) else zero(chunk[0].ready) for chunk in chunks]
                for lane in range(p)
            ]
        partials = [
            zero(0) if held is None else held
            for arrivals in lanes
            for held in schedule.slot_sums(arrivals, cfg.slots, on(f"{stream}.acc"))
        ]
        width = schedule.padded_width(len(partials))
        return schedule.tree_sum(
            partials + [zero(0) for _ in range(width - len(partials))], on(f"{stream}.final")
        )

    def run_graph(self, ops, values: dict[str, Value], evaluate) -> None:
        """Issue each :class:`~.schedule.ScalarOp` of ``ops`` in turn on its
        unit; ``evaluate(op, operands)`` gives its results (a tuple, one per
        output) from its operands' data in order (constants as the datapath
        rounds them); ``values`` holds the named values and gains the results."""
        for op in ops:
            args = [values[a] for a in op.args if isinstance(a, str)]
            ready = max((a.ready for a in args), default=0)
            if op.unit is None:
                at = ready
            else:
                u = self.units[op.unit]
                at = u.issue(ready) + u.latency
            if op.kind:
                self.ops[op.kind] += 1
            operands = [
                values[a].data if isinstance(a, str) else self.ar.const(a[1]) for a in op.args
            ]
            data = evaluate(op, operands)
            for name, value in zip(op.out, data, strict=True):
                values[name] = Value(value, at)


def _scalar(
    m: Machine, q: Value, qn_data, iteration=None, marks=None, phases=None
) -> tuple[Value | None, dict]:
    """The scalar unit's graph (:func:`.schedule.scalar_graph`) on q, its
    first ``phases`` phases (all by default): a, and the values it made;
    ``marks`` gains each phase's end."""
    ar, iteration = m.ar, iteration or m.cfg.iteration
    table = rsqrt.table_lookup(qn_data, ar, iteration.table) if iteration.start == "table" else None

    def evaluate(op, data):
        if op.block == "split":  # and the conversion of qn to the datapath: one exponent step
            return (qn_data, None, None)
        if op.block == "one":
            return (torch.ones_like(qn_data),)
        if op.block == "lut":
            return table
        if op.block == "start":
            return (start_estimate(data[0], ar, iteration),)
        if op.block == "scale":
            return (ar.rnd(data[0] * 2.0**op.shift),)
        x, y = data
        return (ar.rnd(x * y if op.block == "mul" else x + y if op.block == "add" else x - y),)

    values = {"q": q}
    for phase, ops in schedule.scalar_graph(iteration, ar)[:phases]:
        m.run_graph(ops, values, evaluate)
        if marks is not None:
            marks[phase] = values["qn" if phase == "exponent split" else "a"].ready
    return values.get("a"), values


def rsqrt_stages(
    iteration, fmt: str, mul_latency: int = 3, add_latency: int = 3, exp_latency: int = 1
) -> dict[str, int]:
    """The scalar unit alone: cycles of the exponent split, the start and each
    step for a q ready on cycle 0, as :func:`simulate` counts them; they add
    up to the unit's latency (the RTL's ``iterl2norm_rsqrt`` takes exactly that)."""
    cfg = UnitConfig(
        fmt=fmt, mul_latency=mul_latency, add_latency=add_latency, exp_latency=exp_latency
    )
    m = Machine(cfg, 1)
    q = Value(torch.ones(1, dtype=m.ar.carrier), 0)
    marks: dict[str, int] = {}
    _scalar(m, q, q.data, iteration, marks)
    return _stages(marks)


def _statistics(m: Machine, v: torch.Tensor, marks: dict):
    """(centres?, k, q, mean): the passes before the estimate. ``centres`` says
    whether y = x - mean (else y = x); y is scaled by 2^-k before squaring."""
    cfg, ar = m.cfg, m.ar
    rows, d = v.shape
    mul_acc = lambda a, b: ar.rnd_acc(a * b)  # noqa: E731
    no_k = Value(torch.zeros(rows, dtype=torch.int64), 0)
    xs = m.read(v, 0)
    if cfg.statistics == "l2":
        return (
            False,
            no_k,
            m.reduce([m.op("lane.sq", "mul", mul_acc, x, x) for x in xs], "sq"),
            None,
        )
    c = ar.const_acc(Fraction(1, d))
    s1 = m.reduce(xs, "sum")  # F values enter the accumulator exactly
    if cfg.statistics == "two-pass":
        s2 = m.reduce([m.op("lane.sq", "mul", mul_acc, x, x) for x in xs], "sq")
        values = _statistics_graph(m, {"s1": s1, "s2": s2, "inv_d": m.const(c)})
        return True, no_k, values["q"], values["mean"]
    # Three passes. The first also finds the largest exponent: an integer max
    # tree beside the adder tree (one level per cycle) and a running maximum.
    last = max(x.ready for x in xs)
    k = m.free(row_exponent(v)[0][:, 0], last + int(math.log2(cfg.lanes)) + 1)
    m.ops["exp"] += d - 1
    mean = _statistics_graph(m, {"s1": s1, "inv_d": m.const(c)})["mean"]
    marks["mean"] = mean.ready  # the second pass is "statistics": the sum of squares

    # (y 2^-k)^2: the pre-scale is an exponent offset of the square, rounded once.
    square = lambda y, k_: scaled_product(y, y, -2 * k_, ar.rnd_acc, ar)  # noqa: E731
    squares = []
    for x in m.read(v, mean.ready):
        y = m.op("lane.sub", "add", ar.sub_once, x, mean)
        squares.append(m.op("lane.sq", "mul", square, y, k))
        m.ops["exp"] += 1  # the offset's exponent addition
    return True, k, m.reduce(squares, "sq"), mean


def _statistics_graph(m: Machine, values: dict[str, Value]) -> dict[str, Value]:
    """The statistics' scalar operations (:func:`.schedule.statistics_graph`),
    rounded to the accumulator."""
    ar = m.ar

    def evaluate(op, data):
        x, y = data
        return (ar.rnd_acc(x * y if op.block == "mul" else x - y),)

    m.run_graph(schedule.statistics_graph(m.cfg.statistics), values, evaluate)
    return values


def simulate(
    x: torch.Tensor,
    cfg: UnitConfig,
    gamma: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
    trace: bool = False,
) -> SimResult:
    """Run the unit on each row of ``x`` (rows, d)."""
    d = check_d(x.shape[-1])
    m = Machine(cfg, x.shape[0])
    ar = m.ar
    v = ar.quantize(x)
    marks: dict[str, int] = {}
    centres, k, q, mean = _statistics(m, v, marks)
    marks["statistics"] = q.ready
    # Zero rows (and two-pass rows whose cancelled variance is not positive)
    # have no direction, non-finite rows no answer: fixed outputs below.
    empty = q.data <= 0
    bad = ~torch.isfinite(q.data)
    q_safe = torch.where(empty | bad, torch.ones_like(q.data), q.data)
    j = rsqrt.exponent_split(q_safe)
    # The exponent split and the conversion of qn to the datapath (one exponent-field
    # step), then the start and the steps (scalar mode), or the start alone (vector
    # mode), or nothing more (the exact method: a square root follows).
    phases = 1 if cfg.method == "exact" else 2 if cfg.mode == "vector" else None
    scalar_marks: dict[str, int] = {}
    a, values = _scalar(m, q, ar.rnd(ar.scale(q_safe, -2 * j)), marks=scalar_marks, phases=phases)
    qn = values["qn"]
    marks["initialization"] = scalar_marks.get("start", qn.ready)

    def y_of(xv: Value) -> Value:  # y = x - mean; its pre-scale 2^-k is folded into its user
        return m.op("lane.sub", "add", ar.sub_once, xv, mean) if centres else xv

    shift = -(k.data + j)  # y' r 2^-j = y r 2^-(k + j): one multiply with an exponent offset

    if cfg.mode == "vector":
        outs = _vector(m, v, y_of, shift, a, marks)
    elif cfg.method == "exact":
        root = m.op("sqrt", "sqrt", lambda q_: ar.sqrt(q_), qn)
        marks["square root"] = root.ready
        outs = [
            m.op(
                "lane.div", "div", lambda y_, r_: scaled_quotient(y_, r_, shift, ar), y_of(xv), root
            )
            for xv in m.read(v, root.ready)
        ]
    else:
        marks.update((k, v) for k, v in scalar_marks.items() if k.startswith("step "))
        outs = [
            m.op(
                "lane.mul",
                "mul",
                lambda y_, r_: scaled_product(y_, r_, shift, ar.rnd, ar),
                y_of(xv),
                a,
            )
            for xv in m.read(v, a.ready)
        ]
    if cfg.affine:
        g, b = affine_constants(d, gamma, beta, ar)
        outs = [
            m.op(
                "affine.add",
                "add",
                lambda o, bi=b[i]: ar.rnd(o + bi),
                m.op("affine.mul", "mul", lambda o, gi=g[i]: ar.rnd(o * gi), o),
            )
            for i, o in enumerate(outs)
        ]
    total = max(o.ready for o in outs)
    marks["output"] = total
    out = torch.stack([o.data for o in outs], dim=1)
    special = torch.zeros_like(out)
    if cfg.affine:  # the fixed rows take the affine path of a zero output
        special = ar.rnd(ar.rnd(special * g) + b)
    out = torch.where(empty[:, None], special, out)
    out = torch.where(bad[:, None], torch.full_like(out, float("nan")), out)
    return SimResult(
        out.to(torch.float64),
        total,
        _stages(marks),
        dict(m.ops),
        _trace(m, total) if trace else None,
    )


def _vector(m: Machine, v, y_of, shift, a0: Value, marks) -> list[Value]:
    """Vector mode: z_0 = y a_0 2^-(k + j), then per step |z|^2 and z + g z;
    each update pass is fused with the next step's squares."""
    ar = m.ar
    mul_acc = lambda a, b: ar.rnd_acc(a * b)  # noqa: E731
    first = lambda y_, a_: scaled_product(y_, a_, shift, ar.rnd, ar)  # noqa: E731
    z = [m.op("lane.mul", "mul", first, y_of(xv), a0) for xv in m.read(v, a0.ready)]
    for n in range(m.cfg.steps):
        w = m.reduce([m.op("lane.sq", "mul", mul_acc, zi, zi) for zi in z], "sq")
        e = m.op("scalar.add", "add", lambda w_: ar.rnd(1.0 - ar.rnd(w_)), w)
        g = m.op("exp", "exp", lambda e_: ar.rnd(0.5 * e_), e)
        z = [
            m.op(
                "lane.add",
                "add",
                lambda z_, h_: ar.rnd(z_ + h_),
                zi,
                m.op("lane.mul", "mul", lambda g_, z_: ar.rnd(g_ * z_), g, zi),
            )
            for zi in z
        ]
        marks[f"step {n + 1}"] = max(zi.ready for zi in z)
    return z


def _stages(marks: dict[str, int]) -> dict[str, int]:
    """Cycles between consecutive marks, in order: they add up to the total."""
    out, previous = {}, 0
    for name, cycle in marks.items():
        out[name] = cycle - previous
        previous = cycle
    return out


def _trace(m: Machine, total: int) -> list[dict]:
    per_cycle = defaultdict(dict)
    for unit in m.units.values():
        for cycle, n in unit.issued.items():
            if n:
                per_cycle[cycle][unit.name] = n
    return [per_cycle.get(c, {}) for c in range(total)]
