"""The whole normalization unit in a compiled simulation (CXXRTL and g++,
:mod:`iterl2norm.hw.flows.cxxrtl_unit`): its bits are hw.reference's and its
cycles hw.simulate's, and it agrees with Amaranth's simulator (both driven
by :mod:`iterl2norm.hw.flows.protocol`). Slow run (``pytest -m slow
tests/test_rtl_unit_cxxrtl.py``): 1,000 vectors of every preset the RTL
builds, bit- and cycle-exact."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
from rtl_support import compiled_unit, require_compiled_simulation

from iterl2norm.hw import PRESETS
from iterl2norm.hw.flows.vectors import ROW_KINDS, unit_params, unit_rows, unit_vectors
from iterl2norm.hw.rtl.unit import NormUnit, unsupported_fields

BUILT_PRESETS = [name for name, cfg in PRESETS.items() if not unsupported_fields(cfg)]
DIMS = (64, 128, 768, 1000, 1024)
SEEDS = range(25)  # 25 seeds x 8 row kinds x 5 dims: 1,000 vectors a preset
# The default run's unit: a LayerNorm with its affine part on 4 lanes, whose
# compile (shared with test_rtl_protocol) takes seconds, not a minute.
SMALL = PRESETS["fast-layernorm-bf16"].with_(lanes=4)


class Case(NamedTuple):
    d: int
    kind: str
    seed: int
    bits: np.ndarray  # the input
    want: np.ndarray  # hw.reference's output
    cycles: int  # hw.simulate's latency
    params: tuple | None  # an affine unit's (sqrt(d) gamma, beta) bits


def cases(cfg, dims, seeds) -> list[Case]:
    """One row of every kind for each d and seed, with its expected bits."""
    out, kinds = [], list(enumerate(ROW_KINDS))
    for d in dims:
        for seed in seeds:
            gamma, beta, stored = unit_params(cfg, d, seed) if cfg.affine else (None, None, None)
            rows = unit_rows(d, cfg.fmt, len(ROW_KINDS), seed)
            bits, want, cycles = unit_vectors(cfg, rows, gamma, beta)
            out += [Case(d, k, seed, bits[n], want[n], cycles, stored) for n, k in kinds]
    return out


def run(binary, cfg, chosen: list[Case], **patterns):
    from iterl2norm.hw.flows.cxxrtl_unit import run_unit_compiled

    params = [c.params for c in chosen] if cfg.affine else None
    return run_unit_compiled(binary, cfg, [(c.d, c.bits) for c in chosen], params, **patterns)


def mismatches(chosen: list[Case], results, cycles: bool = True) -> list[tuple]:
    """The cases whose bits (NaNs included) or, with ``cycles``, latencies differ."""
    bad = []
    for case, (got, took) in zip(chosen, results, strict=True):
        wrong = np.nonzero(got != case.want)[0]
        if len(wrong) or (cycles and took != case.cycles):
            bad.append((case.d, case.kind, case.seed, wrong[:5].tolist(), took, case.cycles))
    return bad


def test_every_row_kind_and_amaranths_simulation(tmp_path_factory):
    from test_rtl_unit import run_unit

    binary = compiled_unit(SMALL, tmp_path_factory)
    chosen = cases(SMALL, (64, 1000), seeds=(7,))
    # with random gaps and stalls (the bits), then gapless (bits and cycles)
    stalled = run(binary, SMALL, chosen)
    assert not mismatches(chosen, stalled, cycles=False)
    assert not mismatches(chosen, run(binary, SMALL, chosen, gaps=0, stalls=0))
    # The same bits and cycles, stalls included, as Amaranth's simulator on
    # the same transactions (seconds a vector: a short one and a long one).
    few = [chosen[0], chosen[len(ROW_KINDS) + 1]]
    compiled = run(binary, SMALL, few)
    amaranth = run_unit(
        NormUnit(SMALL), [(c.d, c.bits) for c in few], params=[c.params for c in few]
    )
    for (got, cycles), (want, want_cycles) in zip(amaranth, compiled, strict=True):
        assert (got == want).all() and cycles == want_cycles


@pytest.mark.slow
@pytest.mark.parametrize("name", BUILT_PRESETS)
def test_a_thousand_vectors_of_every_preset(tmp_path, name):
    require_compiled_simulation()
    from iterl2norm.hw.flows.cxxrtl_unit import compile_unit

    cfg = PRESETS[name]
    # -O0 here too: 1,000 vectors run in a minute or two at -O0, while -O1's
    # compile alone takes minutes for a 16- or 32-lane unit.
    binary = compile_unit(NormUnit(cfg), tmp_path, optimization="-O0")
    chosen = cases(cfg, DIMS, SEEDS)
    # (d, row kind, seed, first wrong elements, cycles, expected cycles)
    bad = mismatches(chosen, run(binary, cfg, chosen, gaps=0, stalls=0))
    assert not bad, (name, len(bad), bad[:10])
    bad = mismatches(chosen, run(binary, cfg, chosen), cycles=False)  # stalled: the bits
    assert not bad, (name, len(bad), bad[:10])
