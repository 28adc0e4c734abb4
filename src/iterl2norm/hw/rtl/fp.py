"""Floating-point operators in Amaranth: one classifier, one rounder, and the
multiplier, adder and converter built on them, for fp32, fp16 and bf16, and
the mixed forms of a datapath with a wider accumulator (16-bit operands into
an fp32 result).

Every operator computes exactly what the library's ``Arithmetic`` does for
that operation: the exact result rounded once to the format, to nearest with
ties to even, subnormals kept, overflow to infinity. NaN results are the
format's canonical quiet NaN (the sign and payload of a NaN are not part of
the definition). Formats with infinities and IEEE NaNs (fp32, fp16, bf16) are
supported; the FP8 E4M3 encoding, which saturates, is not.

The operators are combinational cores wrapped in ``latency`` pipeline
registers placed at the output, for a synthesis tool with retiming to move
into the core (the Yosys flow of :mod:`.synth` does not retime: its counts
are of output registers); a ``valid`` bit travels with the data.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from ...formats import Format, get_format

__all__ = ["SUPPORTED", "FpAdd", "FpConvert", "FpDiv", "FpFormat", "FpMul"]

SUPPORTED = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class FpFormat:
    """Field widths of a format, as the hardware sees them."""

    name: str
    ebits: int
    mbits: int
    bias: int

    @classmethod
    def of(cls, fmt: str | Format) -> FpFormat:
        f = get_format(fmt)
        if f.name not in SUPPORTED:
            raise ValueError(f"the RTL supports the formats {', '.join(SUPPORTED)}, got {f.name!r}")
        return cls(f.name, f.exponent_bits, f.mantissa_bits, f.bias)

    @property
    def width(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def precision(self) -> int:
        return self.mbits + 1

    @property
    def emin(self) -> int:
        return 1 - self.bias

    @property
    def exp_shape(self):
        """Wide enough for every exponent a product or sum passes through."""
        return signed(self.ebits + 4)

    def quiet_nan(self) -> int:
        return (((1 << self.ebits) - 1) << self.mbits) | (1 << (self.mbits - 1))

    def infinity(self, sign) -> Cat:
        return Cat(Const(0, self.mbits), Const((1 << self.ebits) - 1, self.ebits), sign)


class Unpacked:
    """The classifier: one operand's sign, significand and exponent (value =
    sig * 2**exp, the hidden bit set for normals) and its class."""

    def __init__(self, m: Module, fmt: FpFormat, bits, name: str):
        e_field = bits[fmt.mbits : fmt.mbits + fmt.ebits]
        frac = bits[: fmt.mbits]
        top = (1 << fmt.ebits) - 1
        self.sign = bits[-1]
        self.is_sub = e_field == 0
        self.is_zero = self.is_sub & (frac == 0)
        self.is_inf = (e_field == top) & (frac == 0)
        self.is_nan = (e_field == top) & (frac != 0)
        self.sig = Signal(fmt.precision, name=f"{name}_sig")
        self.exp = Signal(fmt.exp_shape, name=f"{name}_exp")
        m.d.comb += [
            self.sig.eq(Cat(frac, ~self.is_sub)),
            self.exp.eq(Mux(self.is_sub, fmt.emin, e_field - fmt.bias) - fmt.mbits),
        ]
        self.magnitude = bits[:-1]  # orders finite values (and inf) by size


def leading_zeros(m: Module, value, name: str) -> Signal:
    """Count of zeros above the highest one of ``value`` (its width if zero)."""
    width = len(value)
    count = Signal(range(width + 1), name=name)
    m.d.comb += count.eq(width)
    for i in range(width):  # the last assignment wins: the highest set bit
        with m.If(value[i]):
            m.d.comb += count.eq(width - 1 - i)
    return count


def round_pack(m: Module, fmt: FpFormat, sign, exp, sig, name: str) -> Signal:
    """The rounder: sig * 2**exp (sig unsigned, its lowest bit may be a sticky
    bit) rounded to the format, nearest even; an encoded result. A zero sig
    gives a zero of ``sign``; overflow gives an infinity of ``sign``."""
    p = fmt.precision
    if len(sig) < p + 2:  # room for a round and a sticky position
        pad = p + 2 - len(sig)
        sig, exp = Cat(Const(0, pad), sig), exp - pad
    width = len(sig)
    # Exponent arithmetic as wide as the result's format or the incoming exponent.
    shape = signed(max(fmt.exp_shape.width, Value.cast(exp).shape().width) + 1)
    lz = leading_zeros(m, sig, f"{name}_lz")
    normed = Signal(width, name=f"{name}_normed")
    m.d.comb += normed.eq(sig << lz)
    # Exponent of the leading bit; below emin the result is subnormal and keeps fewer bits.
    e_top = Signal(shape, name=f"{name}_etop")
    m.d.comb += e_top.eq(exp - lz + (width - 1))
    deficit = Signal(shape, name=f"{name}_deficit")
    m.d.comb += deficit.eq(Mux(e_top < fmt.emin, fmt.emin - e_top, 0))
    drop = Signal(range(2 * width + 2), name=f"{name}_drop")  # bits below the kept ones
    m.d.comb += drop.eq(Mux(deficit > width + 1, 2 * width + 1, deficit + (width - p)))
    kept = Signal(p + 1, name=f"{name}_kept")
    round_bit = Signal(name=f"{name}_round")
    sticky = Signal(name=f"{name}_sticky")
    wide = Cat(Const(0, width + 2), normed)  # normed * 2**(width + 2): room to shift right
    shifted = Signal(len(wide), name=f"{name}_shifted")
    m.d.comb += shifted.eq(wide >> drop)
    m.d.comb += [
        kept.eq(shifted[width + 2 :]),
        round_bit.eq(shifted[width + 1]),
        sticky.eq(shifted[: width + 1] != 0),
    ]
    rounded = Signal(p + 1, name=f"{name}_rounded")
    m.d.comb += rounded.eq(kept + (round_bit & (sticky | kept[0])))
    # Encoding: (biased exponent - 1) << mbits plus the significand with its
    # hidden bit, so that a carry out of the significand bumps the exponent
    # and a subnormal that rounds up becomes the smallest normal.
    e_minus_1 = Signal(shape, name=f"{name}_em1")
    m.d.comb += e_minus_1.eq(Mux(deficit > 0, 0, e_top + fmt.bias - 1))
    packed = Signal(fmt.ebits + fmt.mbits + 5, name=f"{name}_packed")
    m.d.comb += packed.eq((e_minus_1 << fmt.mbits) + rounded)
    result = Signal(fmt.width, name=f"{name}_result")
    top = (1 << fmt.ebits) - 1
    with m.If(sig == 0):
        m.d.comb += result.eq(Cat(Const(0, fmt.width - 1), sign))
    with m.Elif(packed >= (top << fmt.mbits)):
        m.d.comb += result.eq(fmt.infinity(sign))
    with m.Else():
        m.d.comb += result.eq(Cat(packed[: fmt.width - 1], sign))
    return result


def delayed(m: Module, value, latency: int, name: str):
    """``value`` through ``latency`` registers (the operators' output pipeline)."""
    for stage in range(latency):
        reg = Signal(len(value), name=f"{name}_stage{stage}")
        m.d.sync += reg.eq(value)
        value = reg
    return value


def with_specials(m: Module, fmt: FpFormat, x: Unpacked, rounded, name: str) -> Signal:
    """``rounded``, unless the operand ``x`` is NaN (the quiet NaN) or an
    infinity (kept): the one-operand operations' results."""
    out = Signal(fmt.width, name=name)
    with m.If(x.is_nan):
        m.d.comb += out.eq(fmt.quiet_nan())
    with m.Elif(x.is_inf):
        m.d.comb += out.eq(fmt.infinity(x.sign))
    with m.Else():
        m.d.comb += out.eq(rounded)
    return out


def _choose(m: Module, fmt: FpFormat, pick_first, first: Unpacked, second: Unpacked, name: str):
    """(sig, exp, sign) of ``first`` where ``pick_first``, else of ``second``."""
    sig = Signal(fmt.precision, name=f"{name}_sig")
    exp = Signal(fmt.exp_shape, name=f"{name}_exp")
    sign = Signal(name=f"{name}_sign")
    m.d.comb += [
        sig.eq(Mux(pick_first, first.sig, second.sig)),
        exp.eq(Mux(pick_first, first.exp, second.exp)),
        sign.eq(Mux(pick_first, first.sign, second.sign)),
    ]
    return sig, exp, sign


def widen(m: Module, src: FpFormat, dst: FpFormat, bits, name: str) -> Signal:
    """An operand of ``src`` in the wider ``dst``, exactly (``dst`` holds every
    ``src`` value; the rounder, which has nothing to round here, re-encodes
    it, subnormals included)."""
    if src == dst:
        return bits
    return _convert(m, src, dst, bits, name)


def _convert(m: Module, src: FpFormat, dst: FpFormat, bits, name: str) -> Signal:
    x = Unpacked(m, src, bits, name)
    rounded = round_pack(m, dst, x.sign, x.exp, x.sig, f"{name}_to_{dst.name}")
    return with_specials(m, dst, x, rounded, f"{name}_{dst.name}")


def _operand_formats(fmt: FpFormat, inputs, narrowing: bool = False) -> tuple[FpFormat, FpFormat]:
    """The operands' formats: ``fmt`` unless given, each held by ``fmt`` (or,
    with ``narrowing``, all held by the widest of them and ``fmt``)."""
    if inputs is None:
        return fmt, fmt
    if isinstance(inputs, str) or len(inputs) != 2:
        raise ValueError(f"inputs must be two operand formats, got {inputs!r}")
    formats = tuple(FpFormat.of(i) for i in inputs)
    if narrowing:
        work = _widest(fmt, *formats)
        if work is None:
            raise ValueError(
                f"no format of {fmt.name}, {formats[0].name} and {formats[1].name} "
                "holds the other two"
            )
        return formats
    for f in formats:
        if not get_format(fmt.name).holds(get_format(f.name)):
            raise ValueError(
                f"operands of {f.name} do not fit a {fmt.name} result; the mixed forms "
                "take narrower operands into a wider result"
            )
    return formats


def _widest(*formats: FpFormat) -> FpFormat | None:
    """The one of ``formats`` that holds every other, if there is one."""
    for f in formats:
        if all(get_format(f.name).holds(get_format(g.name)) for g in formats):
            return f
    return None


class _Operator(wiring.Component):
    """a, b -> result after ``latency`` cycles (0: combinational), valid alongside.
    ``inputs``: the operands' formats when they are narrower than the result's
    (16-bit operands into an fp32 accumulator); default the result's."""

    narrowing = False  # whether an operand may be wider than the result

    def __init__(self, fmt, latency: int = 0, *, inputs=None, ports=None):
        try:
            self.fmt = FpFormat.of(fmt)
            self.inputs = _operand_formats(self.fmt, inputs, self.narrowing)
            if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
                raise ValueError(f"latency must be an integer >= 0, got {latency!r}")
        except ValueError:
            self._MustUse__silence = True  # a rejected design is not an unused one
            raise
        self.latency = latency
        fa, fb = self.inputs
        super().__init__(
            {
                "a": In(fa.width),
                "b": In(fb.width),
                "valid_in": In(1),
                "result": Out(self.fmt.width),
                "valid_out": Out(1),
                **(ports or {}),
            }
        )

    def core(self, m: Module):  # the combinational result
        raise NotImplementedError

    def elaborate(self, platform) -> Module:
        m = Module()
        m.d.comb += [  # output registers, for retiming to place
            self.result.eq(delayed(m, self.core(m), self.latency, "result")),
            self.valid_out.eq(delayed(m, self.valid_in, self.latency, "valid")),
        ]
        return m


class _Offset(_Operator):
    """An operator with, given ``shift_bits``, a signed port ``shift`` of that
    width: its result times 2**shift, still rounded once (a power-of-two
    pre-scale folded into the exponent, as the unit's three-pass statistics
    and its output use it)."""

    def __init__(self, fmt, latency: int = 0, *, inputs=None, shift_bits: int | None = None):
        if shift_bits is not None and (not isinstance(shift_bits, int) or shift_bits < 2):
            self._MustUse__silence = True
            raise ValueError(f"shift_bits must be an integer >= 2, got {shift_bits!r}")
        self.shift_bits = shift_bits
        ports = {} if shift_bits is None else {"shift": In(signed(shift_bits))}
        super().__init__(fmt, latency, inputs=inputs, ports=ports)

    def _exponent(self, m: Module, name: str, value) -> Signal:
        """``value``, an exponent, plus the offset when there is one."""
        if self.shift_bits is None:
            exp = Signal(self.fmt.exp_shape, name=name)
            m.d.comb += exp.eq(value)
        else:
            fa, fb = self.inputs
            width = max(self.fmt.exp_shape.width, fa.exp_shape.width, fb.exp_shape.width)
            exp = Signal(signed(max(width, self.shift_bits) + 2), name=name)
            m.d.comb += exp.eq(value + self.shift)
        return exp


class FpMul(_Offset):
    """a * b, rounded once (operands of their own formats: the exact product
    of their significands, rounded to the result's); with ``shift_bits``,
    a * b * 2**shift."""

    def core(self, m: Module):
        fmt = self.fmt
        fa, fb = self.inputs
        a, b = Unpacked(m, fa, self.a, "a"), Unpacked(m, fb, self.b, "b")
        sign = a.sign ^ b.sign
        product = Signal(fa.precision + fb.precision, name="product")
        m.d.comb += product.eq(a.sig * b.sig)
        exp = self._exponent(m, "pexp", a.exp + b.exp)
        rounded = round_pack(m, fmt, sign, exp, product, "r")
        result = Signal(fmt.width, name="mul")
        with m.If(a.is_nan | b.is_nan | (a.is_inf & b.is_zero) | (a.is_zero & b.is_inf)):
            m.d.comb += result.eq(fmt.quiet_nan())
        with m.Elif(a.is_inf | b.is_inf):
            m.d.comb += result.eq(fmt.infinity(sign))
        with m.Else():
            m.d.comb += result.eq(rounded)
        return result


class DivStep(wiring.Component):
    """One step of restoring division: the quotient bit ``take`` (``rem >=
    divisor``) and the partial remainder ``left`` that follows. A module of
    its own, so the divider's p + 3 identical steps are one module instanced
    p + 3 times, which synthesis maps once (unrolled into one module, the
    steps' long carry chains are more than ABC maps in an hour)."""

    def __init__(self, width: int):
        self.width = width  # of the divisor; the remainder has two bits more
        super().__init__(
            {
                "rem": In(width + 2),
                "divisor": In(width),
                "take": Out(1),
                "left": Out(width + 1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        m.d.comb += [
            self.take.eq(self.rem >= self.divisor),
            self.left.eq(Mux(self.take, self.rem - self.divisor, self.rem)),
        ]
        return m


class FpDiv(_Offset):
    """a / b, rounded once (with ``shift_bits``, a * 2**shift / b): the exact
    method's per-lane divider. Both significands are normalized, subnormals
    included; restoring division gives p + 3 quotient bits, at least p + 2 of
    them significant (the quotient of two normalized significands lies in
    (1/2, 2)), and the remainder a sticky bit, so the one rounding is exact.
    0/0, inf/inf and NaN operands give NaN; x/0 and inf/x infinities; 0/x and
    x/inf zeros, signed as the quotient."""

    def __init__(self, fmt, latency: int = 0, *, shift_bits: int | None = None):
        # Operands of the result's format: their normalized quotient is below 2.
        super().__init__(fmt, latency, shift_bits=shift_bits)

    def core(self, m: Module):
        fmt = self.fmt
        a, b = Unpacked(m, fmt, self.a, "a"), Unpacked(m, fmt, self.b, "b")
        sign = a.sign ^ b.sign
        a_lz, b_lz = leading_zeros(m, a.sig, "a_lz"), leading_zeros(m, b.sig, "b_lz")
        dividend = Signal(fmt.precision, name="dividend")
        divisor = Signal(fmt.precision, name="divisor")
        m.d.comb += [dividend.eq(a.sig << a_lz), divisor.eq(b.sig << b_lz)]
        # Bit by bit from the top: quotient bits of dividend * 2**(n - 1) / divisor;
        # the partial remainder stays below twice the divisor.
        n = fmt.precision + 3
        rem, bits = dividend, []
        for step in range(n):
            m.submodules[f"step{step}"] = stage = DivStep(fmt.precision)
            m.d.comb += [stage.rem.eq(rem), stage.divisor.eq(divisor)]
            bits.append(stage.take)
            rem = stage.left << 1
        quotient = Cat(*reversed(bits))
        # value = quotient * 2**-(n - 1) * 2**(a_exp - b_exp), the sticky bit below it
        exp = self._exponent(m, "qexp", a.exp - a_lz - b.exp + b_lz - n)
        rounded = round_pack(m, fmt, sign, exp, Cat(rem != 0, quotient), "r")
        result = Signal(fmt.width, name="div")
        with m.If(a.is_nan | b.is_nan | (a.is_zero & b.is_zero) | (a.is_inf & b.is_inf)):
            m.d.comb += result.eq(fmt.quiet_nan())
        with m.Elif(a.is_inf | b.is_zero):
            m.d.comb += result.eq(fmt.infinity(sign))
        with m.Elif(a.is_zero | b.is_inf):
            m.d.comb += result.eq(Cat(Const(0, fmt.width - 1), sign))
        with m.Else():
            m.d.comb += result.eq(rounded)
        return result


class FpAdd(_Operator):
    """a + b, rounded once (a - b is a + (-b): flip b's sign bit). The
    operands are first widened, exactly, to the widest format of the three;
    the sum, exact but for a sticky bit, is rounded once to the result's,
    which may be narrower than an operand (x - mean: a bf16 x and an fp32
    mean give a bf16 difference)."""

    narrowing = True

    def core(self, m: Module):
        fmt = _widest(self.fmt, *self.inputs)  # the working format
        p = fmt.precision
        wide_a = widen(m, self.inputs[0], fmt, self.a, "a")
        wide_b = widen(m, self.inputs[1], fmt, self.b, "b")
        x, y = Unpacked(m, fmt, wide_a, "x"), Unpacked(m, fmt, wide_b, "y")
        # Order by magnitude: big >= small, so the difference is never negative.
        swap = Signal(name="swap")
        m.d.comb += swap.eq(y.magnitude > x.magnitude)
        big_sig, big_exp, big_sign = _choose(m, fmt, swap, y, x, "big")
        small_sig, small_exp, small_sign = _choose(m, fmt, swap, x, y, "small")
        # Three bits below the significands (guard, round, sticky); the small
        # operand's bits shifted past them are ORed into the sticky bit.
        extra = 3
        width = p + extra + 1  # and a carry
        dist = Signal(fmt.exp_shape, name="dist")
        m.d.comb += dist.eq(big_exp - small_exp)
        limit = p + extra + 1
        shift = Signal(range(limit + 1), name="align")
        m.d.comb += shift.eq(Mux(dist > limit, limit, dist))
        small_wide = Signal(p + extra, name="small_wide")
        m.d.comb += small_wide.eq(small_sig << extra)
        aligned = Signal(p + extra, name="aligned")
        lost = Signal(name="lost")
        m.d.comb += [
            aligned.eq(small_wide >> shift),
            lost.eq((small_wide & ((Const(1, p + extra + 1) << shift) - 1)) != 0),
        ]
        small_ext = Signal(p + extra, name="small_ext")
        m.d.comb += small_ext.eq(aligned | lost)
        big_ext = Signal(p + extra, name="big_ext")
        m.d.comb += big_ext.eq(big_sig << extra)
        total = Signal(width, name="sum")
        with m.If(big_sign == small_sign):
            m.d.comb += total.eq(big_ext + small_ext)
        with m.Else():
            m.d.comb += total.eq(big_ext - small_ext)
        # An exact zero is +0 unless both operands are -0 (round to nearest).
        zero_sign = big_sign & small_sign
        sign = Signal(name="sum_sign")
        m.d.comb += sign.eq(Mux(total == 0, zero_sign, big_sign))
        rounded = round_pack(m, self.fmt, sign, big_exp - extra, total, "r")
        out = self.fmt
        result = Signal(out.width, name="add")
        opposite_infs = x.is_inf & y.is_inf & (x.sign != y.sign)
        with m.If(x.is_nan | y.is_nan | opposite_infs):
            m.d.comb += result.eq(out.quiet_nan())
        with m.Elif(x.is_inf):
            m.d.comb += result.eq(out.infinity(x.sign))
        with m.Elif(y.is_inf):
            m.d.comb += result.eq(out.infinity(y.sign))
        with m.Else():
            m.d.comb += result.eq(rounded)
        return result


class FpConvert(wiring.Component):
    """A value of ``src`` in ``dst`` after ``latency`` cycles: exact when ``dst``
    holds ``src`` (bf16 or fp16 into fp32), else rounded once, nearest even
    (fp32 to bf16 or fp16, bf16 to fp16 and back), as the library's
    round_to_format of the value."""

    def __init__(self, src, dst, latency: int = 0):
        try:
            self.src, self.fmt = FpFormat.of(src), FpFormat.of(dst)
            if not isinstance(latency, int) or isinstance(latency, bool) or latency < 0:
                raise ValueError(f"latency must be an integer >= 0, got {latency!r}")
        except ValueError:
            self._MustUse__silence = True
            raise
        self.latency = latency
        super().__init__(
            {
                "a": In(self.src.width),
                "valid_in": In(1),
                "result": Out(self.fmt.width),
                "valid_out": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        value = self.a if self.src == self.fmt else _convert(m, self.src, self.fmt, self.a, "a")
        m.d.comb += [
            self.result.eq(delayed(m, value, self.latency, "result")),
            self.valid_out.eq(delayed(m, self.valid_in, self.latency, "valid")),
        ]
        return m


# The operators by name, and the mixed forms a unit with a wider accumulator uses.
OPS = {"mul": FpMul, "add": FpAdd}


def operand_formats(op: str, fmt: str, acc_fmt: str | None = None) -> tuple[str, str, str]:
    """(a, b, result) formats: all ``fmt``, or with an accumulator format the
    mixed forms the unit uses: ``fmt`` x ``fmt`` -> ``acc_fmt`` (squares into
    the accumulator) and ``acc_fmt`` + ``fmt`` -> ``acc_fmt`` (a sum taking a
    datapath value)."""
    if op not in OPS:
        raise ValueError(f"unknown operator {op!r}; choose one of {', '.join(OPS)}")
    fmt = FpFormat.of(fmt).name
    if acc_fmt is None or FpFormat.of(acc_fmt).name == fmt:
        return fmt, fmt, fmt
    acc = FpFormat.of(acc_fmt).name
    return (fmt, fmt, acc) if op == "mul" else (acc, fmt, acc)


def operator(op: str, fmt: str, latency: int, acc_fmt: str | None = None):
    fa, fb, fr = operand_formats(op, fmt, acc_fmt)
    return OPS[op](fr, latency=latency, inputs=(fa, fb))
