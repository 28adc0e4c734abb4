"""The whole normalization unit in a compiled simulation (CXXRTL and g++,
:mod:`iterl2norm.hw.flows.cxxrtl_unit`): its bits are hw.reference's and its
cycles hw.simulate's, and it agrees with Amaranth's simulator. Slow run
(``pytest -m slow tests/test_rtl_unit_cxxrtl.py``): 1,000 vectors of every
preset the RTL builds, bit- and cycle-exact."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pytest
import torch
from rtl_support import require_compiled_simulation

from iterl2norm.formats import decode
from iterl2norm.hw import PRESETS
from iterl2norm.hw.flows.vectors import ROW_KINDS, unit_params, unit_rows, unit_vectors
from iterl2norm.hw.rtl.unit import NormUnit, unsupported_fields

BUILT_PRESETS = [name for name, cfg in PRESETS.items() if not unsupported_fields(cfg)]
DIMS = (64, 128, 768, 1000, 1024)
SEEDS = range(25)  # 25 seeds x 8 row kinds x 5 dims: 1,000 vectors a preset


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


def run(binary, cfg, chosen: list[Case]):
    from iterl2norm.hw.flows.cxxrtl_unit import run_unit_compiled

    params = [c.params for c in chosen] if cfg.affine else None
    return run_unit_compiled(binary, cfg, [(c.d, c.bits) for c in chosen], params)


def mismatches(cfg, chosen: list[Case], results) -> list[tuple]:
    """The cases whose bits (a NaN matches any NaN) or cycles differ."""
    bad = []
    for case, (got, cycles) in zip(chosen, results, strict=True):
        nan = torch.isnan(decode(torch.from_numpy(case.want), cfg.fmt)).numpy()
        got_nan = torch.isnan(decode(torch.from_numpy(got), cfg.fmt)).numpy()
        wrong = np.nonzero(np.where(nan, ~got_nan, got != case.want))[0]
        if len(wrong) or cycles != case.cycles:
            bad.append((case.d, case.kind, case.seed, wrong[:5].tolist(), cycles, case.cycles))
    return bad


def test_every_row_kind_and_amaranths_simulation(tmp_path):
    require_compiled_simulation()
    from test_rtl_unit import run_unit

    from iterl2norm.hw.flows.cxxrtl_unit import compile_unit

    cfg = PRESETS["fast-l2-fp32"]
    # -O0: g++ takes some 40 s where -O1 takes minutes; 16 vectors run in seconds.
    binary = compile_unit(NormUnit(cfg), tmp_path, optimization="-O0")
    chosen = cases(cfg, (64, 1000), seeds=(7,))
    results = run(binary, cfg, chosen)
    assert not mismatches(cfg, chosen, results)
    # The same bits, NaN payloads included, and cycles as Amaranth's simulator
    # (seconds a vector: a short one and a long one).
    few = [0, len(ROW_KINDS) + 1]
    amaranth = run_unit(NormUnit(cfg), [(chosen[n].d, chosen[n].bits) for n in few])
    for n, (got, cycles) in zip(few, amaranth, strict=True):
        assert (results[n][0] == got).all() and results[n][1] == cycles, (chosen[n].d, n)


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
    bad = mismatches(cfg, chosen, run(binary, cfg, chosen))
    # (d, row kind, seed, first wrong elements, cycles, expected cycles)
    assert not bad, (name, len(bad), bad[:10])
