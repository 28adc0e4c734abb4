"""The scalar unit ``iterl2norm_rsqrt``: r = q**-0.5 with no division and no
square root, exactly as ``iter_rsqrt`` computes it, built from the model's
schedule (:mod:`iterl2norm.hw.model.schedule`).

One multiplier, one adder and the exponent-field blocks run the scalar
graph (``scalar_graph``: the split, the start, the operations of each step
as ``rsqrt.step_ops`` defines them) on a dependency chain, placed by the
model's issue rule (``scalar_schedule``): each operation issues at the first
cycle its operands are ready and its unit is free, so the unit takes exactly
the cycles the simulator counts for the exponent split, the start and the
steps. A cycle counter selects each unit's operands; every result lands in
a register named after its value, and an operation issued on the cycle its
operand appears reads it from the unit's output (a bypass). The final
r = a * 2**-j and the fixed results for q <= 0, inf and NaN are
combinational on the output.

Ports (``amaranth.lib.stream``, valid/ready): ``i`` takes q, ``o`` gives r.
The unit holds one q at a time: ``i.ready`` is high while it is idle; ``o``
holds its result until taken.
"""

from __future__ import annotations

import torch
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ..._arith import Arithmetic
from ..._validation import IterSettings
from ...schedules import Iteration
from ..model.schedule import Issue, scalar_schedule
from .expo import (
    ExponentSplit,
    MagicStart,
    MantissaStart,
    Pow2Scale,
    TableLookup,
    constant_bits,
    fixed_results,
)
from .fp import FpAdd, FpFormat, FpMul
from .static import StaticSchedule

__all__ = ["RsqrtUnit", "schedule"]

UNITS = ("exp", "scalar.mul", "scalar.add")  # the model's units this one builds


def schedule(
    fmt: FpFormat, iteration: Iteration, mul_latency: int, add_latency: int, exp_latency: int
) -> tuple[list[Issue], dict[str, int]]:
    """The unit's operations in issue order, as the model places them
    (:func:`iterl2norm.hw.model.schedule.scalar_schedule`), and the cycle each
    value is ready; ``a`` at the last cycle."""
    ar = Arithmetic.resolve(torch.float32, fmt.name, None)
    return scalar_schedule(iteration, ar, mul_latency, add_latency, exp_latency)


class RsqrtUnit(wiring.Component):
    """q**-0.5 as ``iter_rsqrt(q, fmt=fmt, ...)`` computes it.

    Args:
        fmt: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        iteration: the start and steps (:class:`iterl2norm.schedules.Iteration`);
            :meth:`from_settings` builds it from ``iter_rsqrt``'s arguments.
        mul_latency, add_latency, exp_latency: cycles of the multiplier, the
            adder and the exponent-field blocks (each >= 1), as in
            :class:`iterl2norm.hw.UnitConfig`.
        q_fmt: the format q arrives in, when it is not ``fmt`` (a normalization
            unit's fp32 sum of squares for a bf16 datapath): the exponent
            split rounds qn to ``fmt`` in the same cycles, as the unit model does.
        trace: add a simulation probe, :attr:`trace`: per unit of the model
            (exp, scalar.mul, scalar.add), 1 on the cycles it issues.
        unscaled: give ``{a, j}`` (r = a 2^-j) instead of r, for a user that
            folds 2^-j into its own multiply (a normalization unit's fp16
            datapath with fp32 sums, whose r may lie outside fp16); q's class
            is then the user's to handle.
    """

    def __init__(
        self,
        fmt,
        iteration: Iteration,
        *,
        mul_latency: int = 3,
        add_latency: int = 3,
        exp_latency: int = 1,
        q_fmt=None,
        trace: bool = False,
        unscaled: bool = False,
    ):
        try:
            self.fmt = FpFormat.of(fmt)
            self.q_fmt = FpFormat.of(q_fmt) if q_fmt is not None else self.fmt
            if self.q_fmt.ebits != self.fmt.ebits and not unscaled:
                raise ValueError(
                    f"q_fmt={self.q_fmt.name!r} and fmt={self.fmt.name!r} have different "
                    "exponent widths: r = a 2^-j may not fit fmt (unscaled=True gives a and j)"
                )
            for name, value in (
                ("mul_latency", mul_latency),
                ("add_latency", add_latency),
                ("exp_latency", exp_latency),
            ):
                if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                    raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
            if not isinstance(iteration, Iteration):
                raise TypeError(f"iteration must be an Iteration, got {iteration!r}")
        except (TypeError, ValueError):
            self._MustUse__silence = True  # a rejected design is not an unused one
            raise
        self.iteration = iteration
        self.latencies = {"mul": mul_latency, "add": add_latency, "exp": exp_latency}
        issues, self.ready = schedule(self.fmt, iteration, mul_latency, add_latency, exp_latency)
        # The exponent start's a_0 = 1 is no operation: the constant, read where
        # no operation has written a yet.
        self.issues = [x for x in issues if x.block != "one"]
        self.cycles = self.ready["a"]
        # A simulation probe: operations issued this cycle per unit of the model.
        self.trace = None
        if trace:
            self.trace = {u: Signal(range(2), name=f"trace_{u}") for u in UNITS}
        self.unscaled = unscaled
        w = self.fmt.width
        result = data.StructLayout({"a": w, "j": self.q_fmt.exp_shape}) if unscaled else w
        super().__init__(
            {"i": In(stream.Signature(self.q_fmt.width)), "o": Out(stream.Signature(result))}
        )

    @classmethod
    def from_settings(
        cls,
        fmt,
        *,
        steps: int = 5,
        init: str = "exponent",
        update_rate=0.5,
        schedule: str | None = None,
        **latencies,
    ) -> RsqrtUnit:
        """The unit for ``iter_rsqrt(q, fmt=fmt, steps=..., init=..., update_rate=...,
        schedule=...)``."""
        settings = IterSettings(
            steps=steps, init=init, update_rate=update_rate, schedule=schedule, fmt=fmt
        )
        return cls(fmt, settings.iteration, **latencies)

    def elaborate(self, platform) -> Module:
        m, f = Module(), self.fmt
        lat = self.latencies
        blocks = {
            "split": ExponentSplit(self.q_fmt.name, lat["exp"], to=f.name),
            "mul": FpMul(f.name, lat["mul"]),
            "add": FpAdd(f.name, lat["add"]),
        }
        start = self.iteration.start
        if start == "exponent+mantissa":
            blocks["start"] = MantissaStart(f.name, lat["exp"])
        elif start == "magic":
            blocks["start"] = MagicStart(f.name, self.iteration.magic_for(f.name), lat["exp"])
        elif start == "table":
            blocks["lut"] = TableLookup(f.name, self.iteration.table, lat["exp"])
        if any(x.block == "scale" for x in self.issues):
            blocks["scale"] = Pow2Scale(f.name, lat["exp"])
        for name, block in blocks.items():
            m.submodules[name] = block

        last = self.cycles
        cycle = Signal(range(last + 1), name="cycle")
        busy, hold = Signal(name="busy"), Signal(name="hold")
        one = Const(f.bias << f.mbits, f.width)

        # The schedule: every value in a register named after it, written on
        # the cycle its producer's result is ready; operands by the cycle.
        sched = StaticSchedule(
            m,
            "r",
            self.issues,
            cycle=cycle,
            write_at=lambda c: busy & ~hold & (cycle == c),
            blocks=blocks,
            # q is there on cycle 0; the exponent start's a_0 = 1 throughout.
            sources={"q": (0, self.i.payload), "a": (None, one)},
            width=f.width,
            shapes={"j": self.q_fmt.exp_shape, "cls": 2},
            outputs={
                "split": {
                    "qn": blocks["split"].qn,
                    "j": blocks["split"].j,
                    "cls": blocks["split"].cls,
                },
                "lut": {"c0": blocks["lut"].c0, "c1": blocks["lut"].c1} if "lut" in blocks else {},
                "start": {"a": blocks["start"].a0} if "start" in blocks else {},
            },
            ports={"split": ("q",), "start": ("qn",), "lut": ("qn",), "scale": ("x",)},
            const=lambda value: Const(constant_bits(value, f), f.width),
        )
        registers, read = sched.registers, sched.read

        # The control: idle (cycle 0, taking q), busy (counting to the last
        # cycle), holding the result until the output stream takes it.
        m.d.comb += self.i.ready.eq(~busy)
        with m.If(~busy):
            with m.If(self.i.valid):
                m.d.sync += [busy.eq(1), cycle.eq(1)]
        with m.Elif(~hold & (cycle != last)):
            m.d.sync += cycle.eq(cycle + 1)
        done = busy & (cycle == last)
        m.d.comb += self.o.valid.eq(done)
        with m.If(done):
            with m.If(self.o.ready):
                m.d.sync += [busy.eq(0), hold.eq(0), cycle.eq(0)]
            with m.Else():
                m.d.sync += hold.eq(1)

        # r = a * 2**-j, or the fixed result of q's class.
        a = Mux(hold, registers.get("a", one), read("a", last))
        j = Mux(hold, registers["j"], read("j", last))
        cls = Mux(hold, registers["cls"], read("cls", last))
        if self.unscaled:  # the user folds 2^-j into its own multiply; q's class is its own
            m.d.comb += [self.o.payload.a.eq(a), self.o.payload.j.eq(j)]
        else:
            m.submodules.output = out_scale = Pow2Scale(f.name, 0)
            m.d.comb += [out_scale.x.eq(a), out_scale.k.eq(-j)]
            fixed_results(m, f, cls, out_scale.result, self.o.payload)
        if self.trace is not None:
            # Schedule cycle 0 is the cycle q is taken; cycle c > 0 is busy at c.
            at = lambda c: (~busy & self.i.valid) if c == 0 else (busy & (cycle == c))  # noqa: E731
            for unit, signal in self.trace.items():
                hits = [at(x.cycle) for x in self.issues if x.op.unit == unit]
                m.d.comb += signal.eq(Cat(*hits).any() if hits else 0)
        return m
