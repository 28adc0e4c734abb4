"""The designs, in Amaranth (``pip install 'iterl2norm[rtl]'``).

Floating-point multiplier, adder, divider and conversions that compute the
library's bits (:mod:`.fp`), the exponent-field blocks (:mod:`.expo`), the
scalar units (:mod:`.rsqrt_unit`; the exact method's square root,
:mod:`.sqrt_unit`; the sqrt + divide comparison, :mod:`.sqrt_divide`), the
operators with streams (:mod:`.streams`) and the whole normalization unit
(:mod:`.unit`). Each follows the model's schedule
(:mod:`iterl2norm.hw.model.schedule`); none imports a flow. The flows that
test, simulate, synthesize and place them are in :mod:`iterl2norm.hw.flows`.
See docs/HARDWARE.md.
"""

from .fp import SUPPORTED, FpAdd, FpConvert, FpDiv, FpFormat, FpMul

__all__ = ["SUPPORTED", "FpAdd", "FpConvert", "FpDiv", "FpFormat", "FpMul"]
