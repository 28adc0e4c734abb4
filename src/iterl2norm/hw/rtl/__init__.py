"""RTL of the normalization unit's arithmetic, in Amaranth (``pip install
'iterl2norm[rtl]'``): floating-point operators that compute the library's
bits (:mod:`.fp`)."""

from .fp import SUPPORTED, FpAdd, FpFormat, FpMul

__all__ = ["SUPPORTED", "FpAdd", "FpFormat", "FpMul"]
