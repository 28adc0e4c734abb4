"""RTL of the normalization unit, in Amaranth (``pip install 'iterl2norm[rtl]'``).

Floating-point multiplier and adder that compute the library's bits
(:mod:`.fp`), the exponent-field blocks (:mod:`.expo`), the scalar unit
(:mod:`.rsqrt_unit`; the exact method's square root, :mod:`.sqrt_unit`) and
the whole normalization unit (:mod:`.unit`); their Verilog with
self-checking testbenches and test vectors (:mod:`.export`,
:mod:`.export_rsqrt`, :mod:`.export_unit`), their synthesis to CMOS gates
(:mod:`.synth`), an ECP5 place and route (:mod:`.fpga`) and compiled
simulations for millions of vectors (:mod:`.cxxrtl`, :mod:`.cxxrtl_unit`).
See docs/HARDWARE.md.
"""

from .fp import SUPPORTED, FpAdd, FpConvert, FpDiv, FpFormat, FpMul

__all__ = ["SUPPORTED", "FpAdd", "FpConvert", "FpDiv", "FpFormat", "FpMul"]
