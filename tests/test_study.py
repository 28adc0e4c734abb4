"""``iterl2norm study``: its outputs, and that its numbers are the library's."""

from __future__ import annotations

import csv
import json
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from cli_support import run_fresh, run_here

import exact_reference as ref
from iterl2norm import (
    exact_normalize,
    fisr_normalize,
    invsqrt2_normalize,
    iterl2norm,
    round_to_format,
    sqrt23_normalize,
)
from iterl2norm.cli import main
from iterl2norm.formats import FORMATS
from iterl2norm.study import OPT_DIMS
from iterl2norm.study._shared import pareto
from iterl2norm.study.convergence import (
    correctly_rounded_rsqrt,
    every_q,
    full_precision_steps,
    steps_to_converge,
)
from iterl2norm.study.inputs import make_inputs, row_statistics
from iterl2norm.study.precision import method_runs, outputs
from iterl2norm.study.report import wins

FORMATS_STUDIED = ("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    assert main(["study", "--quick", "--no-progress", "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_quick_study_writes_every_output(quick):
    out, _ = quick
    for name in (
        "report.md",
        "results.json",
        "precision.csv",
        "convergence.csv",
        "precision.png",
        "cost.png",
        "modes.png",
        "convergence.png",
        "convergence_rates.png",
        "fewer_steps.png",
        "methods.csv",
    ):
        assert (out / name).stat().st_size > 0, name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    for heading in (
        "## 1.",
        "## 2.",
        "## 3.",
        "## 4.",
        "## 5.",
        "## 6.",
        "6/9",
        "5/9",
        "iterl2norm study --quick",
    ):
        assert heading in report
    with (out / "precision.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(quick[1]["precision"])


def test_quick_study_has_every_cell_and_finite_numbers(quick):
    _, results = quick
    cells = {
        (r["format"], r["input"], r["d"], r["method"], r["init"], r["mode"], r["steps"])
        for r in results["precision"]
    }
    assert len(cells) == len(results["precision"]), "duplicate cells"
    runs = method_runs(5)
    for fmt in FORMATS_STUDIED:
        for inp in ("gaussian", "scaled", "outliers"):
            for d in OPT_DIMS:
                for run in runs:
                    assert (fmt, inp, d, run.method, run.init, run.mode, run.steps) in cells
    for row in results["precision"]:
        for key in ("mean_abs", "max_abs", "norm_rel_mean", "norm_rel_max"):
            assert math.isfinite(row[key]), row
    for row in results["convergence"]:
        assert math.isfinite(row["worst_rel"]) and math.isfinite(row["worst_ulps"])
    assert results["config"]["seed"] == 0 and results["environment"]["torch"]


def test_quick_study_compares_schedules_and_peers(quick):
    _, results = quick
    full = full_precision_steps(results["methods"])
    methods = {m for _, m in full}
    assert {"paper", "minimax", "table", "FISR", "InvSqrt2", "SQRT_23-bits"} <= methods
    for fmt in FORMATS_STUDIED:
        # The table start reaches full precision in fewer steps than the paper's.
        assert full[fmt, "table"] is not None and full[fmt, "paper"] is not None
        assert full[fmt, "table"] <= full[fmt, "paper"]
    assert all(math.isfinite(r["worst_rel"]) for r in results["methods"])


def test_fp32_error_falls_as_steps_grow(quick):
    _, results = quick
    for inp in ("gaussian", "scaled", "outliers"):
        total = [
            sum(
                r["mean_abs"]
                for r in results["precision"]
                if r["format"] == "fp32"
                and r["input"] == inp
                and r["method"] == "iterl2norm"
                and r["init"] == "exponent"
                and r["mode"] == "scalar"
                and r["steps"] == n
            )
            for n in range(1, 6)
        ]
        assert total[0] > total[1] > total[2] > total[3] >= total[4], (inp, total)
        assert total[4] < 1e-7 * len(OPT_DIMS)


@pytest.mark.parametrize("fmt", FORMATS_STUDIED)
def test_study_numbers_are_the_public_functions(fmt):
    x = make_inputs("scaled", 33, 5, fmt, seed=1)
    public = {
        ("iterl2norm", "exponent", "scalar"): lambda n: iterl2norm(x, steps=n, fmt=fmt),
        ("iterl2norm", "exponent", "vector"): lambda n: iterl2norm(
            x, steps=n, fmt=fmt, mode="vector"
        ),
        ("iterl2norm", "magic", "scalar"): lambda n: iterl2norm(x, steps=n, fmt=fmt, init="magic"),
        ("fisr", "-", "scalar"): lambda n: fisr_normalize(x, steps=n, fmt=fmt),
        ("invsqrt2", "-", "scalar"): lambda n: invsqrt2_normalize(x, steps=n, fmt=fmt),
        ("sqrt23", "-", "scalar"): lambda n: sqrt23_normalize(x, steps=n, fmt=fmt),
        ("exact", "-", "scalar"): lambda n: exact_normalize(x, fmt=fmt),
    }
    seen = 0
    for run, out in outputs(x, fmt, 5):
        assert torch.equal(out, public[run.method, run.init, run.mode](run.steps)), run
        seen += 1
    assert seen == len(method_runs(5))


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "bf16", "fp8_e4m3"])
def test_correctly_rounded_rsqrt_is_exact(fmt):
    q = every_q(fmt, stride=4099 if fmt == "fp32" else 1)
    got = correctly_rounded_rsqrt(q, fmt)
    f = FORMATS[fmt]
    for qi, gi in zip(q.tolist()[:3000], got.tolist()[:3000], strict=True):
        # The exact value lies within half a spacing of the result: check with squares.
        g, qq = Fraction(gi), Fraction(qi)
        up = Fraction(2) ** (math.frexp(gi)[1] - 1 - f.mantissa_bits)
        down = up / 2 if g == Fraction(2) ** (math.frexp(gi)[1] - 1) else up
        assert (g - down / 2) ** 2 * qq <= 1 <= (g + up / 2) ** 2 * qq
        assert ref.rne(g, f) == g


def test_steps_to_converge_and_pareto_and_wins():
    rows = [
        {"format": "f", "init": "i", "update_rate": 0.5, "steps": n, "worst_ulps": u}
        for n, u in enumerate([9.0, 3.0, 1.0, 0.5])
    ]
    rows += [
        {"format": "f", "init": "j", "update_rate": 0.5, "steps": n, "worst_ulps": 2.0}
        for n in range(3)
    ]
    assert steps_to_converge(rows) == {("f", "i", 0.5): 2, ("f", "j", 0.5): None}
    assert pareto([(3, 1e-3), (3, 1e-4), (6, 1e-4), (6, 1e-6), (9, 1e-5)]) == [
        False,
        True,
        False,
        True,
        False,
    ]
    base = {"input": "gaussian", "format": "fp32", "init": "-", "mode": "scalar"}
    rows = [
        {**base, "d": d, "method": m, "steps": s, "init": i, "mean_abs": e}
        for d, e5, e1 in ((1, 1e-9, 1e-4), (2, 1e-3, 1e-4))
        for m, s, i, e in (("iterl2norm", 5, "exponent", e5), ("fisr", 1, "-", e1))
    ]
    assert wins(rows) == {("fp32", "gaussian"): (1, 2)}


def test_convergence_part_alone_and_real_inputs(tmp_path):
    out = tmp_path / "conv"
    assert (
        main(
            [
                "study",
                "convergence",
                "--quick",
                "--no-progress",
                "--no-plots",
                "--formats",
                "bf16",
                "fp16",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert not (out / "precision.csv").exists() and (out / "convergence.csv").exists()
    data = json.loads((out / "results.json").read_text())
    assert {r["format"] for r in data["convergence"]} == {"bf16", "fp16"}
    steps = steps_to_converge(data["convergence"])
    assert steps["bf16", "magic", 0.5] <= steps["bf16", "exponent", 0.5] <= 5

    acts = np.random.default_rng(0).standard_normal((40, 96)).astype(np.float32)
    acts[3, 5] = np.nan  # dropped
    path = tmp_path / "acts.npy"
    np.save(path, acts)
    out = tmp_path / "real"
    assert (
        main(
            [
                "study",
                "precision",
                "--quick",
                "--no-progress",
                "--no-plots",
                "--formats",
                "bf16",
                "--dims",
                "64",
                "--inputs",
                str(path),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    data = json.loads((out / "results.json").read_text())
    rows = [r for r in data["precision"] if r["input"] == "file"]
    assert rows and {r["d"] for r in rows} == {96} and rows[0]["vectors"] == 39
    report = (out / "report.md").read_text()
    assert "acts.npy" in report and "nine OPT models" not in report  # d = 64 only
    stats = data["config"]["input_file_stats"]
    clean = np.delete(acts, 3, axis=0).astype(np.float64)
    rms = np.sqrt((clean**2).mean(axis=1))
    assert stats["rms_min"] == pytest.approx(rms.min())
    assert stats["peak_over_rms_max"] == pytest.approx((np.abs(clean).max(axis=1) / rms).max())
    assert f"{stats['peak_over_rms_median']:.3g} and at most" in report


def test_row_statistics_tell_a_spike_from_gaussian_rows():
    rows = torch.zeros(3, 100, dtype=torch.float64)
    rows[0, 7] = 5.0  # one spike: the whole norm
    rows[1] = 2.0  # constant
    stats = row_statistics(rows)  # the zero row is left out
    assert stats["peak_over_rms_max"] == pytest.approx(10.0)  # sqrt(d)
    assert stats["peak_over_rms_median"] == pytest.approx(1.0)  # torch: the lower middle
    assert stats["rms_min"] == pytest.approx(0.5) and stats["rms_max"] == pytest.approx(2.0)


STUDY_ERRORS = [
    (["--inputs", "missing.npy"], "does not exist"),
    (["--inputs", "table.csv"], "expects a .npy file"),
    (["--formats", "fp9"], "unknown number format 'fp9'"),
    (["--vectors", "0"], "expected a positive integer"),
    (["banana"], "invalid choice: 'banana'"),
]


def _study_argv(tmp_path, argv):
    return ["study", "--quick", "--no-plots", "--out", str(tmp_path / "o"), *argv]


def _check_one_line(status: int, stderr: str, message: str) -> None:
    assert status == 2, stderr
    assert message in stderr.strip().splitlines()[-1] and "Traceback" not in stderr


@pytest.mark.parametrize(("argv", "message"), STUDY_ERRORS)
def test_study_user_errors_are_one_line(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _check_one_line(*run_here(_study_argv(tmp_path, argv), capsys), message)


def test_study_user_errors_are_one_line_from_a_fresh_interpreter(tmp_path):
    argv, message = STUDY_ERRORS[0]
    _check_one_line(*run_fresh(_study_argv(tmp_path, argv), cwd=tmp_path), message)


def test_inputs_are_rounded_and_seeded():
    a = make_inputs("outliers", 64, 4, "bf16", seed=3)
    assert torch.equal(a, make_inputs("outliers", 64, 4, "bf16", seed=3))
    assert torch.equal(round_to_format(a, "bf16"), a)
    assert (a.abs().amax(dim=1) > 20).all()  # the outlier channels
    with pytest.raises(ValueError, match="'uniform'"):
        make_inputs("uniform", 8, 1, "fp32", seed=0)
