"""RTL of the normalization unit, in Amaranth (``pip install 'iterl2norm[rtl]'``).

So far its arithmetic: floating-point multiplier and adder that compute the
library's bits (:mod:`.fp`), their Verilog with a self-checking testbench and
test vectors (:mod:`.export`), their synthesis to CMOS gates (:mod:`.synth`)
and a compiled simulation for millions of vectors (:mod:`.cxxrtl`). See
docs/HARDWARE.md.
"""

from .fp import SUPPORTED, FpAdd, FpConvert, FpFormat, FpMul

__all__ = ["SUPPORTED", "FpAdd", "FpConvert", "FpFormat", "FpMul"]
