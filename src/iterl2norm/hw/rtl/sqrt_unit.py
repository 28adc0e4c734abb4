"""The exact method's scalar unit ``iterl2norm_sqrt``: q -> (rnd(sqrt(qn)), j)
with q = qn * 2**(2j), the square root rounded once to the datapath format,
as the hardware model's ``sqrt`` operation (:mod:`iterl2norm.hw.simulator`).

The root is the integer square root of qn's significand, scaled, by the
restoring digit recurrence (two radicand bits a step, p + 2 root bits and
the remainder's sticky bit), unrolled: one root per vector needs no
pipeline, so the root is combinational on the held q and the result is
presented after the model's latency, ``exp_latency + sqrt_latency`` cycles
from the cycle q is taken. The per-lane divisions by the root, with 2**-j
folded in, are the output's (:class:`~.fp.FpDiv`).

Ports (``amaranth.lib.stream``, valid/ready): ``i`` takes q (``q_fmt``),
``o`` gives ``{root, j}``. For q that is not positive and finite the split
iterates on qn = 1 (the unit replaces those rows' outputs). The unit holds
one q at a time: ``i.ready`` is high while it is idle; ``o`` holds its
result until taken.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from ...formats import get_format
from .expo import ExponentSplit
from .fp import FpFormat, Unpacked, round_pack

__all__ = ["SqrtUnit", "square_root"]


def square_root(m: Module, f: FpFormat, bits, name: str) -> Signal:
    """rnd(sqrt(x)) for ``bits``, a positive finite x of ``f``, rounded once."""
    x = Unpacked(m, f, bits, name)
    p = f.precision
    # x = S 2**e with e made even: sqrt(x) = sqrt(S 2**(2u)) 2**(e/2 - u),
    # and u = ceil((p + 3) / 2) gives the integer root at least p + 2 bits.
    u = (p + 4) // 2
    odd = x.exp[0]
    width = p + 1 + 2 * u
    width += width % 2
    radicand = Signal(width, name=f"{name}_radicand")
    m.d.comb += radicand.eq(Mux(odd, x.sig << (2 * u + 1), x.sig << (2 * u)))
    rem, root = Const(0, 1), Const(0, 1)
    for step in range(width // 2):
        brought = Cat(radicand[width - 2 * step - 2 : width - 2 * step], rem)  # 4 rem + 2 bits
        trial = Cat(Const(1, 2), root)  # 4 root + 1
        take = Signal(name=f"{name}_digit{step}")
        left = Signal(step + 3, name=f"{name}_rem{step}")  # at most 2 root
        m.d.comb += [take.eq(brought >= trial), left.eq(Mux(take, brought - trial, brought))]
        rem, root = left, Cat(take, root)
    exp = Signal(f.exp_shape, name=f"{name}_exp")
    m.d.comb += exp.eq(((x.exp - odd) >> 1) - u - 1)
    return round_pack(m, f, Const(0, 1), exp, Cat(rem != 0, root), f"{name}_root")


class SqrtUnit(wiring.Component):
    """q (``q_fmt``) -> {root, j}: rnd(sqrt(qn)) in ``fmt`` and the split's j."""

    def __init__(
        self,
        fmt,
        q_fmt=None,
        *,
        exp_latency: int = 1,
        sqrt_latency: int = 12,
        trace: bool = False,
    ):
        try:
            self.fmt = FpFormat.of(fmt)
            self.q_fmt = FpFormat.of(q_fmt if q_fmt is not None else fmt)
            if not get_format(self.q_fmt.name).holds(get_format(self.fmt.name)):
                raise ValueError(
                    f"q_fmt={self.q_fmt.name!r} does not hold fmt={self.fmt.name!r}: q is a "
                    "sum of the datapath's squares, in a format at least as wide"
                )
            for key, value in (("exp_latency", exp_latency), ("sqrt_latency", sqrt_latency)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise ValueError(f"{key} must be an integer >= 0, got {value!r}")
            if exp_latency + sqrt_latency < 1:
                raise ValueError("exp_latency + sqrt_latency must be at least 1 cycle")
            self.split = ExponentSplit(self.q_fmt.name, 0, to=self.fmt.name)
        except ValueError:
            self._MustUse__silence = True
            raise
        self.cycles = exp_latency + sqrt_latency
        self.exp_latency = exp_latency
        # A simulation probe: the split (unit "exp") and the root ("sqrt") issue.
        self.trace = (
            {u: Signal(range(2), name=f"trace_{u}") for u in ("exp", "sqrt")} if trace else None
        )
        result = data.StructLayout({"root": self.fmt.width, "j": self.q_fmt.exp_shape})
        super().__init__(
            {"i": In(stream.Signature(self.q_fmt.width)), "o": Out(stream.Signature(result))}
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.split = split = self.split
        q = Signal(self.q_fmt.width, name="q")
        busy = Signal(name="busy")
        cycle = Signal(range(self.cycles + 1), name="cycle")
        m.d.comb += self.i.ready.eq(~busy)
        with m.If(~busy):
            with m.If(self.i.valid):
                m.d.sync += [q.eq(self.i.payload), busy.eq(1), cycle.eq(1)]
        with m.Elif(cycle != self.cycles):
            m.d.sync += cycle.eq(cycle + 1)
        with m.Elif(self.o.ready):
            m.d.sync += [busy.eq(0), cycle.eq(0)]
        m.d.comb += [
            split.q.eq(q),
            self.o.valid.eq(busy & (cycle == self.cycles)),
            self.o.payload.root.eq(square_root(m, self.fmt, split.qn, "qn")),
            self.o.payload.j.eq(split.j),
        ]
        if self.trace is not None:
            # The split is issued as q is taken, the root exp_latency cycles later.
            at = lambda c: (~busy & self.i.valid) if c == 0 else (busy & (cycle == c))  # noqa: E731
            m.d.comb += [
                self.trace["exp"].eq(at(0)),
                self.trace["sqrt"].eq(at(self.exp_latency)),
            ]
        return m
