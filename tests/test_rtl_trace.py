"""One schedule: the RTL unit issues every operation on the cycle the model
does. ``NormUnit(cfg, trace=True)`` counts, per unit of the model, the
operations issued each cycle; ``hw.simulate(..., trace=True)`` records the
same; the two traces must agree cycle by cycle (and the bits and cycles
with them), for every preset and for random configurations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from iterl2norm.hw import PRESETS, UnitConfig, simulate
from iterl2norm.hw.flows.protocol import Transactions, Vector, run_amaranth
from iterl2norm.hw.flows.vectors import ROW_KINDS, unit_params, unit_rows, unit_vectors
from iterl2norm.hw.rtl.unit import NormUnit, unsupported_fields

RANDOM = 24  # random configurations tried (those the RTL builds are run)
FORMATS = (("fp32", "fp32"), ("bf16", "fp32"), ("bf16", "bf16"), ("fp16", "fp16"), ("fp16", "fp32"))


def rtl_trace(cfg, d: int, seed: int = 0, kinds=(0,)):
    """Vectors of the row kinds ``kinds`` (indices into ROW_KINDS) through one
    unit by the protocol's gapless run: per vector (output bits, expected
    bits, cycles, per-cycle trace, expected cycles)."""
    dut = NormUnit(cfg, trace=True)
    gamma, beta, stored = unit_params(cfg, d, seed) if cfg.affine else (None, None, None)
    rows = unit_rows(d, cfg.fmt, max(kinds) + 1, seed)[list(kinds)]
    bits, want, cycles = unit_vectors(cfg, rows, gamma, beta)
    params = [stored] * len(bits) if cfg.affine else None
    # Each vector waits for the one before to leave, so that its cycles are its own.
    vectors = [Vector(row, wait=n > 0) for n, row in enumerate(bits)]
    traces = [[] for _ in vectors]

    def probe(ctx, vector, cycle):
        assert cycle == len(traces[vector])
        issued = {u: ctx.get(s) for u, s in dut.trace.items()}
        traces[vector].append({u: n for u, n in issued.items() if n})

    results = run_amaranth(dut, Transactions.of(vectors, params, gaps=0, stalls=0), probe)
    return [(r.bits, want[n], r.cycles, traces[n], cycles) for n, r in enumerate(results)]


def model_trace(cfg, d: int, seed: int = 0):
    gamma, beta, _ = unit_params(cfg, d, seed) if cfg.affine else (None, None, None)
    rows = unit_rows(d, cfg.fmt, 1, seed)
    return simulate(rows, cfg, gamma, beta, trace=True).trace


def assert_same_schedule(cfg, d: int) -> int:
    """The RTL's bits, cycles and per-cycle issues are the model's; the number
    of cycles compared."""
    ((got, want, cycles, trace, want_cycles),) = rtl_trace(cfg, d, seed=d)
    assert np.array_equal(got, want), (cfg.name, d, np.nonzero(got != want)[0][:5])
    assert cycles == want_cycles, (cfg.name, d, cycles, want_cycles)
    expected = model_trace(cfg, d, seed=d)
    # The model's trace ends on the last issue; the RTL's runs to the last output.
    assert len(trace) == cycles + 1 >= len(expected)
    expected += [{}] * (len(trace) - len(expected))
    for t, (rtl, model) in enumerate(zip(trace, expected, strict=True)):
        assert rtl == model, f"{cfg.name}, d={d}, cycle {t}: RTL issues {rtl}, the model {model}"
    return len(trace)


def random_configs(count: int, seed: int = 0, lanes=(2, 4, 8, 16, 32)) -> list[UnitConfig]:
    """Random configurations the RTL builds, over its fields."""
    g = torch.Generator().manual_seed(seed)

    def pick(choices):
        return choices[int(torch.randint(0, len(choices), (1,), generator=g))]

    out, tries = [], 0
    while len(out) < count:
        tries += 1
        fmt, acc = pick(FORMATS)
        method = pick(("iterl2norm", "iterl2norm", "fisr", "exact"))
        la = pick((1, 2, 3))
        cfg = UnitConfig(
            name=f"random-{tries}",
            lanes=pick(lanes),
            mul_latency=pick((1, 2, 3)),
            add_latency=la,
            exp_latency=pick((1, 2)),
            reduction=pick(("tree", "tree", "accumulators")),
            acc_slots=pick((None, la, la + 1, max(la - 1, 1), 1)),
            fmt=fmt,
            acc_fmt=acc,
            statistics=pick(("l2", "two-pass", "three-pass")),
            method=method,
            steps=pick((0, 1, 2, 3)),
            init=pick(("exponent", "exponent+mantissa", "magic")),
            schedule=pick((None, None, "table", "minimax")) if method == "iterl2norm" else None,
            affine=pick((False, True)),
            sqrt_latency=pick((1, 4)),
            div_latency=pick((1, 3)),
        )
        if not unsupported_fields(cfg):
            out.append(cfg)
    return out


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_issues_as_the_model_does(name):
    assert_same_schedule(PRESETS[name], 64 + 36)  # a last beat that is not full


NARROW = random_configs(RANDOM, lanes=(1, 2, 4, 8))  # up to 8 lanes: quick to simulate
WIDE = random_configs(RANDOM, seed=1)  # up to 32 lanes


@pytest.mark.parametrize("cfg", NARROW[:16], ids=lambda c: c.name)
def test_random_configurations_issue_as_the_model_does(cfg):
    # Every field but the width varies here; -m slow runs the rest of the
    # narrow ones and as many again up to 32 lanes.
    assert_same_schedule(cfg, 64 + 3 * cfg.lanes + 1)


@pytest.mark.slow
@pytest.mark.parametrize("cfg", NARROW[16:] + WIDE, ids=lambda c: c.name)
def test_more_random_configurations_issue_as_the_model_does(cfg):
    assert_same_schedule(cfg, 64 + 3 * cfg.lanes + 1)


@pytest.mark.parametrize("statistics", ["l2", "two-pass", "three-pass"])
@pytest.mark.parametrize("method", ["iterl2norm", "exact"])
def test_fp16_into_fp32_every_row_kind(statistics, method):
    # fp32 sums of fp16 squares: rows near fp16's largest value (their squares
    # overflow fp16, not fp32) and smallest normal, whose r = a 2^-j lies
    # outside fp16: 2^-j joins the lanes' exponent offset.
    cfg = PRESETS["paper-l2-fp32"].with_(
        fmt="fp16", acc_fmt="fp32", lanes=4, statistics=statistics, method=method
    )
    kinds = range(len(ROW_KINDS))
    for kind, (got, want, cycles, _, want_cycles) in zip(
        kinds, rtl_trace(cfg, 70, 1, kinds), strict=True
    ):
        assert np.array_equal(got, want), (ROW_KINDS[kind], np.nonzero(got != want)[0][:5])
        assert cycles == want_cycles


def every_kind_of_configuration():
    """One configuration per combination of the model's choice fields (two
    lanes, the latencies varied with them), valid or not."""
    import itertools

    from iterl2norm.hw.model.config import METHODS, REDUCTIONS, STATISTICS
    from iterl2norm.schedules import SCHEDULES

    formats = [*FORMATS, ("fp32", "fp64")]
    for n, (formats_, statistics, reduction, mode, method, how, affine, slots) in enumerate(
        itertools.product(
            formats,
            STATISTICS,
            REDUCTIONS,
            ("scalar", "vector"),
            METHODS,
            [("init", i) for i in ("exponent", "exponent+mantissa", "magic")]
            + [("schedule", s) for s in SCHEDULES],
            (False, True),
            (1, None),
        )
    ):
        fields = dict(
            lanes=2,
            fmt=formats_[0],
            acc_fmt=formats_[1],
            statistics=statistics,
            reduction=reduction,
            mode=mode,
            method=method,
            affine=affine,
            acc_slots=slots,
            add_latency=1 + n % 3,
            mul_latency=1 + n % 2,
            steps=n % 3,
            **{how[0]: how[1]},
        )
        try:
            yield UnitConfig(**fields)
        except ValueError:
            continue


def test_the_rtl_builds_every_configuration_the_model_accepts():
    # The RTL refuses only what docs/HARDWARE.md lists, vector mode and an
    # accumulator format its operators lack, and elaborates everything else.
    from amaranth.hdl import Fragment

    configs = list(every_kind_of_configuration())
    g = torch.Generator().manual_seed(0)
    sample = set(torch.randperm(len(configs), generator=g)[:40].tolist())
    refused = 0
    for n, cfg in enumerate(configs):
        reasons = unsupported_fields(cfg)
        expected = (["mode"] if cfg.mode == "vector" else []) + (
            ["acc_fmt"] if cfg.acc_fmt == "fp64" else []
        )
        assert [r.split("=")[0] for r in reasons] == expected, (cfg, reasons)
        if reasons:
            refused += 1
            with pytest.raises(ValueError, match=reasons[0].split(" ")[0].replace("(", r"\(")):
                NormUnit(cfg)
        elif n in sample:
            Fragment.get(NormUnit(cfg), None)
    assert 0 < refused < len(configs)


@pytest.mark.parametrize("reduction", ["tree", "accumulators"])
def test_a_queued_accumulator_under_gaps_and_stalls_gives_the_same_bits(reduction):
    # One slot on a 3-cycle adder: the arrivals queue; input gaps change when
    # they arrive, output stalls when the vector leaves; the bits stay.
    cfg = PRESETS["fast-layernorm-bf16"].with_(
        lanes=4, acc_slots=1, add_latency=3, reduction=reduction
    )
    d, kinds = 77, range(len(ROW_KINDS))
    gamma, beta, stored = unit_params(cfg, d, 3)
    bits, want, _ = unit_vectors(cfg, unit_rows(d, cfg.fmt, len(kinds), 3), gamma, beta)
    results = run_amaranth(
        NormUnit(cfg), Transactions.of(list(bits), [stored] * len(bits), gaps=0.4, stalls=0.3)
    )
    for kind, r in zip(kinds, results, strict=True):
        assert np.array_equal(r.bits, want[kind]), ROW_KINDS[kind]
