"""The numeric policy of a computation: where each arithmetic result is rounded.

Every algorithm in this package is written once, against :class:`Arithmetic`.
Each operation result passes through ``rnd`` (datapath format) or ``rnd_acc``
(accumulation format). In the native policy those are the identity and the
carrier dtype's own IEEE arithmetic does the rounding; in the emulated policy
they round to the target format, which makes the result of every operation
the correctly rounded result in that format. The carrier is float64, or
float32 for 8- and 16-bit datapaths that accumulate in float32 or narrower
(with PyTorch's own, exhaustively checked, casts doing the rounding):

- products of two values of at most 26 (float64) or 12 (float32) significant
  bits are exact in the carrier, so rounding them afterwards rounds once;
- sums, quotients and square roots of values of a format with p bits are
  rounded twice (carrier, then the format), which is harmless when the
  carrier has at least 2p + 2 bits (Figueroa 1995): p <= 24 in float64,
  p <= 11 in float32; and
- the one mixed-width operation, ``datapath - accumulator``, goes through
  :meth:`Arithmetic.sub_once`, which rounds to odd in the carrier first.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

import torch

from .formats import FORMATS, Format, get_format, ldexp, round_scalar, round_to_format, sqrt_rn

_FP32, _FP64 = FORMATS["fp32"], FORMATS["fp64"]


@torch.library.custom_op("iterl2norm::cast_round", mutates_args=(), device_types="cpu")
def cast_round(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` rounded to ``dtype`` by torch's cast, in ``x``'s dtype.

    An operator, for torch.compile: Inductor drops a down-and-up cast pair as
    a loss of precision it need not keep (unless emulate_precision_casts is
    set), which would silently skip the emulation's rounding. Eager calls do
    the casts directly."""
    return x.to(dtype).to(x.dtype)


@cast_round.register_fake
def _(x, dtype):
    return torch.empty_like(x)


def _round_ste(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    # Rounding has zero derivative almost everywhere; pass gradients straight
    # through so the emulated path can still be differentiated (as in QAT).
    if x.dtype == torch.float64:
        r = round_to_format(x.detach(), fmt)
    elif fmt.bits < 32:  # float32 carrier: torch's cast rounds once, nearest even
        if torch.compiler.is_compiling():
            r = cast_round(x.detach(), fmt.torch_dtype)
        else:
            r = x.detach().to(fmt.torch_dtype).to(x.dtype)
    else:  # a float32 value is already one of float32's
        return x
    if x.requires_grad:
        return x + (r - x).detach()
    return r


def _fits_float32_carrier(fmt: Format, acc: Format) -> bool:
    """8- and 16-bit datapaths (p <= 11) accumulating in float32 or narrower,
    in formats torch can cast to."""
    return (
        fmt.bits <= 16 and _FP32.holds(acc) and all(f.torch_dtype is not None for f in (fmt, acc))
    )


def native_carrier(dtype: torch.dtype) -> torch.dtype:
    """The dtype the native path computes an input of ``dtype`` in: float64
    for float64, else float32 (PyTorch's "opmath" for 16-bit inputs)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class Arithmetic:
    """Datapath format, accumulation format, and the dtype that carries values.

    Build one with :meth:`resolve`.
    """

    fmt: Format
    acc: Format
    carrier: torch.dtype
    emulated: bool

    @classmethod
    def resolve(cls, dtype: torch.dtype, fmt=None, acc_fmt=None) -> Arithmetic:
        """The policy for an input of ``dtype`` with the user's ``fmt``/``acc_fmt``.

        ``fmt=None`` is the native fast path: 16-bit inputs compute in float32
        (PyTorch's "opmath", as ``F.layer_norm`` does), others in their own dtype.
        Memoized: every call of a norm resolves its policy (errors are not cached).
        """
        try:
            hash((fmt, acc_fmt))
        except TypeError:  # an unhashable argument (its error comes from _resolve)
            return cls._resolve(dtype, fmt, acc_fmt)
        return _resolve(cls, dtype, fmt, acc_fmt)

    @classmethod
    def _resolve(cls, dtype: torch.dtype, fmt, acc_fmt) -> Arithmetic:
        if fmt is None:
            if acc_fmt is not None:
                raise ValueError(
                    f"acc_fmt={acc_fmt!r} needs fmt: the native path "
                    "accumulates in its own compute dtype"
                )
            native = _FP64 if dtype == torch.float64 else _FP32
            return cls(native, native, native_carrier(dtype), False)
        fmt = get_format(fmt)
        acc = get_format(acc_fmt) if acc_fmt is not None else (_FP32 if fmt.bits <= 16 else fmt)
        if not acc.holds(fmt):
            raise ValueError(
                f"acc_fmt={acc.name!r} cannot hold every value of fmt={fmt.name!r}; "
                "the accumulator must be at least as wide as the datapath"
            )
        carrier = torch.float32 if _fits_float32_carrier(fmt, acc) else torch.float64
        return cls(fmt, acc, carrier, True)

    # Rounding of results ----------------------------------------------------

    def rnd(self, x: torch.Tensor) -> torch.Tensor:
        """Round an operation result to the datapath format."""
        return _round_ste(x, self.fmt) if self.emulated else x

    def quantize(self, v: torch.Tensor) -> torch.Tensor:
        """Any floating tensor as carrier values of the datapath format, rounded
        once from ``v``'s own dtype (a float64 input is not first squeezed into
        a float32 carrier). Non-finite values stay as they are, so their rows
        come out NaN even in a format that saturates (FP8 E4M3 would turn inf
        into 448)."""
        if not self.emulated:
            return v.to(self.carrier)
        if v.dtype == torch.float64 and self.carrier != torch.float64:
            q = _round_ste(v, self.fmt).to(self.carrier)  # exact: fmt fits the carrier
        else:
            q = self.rnd(v.to(self.carrier))
        vc = v.to(self.carrier)
        return torch.where(torch.isfinite(vc), q, vc)

    def rnd_acc(self, x: torch.Tensor) -> torch.Tensor:
        """Round an operation result to the accumulation format."""
        return _round_ste(x, self.acc) if self.emulated else x

    def const(self, value: float | Fraction) -> float:
        """A constant as the datapath holds it (rounded once, even from a Fraction)."""
        return round_scalar(value, self.fmt)

    def const_acc(self, value: float | Fraction) -> float:
        return round_scalar(value, self.acc)

    # Operations with a defined rounding -------------------------------------

    def sum_acc(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the last dimension in the accumulation format, keepdim.

        Emulated: a balanced binary adder tree, leaves padded with zeros to a
        power of two, each level rounded; this order defines the bits.
        (..., d) -> (..., 1)
        """
        if not self.emulated:
            return x.sum(dim=-1, keepdim=True)
        d = x.shape[-1]
        width = 1 << max(d - 1, 0).bit_length()
        if width != d:
            x = torch.nn.functional.pad(x, (0, width - d))
        while x.shape[-1] > 1:
            x = self.rnd_acc(x[..., 0::2] + x[..., 1::2])
        return x

    def sub_once(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a - b`` rounded once to the datapath format, for operands of any width.

        The carrier's rounding followed by a narrow rounding can round twice
        when an operand is wider than the target. Rounding the carrier's
        difference to odd (sticky last bit, from the exact TwoSum error) first
        makes the second rounding the correct one for any target at least two
        bits narrower than the carrier.

        """
        if not self.emulated or self.fmt.mantissa_bits >= 52:
            return a - b  # the carrier's own subtraction rounds once
        s = a - b
        # Knuth's TwoSum: s + err == a - b exactly.
        virtual_b = s - a
        err = (a - (s - virtual_b)) - (b + virtual_b)
        bits = torch.int64 if s.dtype == torch.float64 else torch.int32
        even = (s.detach().view(bits) & 1) == 0

        toward = torch.where(err > 0, float("inf"), float("-inf")).to(s.dtype)
        s_odd = torch.where((err != 0) & even, torch.nextafter(s.detach(), toward), s.detach())
        if s.requires_grad:
            s_odd = s + (s_odd - s).detach()
        return self.rnd(s_odd)

    def sqrt(self, x: torch.Tensor) -> torch.Tensor:
        """The square root rounded once to the datapath format: the carrier's
        correctly rounded root (never ``torch.sqrt``'s, which is not correctly
        rounded on every CPU), then the datapath's rounding, which by the rule
        above rounds the exact root once."""
        return self.rnd(sqrt_rn(x))

    def scale(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        """``x * 2**n`` for integer tensor ``n``: exact whenever the result is normal."""
        return ldexp(x, n)

    def scaled_const(self, value: float, n: torch.Tensor) -> torch.Tensor:
        """``value * 2**n`` (shaped like ``n``), computed exactly in float64 and then
        brought to the carrier, so a constant far outside the carrier's range
        (eps = 1e-80 in float32) still enters correctly once it is scaled."""
        exact = ldexp(torch.full(n.shape, float(value), dtype=torch.float64), n)
        return exact.to(self.carrier)


@functools.lru_cache(maxsize=256)
def _resolve(cls, dtype, fmt, acc_fmt) -> Arithmetic:
    return cls._resolve(dtype, fmt, acc_fmt)
