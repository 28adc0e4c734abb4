"""An independent, slow, obviously-correct model of the emulated pipeline.

Exact rational arithmetic (``fractions.Fraction``) with a rounding function
written from the definition of round-to-nearest-even, one vector at a time,
following docs/ALGORITHM.md step by step. It shares no code with the library
except the format field widths, which test_formats.py pins to hex literals.
The library's emulation must equal it bit for bit.
"""

from __future__ import annotations

import math
from fractions import Fraction

from iterl2norm.formats import Format

INF = float("inf")


def floor_log2(a: Fraction) -> int:
    """floor(log2(a)) for a > 0, exactly."""
    e = a.numerator.bit_length() - a.denominator.bit_length()
    # 2**e may be one binade off either way; fix it up exactly.
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    return e


def rne(x, fmt: Format):
    """Round an exact value to ``fmt``, nearest with ties to even.

    Returns a Fraction, or a float inf/nan when the format overflows that way.
    """
    if isinstance(x, float):  # inf or nan passing through
        return x
    if x == 0:
        return Fraction(0)
    a = abs(x)
    e = max(floor_log2(a), fmt.emin)
    quantum = Fraction(2) ** (e - fmt.mantissa_bits)
    r = round(a / quantum) * quantum  # Python rounds Fractions half to even
    largest = Fraction(fmt.max)
    if r > largest:
        if fmt.saturate:
            r = largest
        else:
            return math.copysign(INF, x) if fmt.has_inf else float("nan")
    return r if x > 0 else -r


def tree_sum(values: list, acc: Format):
    """Balanced binary adder tree, zero-padded to a power of two, each sum rounded."""
    width = 1
    while width < len(values):
        width *= 2
    level = list(values) + [Fraction(0)] * (width - len(values))
    while len(level) > 1:
        level = [rne(level[i] + level[i + 1], acc) for i in range(0, len(level), 2)]
    return level[0]


def sqrt_rounded(x: Fraction, fmt: Format) -> Fraction:
    """Correctly rounded sqrt(x): 200 extra bits plus a sticky half-unit."""
    shift = 400
    n = x.numerator * 2**shift // x.denominator
    exact_scaled = x.numerator * 2**shift % x.denominator == 0
    root = math.isqrt(n)
    approx = Fraction(root, 2 ** (shift // 2))
    if not (exact_scaled and root * root == n):
        approx += Fraction(1, 2 ** (shift // 2 + 1))  # strictly between grid points: no false ties
    return rne(approx, fmt)


# Bit fields, for the magic-constant start -----------------------------------------


def to_bits(x: Fraction, fmt: Format) -> int:
    """Bits of a positive normal value of fmt."""
    e = floor_log2(x)
    frac = (x / Fraction(2) ** e - 1) * 2**fmt.mantissa_bits
    assert frac.denominator == 1
    return ((e + fmt.bias) << fmt.mantissa_bits) | int(frac)


def from_bits(bits: int, fmt: Format) -> Fraction:
    field = bits >> fmt.mantissa_bits
    frac = bits & ((1 << fmt.mantissa_bits) - 1)
    assert 0 < field < (1 << fmt.exponent_bits) - 1
    return (1 + Fraction(frac, 2**fmt.mantissa_bits)) * Fraction(2) ** (field - fmt.bias)


def magic_start(qn: Fraction, fmt: Format, magic: int) -> Fraction:
    return from_bits(magic - (to_bits(qn, fmt) >> 1), fmt)


# The scalar estimates of qn**-0.5 -------------------------------------------------


def initial(qn: Fraction, fmt: Format, init: str, magic: int) -> Fraction:
    if init == "exponent":
        return Fraction(1)
    if init == "exponent+mantissa":
        mantissa = 2 * qn if qn < 1 else qn
        high = mantissa * mantissa >= 2  # mantissa >= sqrt(2), decided exactly
        if qn < 1:
            return Fraction(1) if high else rne(Fraction(math.sqrt(2)), fmt)
        return rne(Fraction(math.sqrt(0.5)), fmt) if high else Fraction(1)
    return magic_start(qn, fmt, magic)


def euler(qn, a, fmt, rates):
    for rate in rates:
        lam = rne(Fraction(rate), fmt)
        u = rne(rne(a * a, fmt) * qn, fmt)
        g = rne(lam * rne(1 - u, fmt), fmt)
        a = rne(a + rne(a * g, fmt), fmt)
    return a


def table_start(qn: Fraction, fmt: Format, table) -> Fraction:
    segments = len(table[0])
    even = qn >= 1
    mantissa = qn if even else 2 * qn
    index = min(math.floor((mantissa - 1) * segments), segments - 1)
    c0, c1 = (rne(Fraction(c), fmt) for c in table[int(even)][index])
    return rne(c0 - rne(c1 * qn, fmt), fmt)


def correction(qn, a, fmt, constants):
    for gamma, beta in constants:
        u = rne(rne(a * a, fmt) * qn, fmt)
        e = rne(rne(Fraction(gamma), fmt) - rne(rne(Fraction(beta), fmt) * u, fmt), fmt)
        a = rne(a + rne(a * e, fmt), fmt)
    return a


def newton(qn, r, fmt, ks):
    h = rne(qn / 2, fmt)
    for k in ks:
        t = rne(rne(h * r, fmt) * r, fmt)
        r = rne(r * rne(rne(Fraction(k), fmt) - t, fmt), fmt)
    return r


def cubic_then_newton(qn, r, fmt, steps, k1, k2):
    if steps >= 1:
        k1, k2 = rne(Fraction(k1), fmt), rne(Fraction(k2), fmt)
        c = -rne(rne(qn * r, fmt) * r, fmt)
        r = rne(r * rne(k1 + rne(c * rne(k2 + c, fmt), fmt), fmt), fmt)
    h = rne(qn / 2, fmt)
    for _ in range(steps - 1):
        t = rne(rne(h * r, fmt) * r, fmt)
        r = rne(r + rne(r * rne(Fraction(1, 2) - t, fmt), fmt), fmt)
    return r


# The pipeline -------------------------------------------------------------------


def max_exponent(v: list) -> int:
    nonzero = [abs(x) for x in v if x != 0]
    return floor_log2(max(nonzero)) if nonzero else 0


def normalize(
    v: list, fmt: Format, acc: Format, method: dict, *, inv_d=1, eps=0.0, shift=0
) -> list:
    """One row through the pipeline. v: exact values of fmt (Fractions)."""
    k = max_exponent(v)
    if eps > 0:
        _, x = math.frexp(eps)
        k = max(k, (x - 1) // 2 - shift)
    vs = [x / Fraction(2) ** k for x in v]
    k += shift
    q = tree_sum([rne(x * x, acc) for x in vs], acc)
    if inv_d != 1:
        q = rne(q * rne(Fraction(inv_d), acc), acc)
    if eps > 0:
        q = rne(q + rne(Fraction(eps) / Fraction(4) ** k, acc), acc)
    if q == 0:
        q = Fraction(1)
    j = (floor_log2(q) + 1) // 2
    qn = rne(q / Fraction(4) ** j, fmt)
    kind = method["kind"]
    if kind == "exact":
        root = sqrt_rounded(qn, fmt)
        return [rne(x / Fraction(2) ** j / root, fmt) for x in vs]
    if kind == "vector":
        a0 = initial(qn, fmt, method["init"], method["magic"])
        if eps > 0:
            vs = [*vs, rne(Fraction(math.sqrt(len(v) * eps)) / Fraction(2) ** k, fmt)]
        z = [rne(x * a0 / Fraction(2) ** j, fmt) for x in vs]
        for rate in method["rates"]:
            w = tree_sum([rne(x * x, acc) for x in z], acc)
            if inv_d != 1:
                w = rne(w * rne(Fraction(inv_d), acc), acc)
            g = rne(rne(Fraction(rate), fmt) * rne(1 - rne(w, fmt), fmt), fmt)
            z = [rne(x + rne(g * x, fmt), fmt) for x in z]
        return z[: len(v)]
    if kind == "iter":
        r = euler(qn, initial(qn, fmt, method["init"], method["magic"]), fmt, method["rates"])
    elif kind == "schedule":
        a0 = (
            table_start(qn, fmt, method["table"])
            if method["start"] == "table"
            else initial(qn, fmt, method["start"], method["magic"])
        )
        r = correction(qn, a0, fmt, method["steps"])
    elif kind == "newton":
        r = newton(qn, magic_start(qn, fmt, method["magic"]), fmt, method["ks"])
    elif kind == "cubic":
        r = cubic_then_newton(
            qn, magic_start(qn, fmt, method["magic"]), fmt, method["steps"], *method["coeffs"]
        )
    else:
        raise ValueError(kind)
    return [rne(x * r / Fraction(2) ** j, fmt) for x in vs]


def layer_norm(
    v: list, fmt: Format, acc: Format, method: dict, eps: float, weight=None, bias=None
) -> list:
    d = len(v)
    shift = max_exponent(v)
    xs = [x / Fraction(2) ** shift for x in v]
    inv_d = Fraction(1, d) if d > 1 else 1
    mean = rne(tree_sum([rne(x, acc) for x in xs], acc) * rne(Fraction(1, d), acc), acc)
    y = [rne(x - mean, fmt) for x in xs]
    out = normalize(y, fmt, acc, method, inv_d=inv_d, eps=eps, shift=shift)
    return affine(out, fmt, weight, bias)


def rms_norm(v: list, fmt: Format, acc: Format, method: dict, eps: float, weight=None) -> list:
    d = len(v)
    out = normalize(v, fmt, acc, method, inv_d=Fraction(1, d) if d > 1 else 1, eps=eps)
    return affine(out, fmt, weight, None)


def affine(out, fmt, weight, bias):
    if weight is not None:
        out = [rne(o * w, fmt) for o, w in zip(out, weight, strict=True)]
    if bias is not None:
        out = [rne(o + b, fmt) for o, b in zip(out, bias, strict=True)]
    return out
