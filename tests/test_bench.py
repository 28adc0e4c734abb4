"""The benchmark harness: its rows, its CSV record and its command line.
(The timings themselves are the benchmark's business, not the tests'.)"""

from __future__ import annotations

import csv
import time

import pytest

from iterl2norm import bench
from iterl2norm.cli import main

TINY = bench.Plan(
    quick=True, model=False, shapes=((3, 64),), emulation_shape=(4, 32), first_call=False
)


def test_round_robin_times_every_method_each_round():
    calls = []

    def slow():  # sleeps at least 20 ms: its median cannot be shorter
        calls.append("slow")
        time.sleep(0.02)

    medians = bench.round_robin({"slow": slow, "fast": lambda: calls.append("fast")}, 3, 1)
    assert calls == ["slow", "fast"] + ["slow", "fast"] * 3
    assert set(medians) == {"slow", "fast"}
    assert medians["slow"] >= 0.02 > medians["fast"]  # seconds, each method its own


def test_rows_cover_every_method_against_its_reference():
    rows = bench.run(TINY, progress=False)
    by_case = {(r.case, r.dtype) for r in rows}
    assert by_case == {
        ("forward", "fp32"),
        ("forward", "bf16"),
        ("backward", "fp32"),
        ("backward", "bf16"),
        ("emulation", "fp32"),
    }
    methods = {r.method for r in rows}
    assert {
        "layer_norm",
        "rms_norm",
        "iterl2norm",
        "copy_",
        "layer_norm fwd+bwd",
        "iterl2norm fmt=fp8_e4m3",
    } <= methods
    for row in rows:
        reference = next(
            r
            for r in rows
            if r.case == row.case and r.dtype == row.dtype and r.method == row.reference
        )
        assert row.ratio == pytest.approx(row.p50_ms / reference.p50_ms)
        assert row.p50_ms > 0 and row.rounds == TINY.rounds


def test_full_plan_times_torch_ops_and_the_call_cost_in_rounds_of_their_own():
    plan = bench.Plan(model=False, shapes=((3, 64),), emulation_shape=(4, 32), first_call=False)
    rows = bench.run(plan, progress=False)
    by_case: dict[str, set[str]] = {}
    for row in rows:
        by_case.setdefault(row.case, set()).add(row.method)
    # the torch-op paths allocate large temporaries: kept out of the forward rounds
    assert not any("torch ops" in m for m in by_case["forward"] | by_case["emulation"])
    assert by_case["torch_ops"] == {
        "F.layer_norm",
        "layer_norm (torch ops)",
        "iterl2norm",
        "iterl2norm fmt=bf16 (torch ops)",
    }
    assert by_case["call"] == {"F.layer_norm", "layer_norm", "rms_norm"}
    assert by_case["page_faults"] == {"fill_ reused tensor", "fill_ fresh tensor"}
    rounds = {(r.case, r.rounds) for r in rows}
    assert ("forward", 2 * plan.rounds + 1) in rounds and ("backward", plan.rounds) in rounds


def test_first_call_is_measured_in_a_fresh_interpreter():
    rows = {r.method: r for r in bench.first_call()}
    first, imported = rows["layer_norm first call"], rows["import torch, iterl2norm"]
    assert first.reference == "layer_norm second call"
    # Fresh: importing torch takes far more than 0.1 s there; in this process,
    # where both are already imported, it would take microseconds.
    assert imported.p50_ms > 100
    assert first.ratio == pytest.approx(first.p50_ms / rows["layer_norm second call"].p50_ms)


def test_csv_appends_with_one_header(tmp_path):
    rows = [bench.Row("forward", "3x64", "fp32", "layer_norm", "F.layer_norm", 0.5, 0.9, 5)]
    path = tmp_path / "results.csv"
    env = bench.environment()
    bench.append_csv(path, rows, env, TINY)
    bench.append_csv(path, rows, env, TINY)
    with path.open() as handle:
        records = list(csv.DictReader(handle))
    assert len(records) == 2 and records[0]["method"] == "layer_norm"
    assert records[0]["torch"] == env["torch"] and records[0]["plan"] == "quick"
    assert records[0]["git_revision"] and records[0]["cpu"]


def test_cli_rejects_a_missing_output_directory(capsys):
    assert main(["bench", "--quick", "--csv", "/nonexistent/dir/results.csv"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err


@pytest.mark.slow
def test_a_compiled_modules_first_call_is_measured_in_a_fresh_interpreter():
    rows = {r.method: r for r in bench.compiled_first_call()}
    first = rows["compiled IterRMSNorm first call"]
    assert first.reference == "compiled IterRMSNorm second call"
    assert first.ratio > 10  # the trace and code generation, against a kernel call
