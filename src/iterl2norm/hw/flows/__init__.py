"""What is run on the designs of :mod:`iterl2norm.hw.rtl`: test vectors and
their expected results (:mod:`.vectors`), the stream protocol every driver
follows, described once (:mod:`.protocol`: the Amaranth, C++ and Verilog
drivers), the Verilog bundles with their self-checking testbenches
(:mod:`.bundle`, :mod:`.export`, :mod:`.export_rsqrt`,
:mod:`.export_unit`), compiled simulations (:mod:`.cxxrtl`,
:mod:`.cxxrtl_unit`), the exhaustive operator runs (:mod:`.exhaustive`),
synthesis to CMOS gates (:mod:`.synth`, :mod:`.unit_synthesis`) and the ECP5
place and route (:mod:`.fpga`). See docs/HARDWARE.md."""
