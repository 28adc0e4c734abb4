"""A compiled simulation of the whole normalization unit
:class:`~iterl2norm.hw.rtl.unit.NormUnit`: Yosys's CXXRTL back-end and g++
(through :func:`.cxxrtl._compile`), driven by the protocol's C++ driver
(:func:`.protocol.cxx_driver`), the same protocol as Amaranth's and the
Verilog testbench's drivers, cycle for cycle.

Amaranth's Python simulator takes seconds a vector for the unit; the compiled
one runs hundreds a second, so thousands of vectors a preset can be checked
bit- and cycle-exact against ``hw.reference`` and ``hw.simulate``.
"""

from __future__ import annotations

from pathlib import Path

from ..rtl.unit import NormUnit
from .cxxrtl import _compile
from .protocol import Ports, Transactions, cxx_driver, run_cxxrtl

__all__ = ["compile_unit", "run_unit_compiled"]

TOP = "iterl2norm_unit"


def compile_unit(unit: NormUnit, workdir: str | Path, optimization: str = "-O1") -> Path:
    """Compile ``unit`` to the executable :func:`run_unit_compiled` runs.
    ``optimization``: g++'s level; "-O0" compiles some five times faster and
    runs some twenty times slower, for a few vectors."""
    return _compile(unit, workdir, TOP, cxx_driver(Ports.of(unit)), optimization)


def run_unit_compiled(binary: str | Path, cfg, vectors, params=None, **patterns):
    """Stream each (d, bits) vector through the compiled unit: a list of
    (outputs, cycles), outputs an int64 array of d bit patterns. ``params``:
    for an affine unit, per vector the (sqrt(d) gamma, beta) bits it loads
    first (as ``unit_params`` gives them). ``cfg`` is the unit's
    configuration; ``patterns``: :class:`.protocol.Transactions`' gaps,
    stalls and seed (by default both on: the cycles are the model's only
    with ``gaps=0, stalls=0``)."""
    if bool(cfg.affine) != (params is not None):
        raise ValueError(f"an affine unit needs params, another none ({cfg.name!r})")
    transactions = Transactions.of(vectors, params, **patterns)
    ports = unit_ports(cfg)
    return [(r.bits, r.cycles) for r in run_cxxrtl(binary, transactions, ports)]


def unit_ports(cfg) -> Ports:
    """The whole unit's stream layout, without building it."""
    from ..model.config import D_MAX, get_preset
    from ..rtl.fp import FpFormat

    cfg = get_preset(cfg)
    w = FpFormat.of(cfg.fmt).width
    return Ports(cfg.lanes, w, w, D_MAX.bit_length(), True, bool(cfg.affine))
