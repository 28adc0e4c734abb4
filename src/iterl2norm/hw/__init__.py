"""A cycle-accurate, bit-accurate model of an IterL2Norm normalization unit.

:class:`UnitConfig` describes the architecture (lanes, unit latencies, the
reduction, formats, the statistics schedule, the iteration); :data:`PRESETS`
names a few, two of them set to the paper's macro. :func:`simulate` runs the
unit cycle by cycle on vectors and returns the output bits, the cycle count
and a per-stage breakdown; :func:`reference` computes the same bits without
timing, as the golden model. See docs/HARDWARE.md.
"""

from .model.config import D_MAX, D_MIN, PAPER_CYCLES, PRESETS, UnitConfig, check_d, get_preset
from .model.reference import reference
from .model.simulator import SimResult, simulate

__all__ = [
    "D_MAX",
    "D_MIN",
    "PAPER_CYCLES",
    "PRESETS",
    "SimResult",
    "UnitConfig",
    "check_d",
    "get_preset",
    "reference",
    "simulate",
]
