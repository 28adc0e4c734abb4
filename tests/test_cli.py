"""The command line: the demo runs, and user errors are one line, exit 2."""

from __future__ import annotations

import json

import pytest
from cli_support import run_fresh, run_here

from iterl2norm.cli import main

SMALL = ["demo", "--dims", "16", "33", "--vectors", "4", "--formats", "bf16", "fp32"]


def test_demo_prints_tables_and_writes_json(tmp_path, capsys):
    out_file = tmp_path / "demo.json"
    assert main([*SMALL, "--steps", "3", "--json", str(out_file)]) == 0
    text = capsys.readouterr().out
    assert "## bf16" in text and "## fp32" in text and "iterl2norm steps=3" in text
    assert "| LayerNorm" in text and "| RMSNorm" in text
    data = json.loads(out_file.read_text())
    assert data["config"]["dims"] == [16, 33] and data["environment"]["torch"]
    cells = {(r["format"], r["d"], r["method"]) for r in data["precision"]}
    assert len(cells) == len(data["precision"]) == 2 * 2 * (3 + 3)
    fp32 = {
        r["method"]: r["max_abs"]
        for r in data["precision"]
        if r["format"] == "fp32" and r["d"] == 33
    }
    assert fp32["iterl2norm steps=3"] < fp32["iterl2norm steps=1"]
    assert all(r["forward_max_abs"] < 1e-5 for r in data["drop_in"])
    worst = {(r["format"], r["steps"]): r["worst_rel"] for r in data["worst_case"]}
    assert worst["fp32", 3] < worst["fp32", 1] < worst["fp32", 0] and "# Worst" in text


USER_ERRORS = [
    (["demo", "--formats", "fp12"], "unknown number format 'fp12'"),
    (["demo", "--dims", "0"], "expected a positive integer, got '0'"),
    (["demo", "--vectors", "many"], "expected an integer, got 'many'"),
    (["demo", "--json", "/nonexistent/dir/out.json", *SMALL[1:]], "No such file"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
]


def _check_user_error(status: int, stderr: str, message: str) -> None:
    assert status == 2
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("iterl2norm") and message in lines[-1]
    assert "Traceback" not in stderr
    assert len([ln for ln in lines if "error" in ln]) == 1


@pytest.mark.parametrize(("argv", "message"), USER_ERRORS)
def test_user_errors_are_one_line_and_exit_2(argv, message, capsys):
    _check_user_error(*run_here(argv, capsys), message)


def test_user_errors_are_one_line_from_a_fresh_interpreter():
    # python -m iterl2norm.cli: the same line and status from the entry point.
    argv, message = USER_ERRORS[0]
    _check_user_error(*run_fresh(argv), message)


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and "iterl2norm 0.1.0" in capsys.readouterr().out
    assert main([]) == 2  # no command: help, non-zero


def test_info_says_whether_the_kernels_run(capsys, monkeypatch):
    import torch

    from iterl2norm import _fused

    assert main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["torch"] == torch.__version__ and "bf16" in facts["formats"]
    assert facts["threads"] == torch.get_num_threads()
    if _fused._kernels is None:
        assert facts["kernels"] == "none" and facts["isa"] is None
    else:
        assert facts["kernels"] == _fused.KERNELS and facts["kernels"] in ("compiled", "jit")
        assert facts["isa"] in facts["supported_isas"]
    monkeypatch.setattr(_fused, "_kernels", None)  # as an install without them
    monkeypatch.setattr(_fused, "WHY_NOT", "ITERL2NORM_JIT=0")
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert "kernels         none: the torch paths run, up to 100x slower" in text
    assert "why_not         ITERL2NORM_JIT=0" in text


def test_info_reports_a_bad_isa_in_one_line(capsys, monkeypatch):
    from iterl2norm import _fused

    if _fused._kernels is None:
        pytest.skip("the compiled kernels are not built")
    monkeypatch.setattr(_fused, "_isa_applied", False)
    monkeypatch.setenv("ITERL2NORM_ISA", "sse9")
    assert main(["info"]) == 2
    err = capsys.readouterr().err
    assert "ITERL2NORM_ISA='sse9'" in err and err.count("\n") == 1


def test_patching_is_importable_from_the_package_root():
    import iterl2norm
    from iterl2norm import patching

    assert iterl2norm.patch_model is patching.patch_model
    assert iterl2norm.unpatch_model is patching.unpatch_model
    assert iterl2norm.patched is patching.patched
