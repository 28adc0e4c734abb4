"""The textbook alternative to the iteration, for comparison: q**-0.5 by a
correctly rounded square root and then a correctly rounded division,
``rnd(1 / rnd(sqrt(qn))) * 2**-j``, each by radix-2 digit recurrence (one
result bit per cycle, restoring), as a small iterative FPU computes them.

The unit ``iterl2norm_sqrt_divide`` has the scalar unit's ports (streams
``i`` and ``o``) and takes the exponent split apart as it does; the square
root needs p + 3 cycles for p + 2 root bits and the cycle that rounds it,
the division p + 2 for p + 2 quotient bits, and the last rounding is on the
output: 2p + 6 cycles in all (54 in fp32, 22 in bf16, 28 in fp16),
from the cycle q is taken to the cycle r is valid.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .expo import ExponentSplit, fixed_results
from .fp import FpFormat, Unpacked, round_pack

__all__ = ["SqrtDivide"]


class SqrtDivide(wiring.Component):
    """q -> rnd(1 / rnd(sqrt(qn))) * 2**-j by digit recurrence."""

    def __init__(self, fmt):
        try:
            self.fmt = FpFormat.of(fmt)
        except ValueError:
            self._MustUse__silence = True
            raise
        p = self.fmt.precision
        # p + 1 significant bits of each (p kept, a round bit; the remainder
        # gives the sticky bit), and one more: either may start a place lower.
        self.root_bits = p + 2
        self.quotient_bits = p + 2
        self.cycles = self.root_bits + 1 + self.quotient_bits + 1
        w = self.fmt.width
        super().__init__({"i": In(stream.Signature(w)), "o": Out(stream.Signature(w))})

    def elaborate(self, platform) -> Module:
        m, f = Module(), self.fmt
        p, mb = f.precision, f.mbits
        rb, qb = self.root_bits, self.quotient_bits
        m.submodules.split = split = ExponentSplit(f.name, 0)
        m.d.comb += split.q.eq(self.i.payload)

        phase = Signal(range(4), name="phase")  # 0 idle, 1 root, 2 quotient, 3 output
        count = Signal(range(max(rb, qb) + 1), name="count")
        j = Signal(f.exp_shape, name="j")
        cls = Signal(2, name="cls")
        # Square root of qn = S * 2**-(mb + odd) as an integer root of
        # N = qn * 2**(2 (rb - 1)), two bits of N a cycle from the top.
        n_bits = 2 * rb
        radicand = Signal(n_bits, name="radicand")
        rem = Signal(rb + 1, name="root_rem")  # <= 2 root
        root = Signal(rb, name="root")
        trial = Signal(rb + 3, name="root_trial")
        brought = Signal(rb + 3, name="root_brought")
        m.d.comb += [
            brought.eq(Cat(radicand[-2:], rem)),
            trial.eq(Cat(Const(1, 2), root)),  # 4 root + 1
        ]
        # Division 1 / root_rounded: restoring, the remainder shifted left.
        div_rem = Signal(p + 2, name="div_rem")
        divisor = Signal(p, name="divisor")
        div_exp = Signal(f.exp_shape, name="div_exp")
        quotient = Signal(qb, name="quotient")
        # The root, rounded once: R * 2**-(rb - 1) and the remainder's sticky bit.
        root_exp = Const(-(rb - 1) - 1, f.exp_shape)
        rounded = round_pack(m, f, Const(0, 1), root_exp, Cat(rem != 0, root), "root")
        unpacked = Unpacked(m, f, rounded, "divisor")

        m.d.comb += self.i.ready.eq(phase == 0)
        with m.Switch(phase):
            with m.Case(0):
                with m.If(self.i.valid):
                    qn = split.qn
                    odd = qn[mb : mb + f.ebits] != f.bias
                    significand = Cat(qn[:mb], Const(1, 1))
                    # N = S * 2**(2 (rb - 1) - mb - odd): an integer, as mb + 1 <= 2 (rb - 1).
                    shift = 2 * rb - 2 - mb
                    m.d.sync += [
                        radicand.eq(Mux(odd, significand << (shift - 1), significand << shift)),
                        rem.eq(0),
                        root.eq(0),
                        j.eq(split.j),
                        cls.eq(split.cls),
                        count.eq(0),
                        phase.eq(1),
                    ]
            with m.Case(1):
                with m.If(count < rb):
                    take = brought >= trial
                    m.d.sync += [
                        rem.eq(Mux(take, brought - trial, brought)),
                        root.eq(Cat(take, root)),
                        radicand.eq(radicand << 2),
                        count.eq(count + 1),
                    ]
                with m.Else():  # the rounded root becomes the divisor
                    m.d.sync += [
                        divisor.eq(unpacked.sig),
                        div_exp.eq(unpacked.exp + mb),  # root = (sig / 2**mb) * 2**div_exp
                        div_rem.eq(1 << mb),  # the numerator 1.0 in the divisor's units
                        quotient.eq(0),
                        count.eq(0),
                        phase.eq(2),
                    ]
            with m.Case(2):
                take = div_rem >= divisor
                m.d.sync += [
                    div_rem.eq(Mux(take, div_rem - divisor, div_rem) << 1),
                    quotient.eq(Cat(take, quotient)),
                    count.eq(count + 1),
                ]
                with m.If(count == qb - 1):
                    m.d.sync += phase.eq(3)
            with m.Case(3):
                with m.If(self.o.ready):
                    m.d.sync += phase.eq(0)

        # 1 / root = quotient * 2**-(qb - 1) * 2**-div_exp (+ the remainder's
        # sticky bit); one rounding with 2**-j folded in (it is exact here).
        exp = Signal(f.exp_shape, name="r_exp")
        m.d.comb += exp.eq(-(qb - 1) - div_exp - j - 1)
        r = round_pack(m, f, Const(0, 1), exp, Cat(div_rem != 0, quotient), "r")
        m.d.comb += self.o.valid.eq(phase == 3)
        fixed_results(m, f, cls, r, self.o.payload)
        return m
