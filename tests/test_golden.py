"""The emulation equals an independent exact-arithmetic model, bit for bit.

tests/exact_reference.py implements docs/ALGORITHM.md with Python Fractions
and its own round-to-nearest-even. Every format, method, mode and norm must
agree with it exactly (zero tolerance) on vectors that exercise subnormals,
zeros, huge dynamic range, odd lengths and eps-dominated rows.
"""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

import exact_reference as ref
from iterl2norm import (
    exact_normalize,
    fisr_normalize,
    invsqrt2_normalize,
    iterl2norm,
    layer_norm,
    rms_norm,
    sqrt23_normalize,
)
from iterl2norm.formats import FORMATS, fisr_magic, round_to_format
from iterl2norm.schedules import SCHEDULES

# The peers' constants as their authors published them, written here rather
# than imported, so that a typo in the library's copy fails this model.
# InvSqrt2: C. J. Walczyk, L. V. Moroz, J. L. Cieslinski, Entropy 23(1):86, 2021.
INVSQRT2_MAGIC_FP32 = 0x5F376908
INVSQRT2_KS = (1.50087896, 1.50000057)
# SQRT_23-bits (Kokosinski, Moroz et al., 2024): magic 0x5F1110A0, then
# r * (k1 + c (k2 + c)) with c = -q r^2.
SQRT23_MAGIC_FP32 = 0x5F1110A0
SQRT23_COEFFS = (2.2825186, 2.2533049)

# (fmt, acc_fmt or None for the default)
POLICIES = [
    ("fp32", None),
    ("fp16", None),
    ("bf16", None),
    ("fp8_e4m3", None),
    ("fp8_e5m2", None),
    ("fp64", None),
    ("fp32", "fp64"),
    ("fp16", "fp16"),
    ("bf16", "bf16"),
]
DIMS = (1, 2, 3, 7, 16, 33, 100)


def default_acc(fmt: str, acc: str | None) -> str:
    return acc or ("fp32" if FORMATS[fmt].bits <= 16 else fmt)


def sample_rows(fmt: str, d: int, seed: int) -> torch.Tensor:
    """Rows of fmt values: a Gaussian row, a row spanning many binades with
    subnormals and zeros, a row with one huge outlier, and a tiny row."""
    gen = torch.Generator().manual_seed(seed)
    f = FORMATS[fmt]
    span = min(f.emax - 2, 12)
    gauss = torch.randn(d, generator=gen, dtype=torch.float64)
    wide = gauss * torch.exp2(torch.randint(-span, span, (d,), generator=gen)).double()
    wide[:: max(d // 3, 1)] = 0.0
    wide[-1] = f.smallest_subnormal * 3 if d > 1 else wide[-1]
    outlier = gauss.clone()
    # fp64 rows spanning more than ~1000 binades round their subnormal outputs
    # twice (the float64 carrier has no wider format; docs/ALGORITHM.md).
    outlier[0] = 2.0 ** min(f.emax - 1, 500)
    tiny = gauss * f.smallest_normal * 4
    rows = torch.stack([gauss, wide, outlier, tiny])
    return round_to_format(rows, fmt)


def fractions(row: torch.Tensor) -> list[Fraction]:
    return [Fraction(v) for v in row.tolist()]


def assert_rows_equal(ours: torch.Tensor, expected: list[list], context: str):
    for i, (got, want) in enumerate(zip(ours.tolist(), expected, strict=True)):
        want = [float(w) for w in want]
        assert got == want, f"{context}: row {i} differs\n ours {got}\n want {want}"


ITER_CASES = [
    # (label, library kwargs, reference method)
    ("paper", {"steps": 5}, {"kind": "iter", "init": "exponent", "rates": [0.5] * 5}),
    ("0 steps", {"steps": 0}, {"kind": "iter", "init": "exponent", "rates": []}),
    (
        "e+m",
        {"steps": 3, "init": "exponent+mantissa"},
        {"kind": "iter", "init": "exponent+mantissa", "rates": [0.5] * 3},
    ),
    ("magic", {"steps": 2, "init": "magic"}, {"kind": "iter", "init": "magic", "rates": [0.5] * 2}),
    (
        "rates",
        {"steps": 3, "update_rate": (0.75, 0.3, 0.5)},
        {"kind": "iter", "init": "exponent", "rates": [0.75, 0.3, 0.5]},
    ),
    (
        "vector",
        {"steps": 4, "mode": "vector"},
        {"kind": "vector", "init": "exponent", "rates": [0.5] * 4},
    ),
    (
        "vector magic",
        {"steps": 2, "mode": "vector", "init": "magic", "update_rate": 0.25},
        {"kind": "vector", "init": "magic", "rates": [0.25] * 2},
    ),
]


@pytest.mark.parametrize(("fmt", "acc"), POLICIES)
@pytest.mark.parametrize("name", [n for n in SCHEDULES if n != "paper"])
def test_schedules_equal_exact_model(fmt, acc, name):
    F, A = FORMATS[fmt], FORMATS[default_acc(fmt, acc)]
    schedule = SCHEDULES[name]
    for steps in (0, 1, 3):
        method = {
            "kind": "schedule",
            "start": schedule.start,
            "table": schedule.table,
            "steps": schedule.step_constants(steps),
            "magic": fisr_magic(F),
        }
        for d in (1, 7, 33):
            x = sample_rows(fmt, d, seed=300 + d)
            ours = iterl2norm(x, steps=steps, schedule=name, fmt=fmt, acc_fmt=acc)
            expected = [ref.normalize(fractions(row), F, A, method) for row in x]
            assert_rows_equal(ours, expected, f"{fmt}/{acc} {name} steps={steps} d={d}")


@pytest.mark.parametrize(("fmt", "acc"), POLICIES)
@pytest.mark.parametrize(("label", "kwargs", "method"), ITER_CASES, ids=[c[0] for c in ITER_CASES])
def test_iterl2norm_equals_exact_model(fmt, acc, label, kwargs, method):
    F, A = FORMATS[fmt], FORMATS[default_acc(fmt, acc)]
    method = {**method, "magic": fisr_magic(F)}
    for d in DIMS:
        x = sample_rows(fmt, d, seed=d)
        ours = iterl2norm(x, fmt=fmt, acc_fmt=acc, **kwargs)
        expected = [ref.normalize(fractions(row), F, A, method) for row in x]
        assert_rows_equal(ours, expected, f"{fmt}/{acc} {label} d={d}")


BASELINES = [
    ("exact", lambda x, **kw: exact_normalize(x, **kw), lambda F: {"kind": "exact"}),
    (
        "fisr1",
        lambda x, **kw: fisr_normalize(x, **kw),
        lambda F: {"kind": "newton", "magic": fisr_magic(F), "ks": [1.5]},
    ),
    (
        "fisr2",
        lambda x, **kw: fisr_normalize(x, steps=2, **kw),
        lambda F: {"kind": "newton", "magic": fisr_magic(F), "ks": [1.5, 1.5]},
    ),
    (
        "invsqrt2",
        lambda x, **kw: invsqrt2_normalize(x, steps=3, **kw),
        lambda F: {
            "kind": "newton",
            "magic": fisr_magic(F, INVSQRT2_MAGIC_FP32),
            "ks": [*INVSQRT2_KS, 1.5],
        },
    ),
    (
        "sqrt23",
        lambda x, **kw: sqrt23_normalize(x, steps=3, **kw),
        lambda F: {
            "kind": "cubic",
            "magic": fisr_magic(F, SQRT23_MAGIC_FP32),
            "steps": 3,
            "coeffs": SQRT23_COEFFS,
        },
    ),
]


@pytest.mark.parametrize(("fmt", "acc"), POLICIES[:6])
@pytest.mark.parametrize(("label", "fn", "method"), BASELINES, ids=[b[0] for b in BASELINES])
def test_baselines_equal_exact_model(fmt, acc, label, fn, method):
    F, A = FORMATS[fmt], FORMATS[default_acc(fmt, acc)]
    for d in DIMS:
        x = sample_rows(fmt, d, seed=100 + d)
        ours = fn(x, fmt=fmt, acc_fmt=acc)
        expected = [ref.normalize(fractions(row), F, A, method(F)) for row in x]
        assert_rows_equal(ours, expected, f"{fmt} {label} d={d}")


NORM_CASES = [
    ("scalar", {"steps": 5}, {"kind": "iter", "init": "exponent", "rates": [0.5] * 5}),
    (
        "vector",
        {"steps": 3, "mode": "vector"},
        {"kind": "vector", "init": "exponent", "rates": [0.5] * 3},
    ),
    (
        "vector e+m",
        {"steps": 2, "mode": "vector", "init": "exponent+mantissa", "update_rate": 0.375},
        {"kind": "vector", "init": "exponent+mantissa", "rates": [0.375] * 2},
    ),
]


@pytest.mark.parametrize(("fmt", "acc"), POLICIES)
@pytest.mark.parametrize(("label", "kwargs", "method"), NORM_CASES, ids=[c[0] for c in NORM_CASES])
@pytest.mark.parametrize("eps", [1e-5, 0.5])
def test_layer_norm_and_rms_norm_equal_exact_model(fmt, acc, label, kwargs, method, eps):
    F, A = FORMATS[fmt], FORMATS[default_acc(fmt, acc)]
    method = {**method, "magic": fisr_magic(F)}
    for d in (1, 3, 16, 33):
        x = sample_rows(fmt, d, seed=200 + d)
        gen = torch.Generator().manual_seed(d)
        w = round_to_format(1 + 0.5 * torch.randn(d, generator=gen, dtype=torch.float64), fmt)
        b = round_to_format(0.1 * torch.randn(d, generator=gen, dtype=torch.float64), fmt)
        ours = layer_norm(x, (d,), w, b, eps, fmt=fmt, acc_fmt=acc, **kwargs)
        expected = [
            ref.layer_norm(fractions(row), F, A, method, eps, fractions(w), fractions(b))
            for row in x
        ]
        assert_rows_equal(ours, expected, f"layer_norm {fmt}/{acc} {label} eps={eps} d={d}")
        ours = rms_norm(x, (d,), w, eps, fmt=fmt, acc_fmt=acc, **kwargs)
        expected = [ref.rms_norm(fractions(row), F, A, method, eps, fractions(w)) for row in x]
        assert_rows_equal(ours, expected, f"rms_norm {fmt}/{acc} {label} eps={eps} d={d}")
