"""The exponent-field operations of the iteration, in Amaranth: the exponent
split of q, scaling by a power of two, and the starts that need no multiplier
(the exponent+mantissa comparison, the magic subtraction, the table start's
ROM). Each computes exactly what the library does (``rsqrt.exponent_split``,
``Arithmetic.scale`` then one rounding, ``rsqrt.initial_estimate``,
``rsqrt.magic_estimate``, ``rsqrt.table_lookup``).

Like the operators in :mod:`.fp`, each is a combinational block followed by
``latency`` output registers (the model's ``exp_latency``).
"""

from __future__ import annotations

import math

import torch
from amaranth.hdl import Cat, Const, Module, Mux, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ...formats import encode, get_format, round_scalar
from ...rsqrt import smallest_at_least_sqrt2
from .fp import FpConvert, FpFormat, Unpacked, delayed, leading_zeros, round_pack, with_specials

__all__ = [
    "CLASSES",
    "ExponentSplit",
    "MagicStart",
    "MantissaStart",
    "Pow2Scale",
    "TableLookup",
    "fixed_results",
]

# The split's class of q: what iter_rsqrt returns for it.
CLASSES = {"finite": 0, "zero": 1, "infinity": 2, "nan": 3}  # nan: NaN or q < 0


def constant_bits(value: float, fmt: FpFormat) -> int:
    """The bits of ``value`` rounded to the format (as ``Arithmetic.const``)."""
    return int(encode(torch.tensor(round_scalar(value, fmt.name), dtype=torch.float64), fmt.name))


def _check_latency(component, latency) -> None:
    if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
        component._MustUse__silence = True  # a rejected design is not an unused one
        raise ValueError(f"latency must be an integer >= 0, got {latency!r}")


def _registered(m: Module, latency: int, pairs) -> None:
    """Drive each output from its value through ``latency`` registers."""
    for out, value in pairs:
        m.d.comb += out.eq(delayed(m, value, latency, out.name))


def fixed_results(m: Module, f: FpFormat, cls, finite, out) -> None:
    """``out`` is ``finite`` for a positive finite q, else iter_rsqrt's fixed
    result for q's class: inf for zeros, 0 for inf, NaN for NaN and q < 0."""
    infinity = ((1 << f.ebits) - 1) << f.mbits
    with m.Switch(cls):
        with m.Case(CLASSES["finite"]):
            m.d.comb += out.eq(finite)
        with m.Case(CLASSES["zero"]):
            m.d.comb += out.eq(infinity)
        with m.Case(CLASSES["infinity"]):
            m.d.comb += out.eq(0)
        with m.Default():
            m.d.comb += out.eq(f.quiet_nan())


class _Block(wiring.Component):
    def __init__(self, fmt, latency: int, signature: dict):
        try:
            self.fmt = FpFormat.of(fmt)
        except ValueError:
            self._MustUse__silence = True
            raise
        _check_latency(self, latency)
        self.latency = latency
        super().__init__(signature(self.fmt) if callable(signature) else signature)


class ExponentSplit(_Block):
    """q -> (qn, j, cls): q = qn * 2**(2j) with qn in [1/2, 2) (subnormal q
    normalized first), and q's class. For q that is not positive and finite,
    qn = 1 and j = 0 (the library iterates on 1 there and replaces the result).

    ``to``: the format qn leaves in, rounded once (a unit whose sum of squares
    q is fp32 and whose datapath is bf16 or fp16; qn may round up to 2
    there); j keeps q's exponent range."""

    def __init__(self, fmt, latency: int = 0, to=None):
        try:
            self.to = FpFormat.of(to if to is not None else fmt)
        except ValueError:
            self._MustUse__silence = True
            raise
        super().__init__(
            fmt,
            latency,
            lambda f: {
                "q": In(f.width),
                "qn": Out(self.to.width),
                "j": Out(f.exp_shape),
                "cls": Out(2),
            },
        )

    def elaborate(self, platform) -> Module:
        m, f = Module(), self.fmt
        q = Unpacked(m, f, self.q, "q")
        lz = leading_zeros(m, q.sig, "q_lz")
        # q = sig * 2**exp; its leading bit has exponent E = exp + mbits - lz.
        top = Signal(f.exp_shape, name="q_top")
        m.d.comb += top.eq(q.exp + f.mbits - lz)
        j = Signal(f.exp_shape, name="split_j")
        m.d.comb += j.eq((top + 1) >> 1)  # floor((E + 1) / 2), an arithmetic shift
        normed = Signal(f.precision, name="q_normed")
        m.d.comb += normed.eq(q.sig << lz)
        # qn's exponent E - 2j is -1 for odd E, 0 for even E.
        qn = Cat(normed[: f.mbits], Mux(top[0], f.bias - 1, f.bias)[: f.ebits], Const(0, 1))
        cls = Signal(2, name="split_cls")
        ok = ~q.sign & ~q.is_zero & ~q.is_inf & ~q.is_nan
        with m.If(q.is_nan | (q.sign & ~q.is_zero)):
            m.d.comb += cls.eq(CLASSES["nan"])
        with m.Elif(q.is_zero):
            m.d.comb += cls.eq(CLASSES["zero"])
        with m.Elif(q.is_inf):
            m.d.comb += cls.eq(CLASSES["infinity"])
        with m.Else():
            m.d.comb += cls.eq(CLASSES["finite"])
        if self.to != f:
            m.submodules.qn_to = convert = FpConvert(f.name, self.to.name)
            m.d.comb += convert.a.eq(qn)
            qn = convert.result
        one = self.to.bias << self.to.mbits
        _registered(
            m,
            self.latency,
            [(self.qn, Mux(ok, qn, one)), (self.j, Mux(ok, j, 0)), (self.cls, cls)],
        )
        return m


class Pow2Scale(_Block):
    """x * 2**k rounded once (subnormal results rounded, overflow to
    infinity), k a signed input of the format's exponent width plus four
    bits: an exponent add and the shared rounder."""

    def __init__(self, fmt, latency: int = 0):
        super().__init__(
            fmt,
            latency,
            lambda f: {"x": In(f.width), "k": In(f.exp_shape), "result": Out(f.width)},
        )

    def elaborate(self, platform) -> Module:
        m, f = Module(), self.fmt
        x = Unpacked(m, f, self.x, "x")
        sig = Signal(f.precision + 2, name="scale_sig")  # round and sticky positions
        m.d.comb += sig.eq(x.sig << 2)
        # Beyond 2**(ebits + 1) every result is zero or infinity: clamping k
        # there keeps the exponent arithmetic in the rounder's width.
        bound = 1 << (f.ebits + 1)
        k = Signal(f.exp_shape, name="scale_k")
        m.d.comb += k.eq(Mux(self.k > bound, bound, Mux(self.k < -bound, -bound, self.k)))
        exp = Signal(f.exp_shape, name="scale_exp")
        m.d.comb += exp.eq(x.exp + k - 2)
        rounded = round_pack(m, f, x.sign, exp, sig, "scale")
        result = with_specials(m, f, x, rounded, "scale_result")
        _registered(m, self.latency, [(self.result, result)])
        return m


def _start_signature(f: FpFormat) -> dict:
    return {"qn": In(f.width), "a0": Out(f.width)}


class MantissaStart(_Block):
    """The exponent+mantissa start: one comparison of qn's significand with
    sqrt(2) picks a_0 from {1, 2**-0.5, 2**0.5}, per exponent parity."""

    def __init__(self, fmt, latency: int = 0):
        super().__init__(fmt, latency, _start_signature)

    def elaborate(self, platform) -> Module:
        m, f = Module(), self.fmt
        threshold = round(smallest_at_least_sqrt2(get_format(f.name)) * (1 << f.mbits)) - (
            1 << f.mbits
        )
        exponent = self.qn[f.mbits : f.mbits + f.ebits]
        odd = exponent == f.bias - 1  # qn in [1/2, 1)
        # qn = 2 (a rounded-up conversion) is above sqrt(2) like the library's.
        high = (self.qn[: f.mbits] >= threshold) | (exponent == f.bias + 1)
        one = f.bias << f.mbits
        down = constant_bits(math.sqrt(0.5), f)
        up = constant_bits(math.sqrt(2), f)
        a0 = Mux(odd, Mux(high, one, up), Mux(high, down, one))
        _registered(m, self.latency, [(self.a0, a0)])
        return m


class MagicStart(_Block):
    """The bit trick: bits(a_0) = magic - (bits(qn) >> 1)."""

    def __init__(self, fmt, magic: int, latency: int = 0):
        super().__init__(fmt, latency, _start_signature)
        self.magic = magic

    def elaborate(self, platform) -> Module:
        m, f = Module(), self.fmt
        a0 = Signal(f.width, name="magic_a0")
        m.d.comb += a0.eq(self.magic - (self.qn >> 1))
        _registered(m, self.latency, [(self.a0, a0)])
        return m


class TableLookup(_Block):
    """The table start's ROM: (c0, c1) of qn's segment, indexed by qn's
    exponent parity and its top mantissa bits; a_0 = c0 - c1 qn follows on
    the multiplier and the adder."""

    def __init__(self, fmt, table, latency: int = 0):
        super().__init__(
            fmt, latency, lambda f: {"qn": In(f.width), "c0": Out(f.width), "c1": Out(f.width)}
        )
        segments = len(table[0])
        if segments & (segments - 1) or any(len(row) != segments for row in table):
            raise ValueError(f"the table needs a power-of-two number of segments, got {segments}")
        self.rom = [
            [tuple(constant_bits(c, self.fmt) for c in pair) for pair in row] for row in table
        ]

    def elaborate(self, platform) -> Module:
        m, f = Module(), self.fmt
        segments = len(self.rom[0])
        bits = segments.bit_length() - 1
        exponent = self.qn[f.mbits : f.mbits + f.ebits]
        two = exponent == f.bias + 1  # qn = 2: the even row's last segment, as clamped
        even = (exponent == f.bias) | two  # qn in [1, 2]
        segment = self.qn[f.mbits - bits : f.mbits] if bits else Const(0, 0)
        index = Signal(bits + 1, name="rom_index")
        m.d.comb += index.eq(Cat(Mux(two, segments - 1, segment)[:bits], even))
        c0, c1 = Signal(f.width, name="rom_c0"), Signal(f.width, name="rom_c1")
        with m.Switch(index):
            for parity, row in enumerate(self.rom):
                for segment, (v0, v1) in enumerate(row):
                    with m.Case(parity << bits | segment):
                        m.d.comb += [c0.eq(v0), c1.eq(v1)]
        _registered(m, self.latency, [(self.c0, c0), (self.c1, c1)])
        return m
