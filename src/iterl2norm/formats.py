"""Binary floating-point formats as data, and correct rounding into them.

A :class:`Format` is described by its field widths, exponent bias and its
rules for infinities, NaNs and overflow; every other constant (largest finite
value, smallest normal and subnormal, machine epsilon) is derived from those
fields. :func:`round_to_format` rounds float64 values to any registered format
with round-to-nearest-even, subnormals included. It is the one rounding
primitive the bit-accurate emulation is built on, and the test suite checks
it against PyTorch's own casts on every 8- and 16-bit encoding.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from fractions import Fraction
from functools import cached_property

import numpy as np
import torch

__all__ = [
    "FORMATS",
    "Format",
    "decode",
    "encode",
    "fisr_magic",
    "get_format",
    "round_to_format",
    "sqrt_rn",
]


# Frozen: the fields are the format. The derived constants are cached on the
# instance (cached_property writes the instance dict, which frozen allows).
@dataclass(frozen=True)
class Format:
    """A binary floating-point format.

    Args:
        name: registry name, e.g. ``"bf16"``.
        exponent_bits: width of the exponent field.
        mantissa_bits: width of the stored fraction field (the hidden bit is
            not counted), so the precision is ``mantissa_bits + 1`` bits.
        bias: exponent bias.
        has_inf: whether the format encodes infinities.
        nan: ``"ieee"`` when every encoding with an all-ones exponent field
            and a nonzero fraction is NaN (the top exponent is then reserved);
            ``"all_ones"`` when only the all-ones exponent and fraction encode
            NaN (FP8 E4M3 "fn"), so the top exponent holds finite values.
        saturate: whether a result beyond the largest finite value becomes
            that value (with its sign) instead of an infinity or NaN.
        torch_dtype_name: the matching ``torch`` dtype attribute, if any.

    >>> bf16 = get_format("bf16")
    >>> bf16.max == float.fromhex("0x1.fep127"), bf16.eps == 2.0**-7
    (True, True)
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    has_inf: bool
    nan: str
    saturate: bool
    torch_dtype_name: str | None = None

    def __post_init__(self):
        # Fill the derived constants now: torch.compile reads a filled
        # cached_property as an attribute, but computing one inside a trace
        # (it takes a lock) is a graph break.
        for name in _DERIVED:
            getattr(self, name)

    @cached_property
    def bits(self) -> int:
        """Total width of one encoding: sign, exponent and fraction."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @cached_property
    def emax(self) -> int:
        """Unbiased exponent of the largest finite binade."""
        top_field = (1 << self.exponent_bits) - 1
        return (top_field - 1 if self.nan == "ieee" else top_field) - self.bias

    @cached_property
    def emin(self) -> int:
        """Unbiased exponent of the smallest normal binade."""
        return 1 - self.bias

    @cached_property
    def max(self) -> float:
        """Largest finite value."""
        # With "all_ones" NaN the top binade loses its all-ones fraction.
        reserved = 1 if self.nan == "all_ones" else 0
        top_fraction = (1 << self.mantissa_bits) - 1 - reserved
        return float(
            Fraction(2**self.mantissa_bits + top_fraction, 2**self.mantissa_bits)
            * Fraction(2) ** self.emax
        )

    @cached_property
    def smallest_normal(self) -> float:
        return 2.0**self.emin

    @cached_property
    def smallest_subnormal(self) -> float:
        return 2.0 ** (self.emin - self.mantissa_bits)

    @cached_property
    def eps(self) -> float:
        """Distance from 1.0 to the next larger value."""
        return 2.0**-self.mantissa_bits

    @cached_property
    def torch_dtype(self) -> torch.dtype | None:
        return getattr(torch, self.torch_dtype_name, None) if self.torch_dtype_name else None

    def holds(self, other: Format) -> bool:
        """Whether every finite value of ``other`` is exactly a value of this format."""
        return (
            self.mantissa_bits >= other.mantissa_bits
            and self.emax >= other.emax
            and self.emin - self.mantissa_bits <= other.emin - other.mantissa_bits
            and self.max >= other.max
        )

    def __repr__(self) -> str:
        return f"Format({self.name!r}, e{self.exponent_bits}m{self.mantissa_bits})"


_DERIVED = [name for name, value in vars(Format).items() if isinstance(value, cached_property)]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("fp64", 11, 52, 1023, True, "ieee", False, "float64"),
        Format("fp32", 8, 23, 127, True, "ieee", False, "float32"),
        Format("fp16", 5, 10, 15, True, "ieee", False, "float16"),
        Format("bf16", 8, 7, 127, True, "ieee", False, "bfloat16"),
        # OCP FP8 E4M3 has no infinities; conversions saturate to +-448, which
        # is both the "satfinite" conversion of accelerators and torch's cast.
        Format("fp8_e4m3", 4, 3, 7, False, "all_ones", True, "float8_e4m3fn"),
        Format("fp8_e5m2", 5, 2, 15, True, "ieee", False, "float8_e5m2"),
    )
}

# The datapath formats the study, the demo and the benchmarks evaluate (fp64
# is the reference, not a datapath under study).
EVALUATED = ("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2")

_DTYPE_TO_FORMAT = {
    getattr(torch, f.torch_dtype_name): f
    for f in FORMATS.values()
    if f.torch_dtype_name and hasattr(torch, f.torch_dtype_name)
}


def get_format(spec: str | Format | torch.dtype) -> Format:
    """Look up a format by name, :class:`Format` or ``torch`` dtype.

    >>> get_format("fp16") is get_format(torch.float16)
    True
    """
    if isinstance(spec, Format):
        return spec
    if isinstance(spec, torch.dtype):
        if spec in _DTYPE_TO_FORMAT:
            return _DTYPE_TO_FORMAT[spec]
        raise ValueError(
            f"no number format matches dtype {spec!r}; known formats: {', '.join(FORMATS)}"
        )
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in FORMATS:
            return FORMATS[key]
        raise ValueError(f"unknown number format {spec!r}; known formats: {', '.join(FORMATS)}")
    raise TypeError(f"a number format must be a name, Format or torch.dtype, got {spec!r}")


def pow2(n: torch.Tensor) -> torch.Tensor:
    """Exact float64 powers of two ``2**n`` for integer ``n`` in [-1022, 1023].

    Built from the bit pattern, so no library ``exp2``/``pow`` rounding can
    creep in.
    """
    return ((n.to(torch.int64) + 1023) << 52).view(torch.float64)


def round_to_format(x: torch.Tensor, fmt: str | Format | torch.dtype) -> torch.Tensor:
    """Round to the nearest value of ``fmt``, ties to even; returns float64.

    The input is taken as float64 (exactly, for any narrower float dtype),
    so the result is rounded once, unlike ``float64 -> bfloat16`` casts in
    PyTorch that pass through float32 and can round twice. Overflow follows
    the format: infinity, NaN, or the largest finite value when it saturates.

    >>> round_to_format(torch.tensor([1 + 2**-8, 1 + 3 * 2**-8, 1e6]), "bf16").tolist()
    [1.0, 1.015625, 999424.0]
    >>> round_to_format(torch.tensor([500.0, -1e9]), "fp8_e4m3").tolist()
    [448.0, -448.0]
    """
    fmt = get_format(fmt)
    x = x.to(torch.float64)
    if fmt.mantissa_bits >= 52:
        return x
    m = fmt.mantissa_bits
    # The binade of x is its exponent field less 1023 (read from the bits:
    # cheaper than frexp). Clamped, the subnormals share the smallest normal
    # binade's quantum; so do zeros and float64 subnormals (field 0), while
    # inf and NaN (field 2047) pass through unchanged.
    field = ((x.view(torch.int64) >> 52) & 0x7FF).clamp_(min=fmt.emin + 1023)
    # 2**(m - binade) and 2**(binade - m), built from their bits as pow2 does.
    # Scaling by powers of two is exact, so round() sees x in units of the quantum.
    up = ((2046 + m) - field).bitwise_left_shift_(52).view(torch.float64)
    down = field.sub_(m).bitwise_left_shift_(52).view(torch.float64)
    r = torch.round(x * up) * down
    # Past the largest value, r is at least 2**(emax + 1), with the sign of x.
    if fmt.saturate:
        return r.clamp(-fmt.max, fmt.max)
    if fmt.has_inf:
        # Scaled by 2**(1023 - emax), exactly those results overflow float64 to
        # inf, and the rest scale back exactly (a multiply is far cheaper than where).
        return r * math.ldexp(1.0, 1023 - fmt.emax) * math.ldexp(1.0, fmt.emax - 1023)
    return r.masked_fill(r.abs() > fmt.max, float("nan"))


# Normal exponent range of the dtypes that carry values.
_EXPONENTS = {torch.float32: (-126, 127), torch.float64: (-1022, 1023)}


def ldexp(x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``x * 2**n`` for an integer tensor ``n``, exact whenever the result is
    normal, for float32 and float64 ``x``.

    Three powers of two, each a normal number of ``x``'s dtype, so any
    |n| up to three times the exponent range works (2**149 alone is not a
    float32, 2**-1074 not a normal float64). The split is even, so the
    intermediate values lie between ``x`` and the result.
    """
    lo, hi = _EXPONENTS[x.dtype]
    n = n.to(torch.int64).clamp(3 * lo, 3 * hi)  # beyond: every finite x under/overflows
    first = torch.div(n, 3, rounding_mode="floor")
    second = torch.div(n - first, 2, rounding_mode="floor")
    for piece in (first, second, n - first - second):
        x = x * pow2(piece).to(x.dtype)
    return x


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded square root (IEEE 754 squareRoot, nearest even) of a
    float32 or float64 tensor, in its dtype, the same bits on every machine.

    ``torch.sqrt`` on CPU runs through MKL's vector math library where PyTorch
    was built with it, which is accurate to about one ulp and gives different
    last bits on different processors. NumPy's ``sqrt`` is the processor's IEEE
    square-root instruction, correctly rounded by specification
    (tests/test_formats.py checks it against exact integer square roots, every
    float32 in [1/2, 2) included). Gradients are those of ``torch.sqrt``.

    >>> sqrt_rn(torch.tensor([2.0, 0.25, -1.0], dtype=torch.float64)).tolist()
    [1.4142135623730951, 0.5, nan]
    """
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"sqrt_rn takes float32 or float64, got {x.dtype}")
    with np.errstate(invalid="ignore"):  # sqrt of a negative number: NaN, as torch gives
        exact = np.sqrt(x.detach().cpu().numpy())
    exact = torch.from_numpy(exact).to(x.device)
    if x.requires_grad:
        approx = torch.sqrt(x)
        return approx + (exact - approx).detach()
    return exact


def encode(x: torch.Tensor, fmt: str | Format) -> torch.Tensor:
    """Bit patterns (int64) of values that are already exact values of ``fmt``.

    NaN encodes as the canonical quiet NaN (all-ones for ``nan="all_ones"``).

    >>> [hex(encode(torch.tensor(v), f).item()) for v, f in ((1.0, "fp32"), (-2.0, "bf16"))]
    ['0x3f800000', '0xc000']
    """
    fmt = get_format(fmt)
    m, e_bits = fmt.mantissa_bits, fmt.exponent_bits
    # Integer work on the float64 fields alone: where and frexp are slow on CPU.
    b = x.to(torch.float64).view(torch.int64)
    sign = (b >> 63) & 1
    e64 = (b >> 52) & 0x7FF  # biased float64 exponent: 0 zero or subnormal, 2047 inf or NaN
    m64 = b & ((1 << 52) - 1)
    # Units of the quantum: the float64 significand (implicit bit where e64 > 0)
    # shifted right by 52 - m in the format's normal range, by more below it
    # (the format's subnormals, float64's own at e64 = 1); the mask drops the
    # implicit bit of normals, and a shift past the significand leaves zero.
    shift = ((1075 - m + fmt.emin) - e64.clamp(min=1)).clamp_(min=52 - m, max=63)
    frac = ((m64 | (e64.clamp(max=1) << 52)) >> shift) & ((1 << m) - 1)
    # Exponent field: 0 below the normal range; inf and NaN get the top field.
    special = e64 == 0x7FF
    top = (1 << e_bits) - 1
    field_e = (e64 + (fmt.bias - 1023)).clamp_(min=0) + special * (top - 1024 - fmt.bias)
    # NaN: the canonical quiet NaN, positive (is_nan is 0 or 1: no where needed).
    is_nan = (special & (m64 != 0)).to(torch.int64)
    nan_frac = (1 << m) - 1 if fmt.nan == "all_ones" else 1 << (m - 1)
    frac = frac + is_nan * (nan_frac - frac)
    sign = sign & (1 - is_nan)
    return (sign << (e_bits + m)) | (field_e << m) | frac


def decode(bits: torch.Tensor, fmt: str | Format) -> torch.Tensor:
    """Values (float64) of bit patterns of ``fmt``; the inverse of :func:`encode`.

    >>> decode(torch.tensor([0x3C00, 0x7BFF, 0x0001]), "fp16").tolist()
    [1.0, 65504.0, 5.960464477539063e-08]
    """
    fmt = get_format(fmt)
    bits = bits.to(torch.int64)
    m, e_bits = fmt.mantissa_bits, fmt.exponent_bits
    top = (1 << e_bits) - 1
    sign = (bits >> (e_bits + m)) & 1
    field_e = (bits >> m) & top
    frac = bits & ((1 << m) - 1)
    if fmt.nan == "ieee" and fmt.has_inf and fmt.emin - m >= -1022 and top - fmt.bias - m < 1023:
        # Every value is a normal float64 (formats up to fp32), so one exact
        # product gives it; no where (slow on CPU): inf overflows to inf by a
        # shift of 1023 for the top field, and NaN is inf * 0.
        units = (frac | (field_e.clamp(max=1) << m)).to(torch.float64)
        special = field_e == top
        shift = field_e.clamp(min=1) - (fmt.bias + m) + special * (1023 - (top - fmt.bias - m))
        value = units * pow2(shift) * (~(special & (frac != 0))).to(torch.float64)
        return torch.copysign(value, (sign << 63).view(torch.float64))
    normal = field_e > 0
    units = torch.where(normal, frac + (1 << m), frac).to(torch.float64)
    value = ldexp(units, torch.where(normal, field_e - fmt.bias, fmt.emin) - m)
    if fmt.nan == "ieee":
        special = field_e == top
        value = torch.where(
            special & (frac == 0), float("inf") if fmt.has_inf else float("nan"), value
        )
        value = torch.where(special & (frac != 0), float("nan"), value)
    else:
        value = torch.where((field_e == top) & (frac == (1 << m) - 1), float("nan"), value)
    return torch.where(sign == 1, -value, value)


# A number in, a number out: under torch.compile it runs at trace time and its
# result is a constant of the graph (traced, its .item() would break the graph).
@torch.compiler.assume_constant_result
def round_scalar(value: float | Fraction, fmt: str | Format) -> float:
    """:func:`round_to_format` for one number, rounded once even from a Fraction.

    A Fraction is first converted to float64 rounding to odd (a sticky last
    bit), which makes the rounding to any format of <= 51 bits correct.

    >>> round_scalar(Fraction(1, 3), "bf16") == float.fromhex("0x1.56p-2")
    True
    """
    fmt = get_format(fmt)
    if isinstance(value, Fraction):
        approx = float(value)  # correctly rounded to float64
        inexact = Fraction(approx) != value
        odd = struct.unpack("<q", struct.pack("<d", approx))[0] & 1
        if inexact and not odd and fmt.mantissa_bits < 52:
            approx = math.nextafter(approx, math.inf if value > approx else -math.inf)
        value = approx
    return round_to_format(torch.tensor(float(value), dtype=torch.float64), fmt).item()


# Fast-inverse-square-root "magic" constants are published for FP32. Writing
# MAGIC = 1.5 * 2**M * (B - t) (Lomont 2003), the offset t is a property of the
# approximation, not of FP32, so each constant is carried to another format by
# keeping t and re-rounding with that format's M and B.
FISR_MAGIC_FP32 = 0x5F3759DF


def fisr_magic(fmt: str | Format, fp32_magic: int = FISR_MAGIC_FP32) -> int:
    """The magic constant for ``fmt`` that matches ``fp32_magic`` in FP32.

    >>> [hex(fisr_magic(f)) for f in ("fp32", "fp16", "bf16")]
    ['0x5f3759df', '0x59bb', '0x5f37']
    """
    fmt = get_format(fmt)
    fp32 = FORMATS["fp32"]
    unit32 = Fraction(3, 2) * 2**fp32.mantissa_bits
    t = fp32.bias - Fraction(fp32_magic) / unit32
    return round(Fraction(3, 2) * 2**fmt.mantissa_bits * (fmt.bias - t))
