"""Print docs/HARDWARE.md's table of the normalization units and the
comparisons in area x latency, from the committed measurements:
docs/rtl_units.json (scripts/unit_synthesis.py), docs/fpga_units.json
(scripts/fpga_presets.py) and docs/hw.json (`iterl2norm hw --json
docs/hw.json`: the precision).

    .venv/bin/python scripts/unit_table.py [--write docs/HARDWARE.md]

``--write`` puts the tables between the file's ``<!-- unit table -->`` and
``<!-- /unit table -->`` lines instead of printing them.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The comparisons: each group shares one datapath (format, lanes, operator
# latencies, reduction); the first unit of a group is its baseline.
GROUPS = {
    "the methods on the fp32 datapath (16 lanes, multiplier 3, adder 3)": [
        "paper-l2-fp32",
        "fast-l2-fp32",
        "fisr-l2-fp32",
        "sqrt-div-l2-fp32",
    ],
    "LayerNorm in bf16 (32 lanes): the paper's preset and ours": [
        "paper-layernorm-bf16",
        "fast-layernorm-bf16",
    ],
}


def load(name: str) -> dict:
    path = ROOT / "docs" / name
    return json.loads(path.read_text()) if path.exists() else {}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--write", type=Path, help="the Markdown file whose marked tables to replace"
    )
    args = parser.parse_args(argv)
    if args.write is None:
        return print_tables()
    text = args.write.read_text()
    marked = re.compile(r"(<!-- unit table -->\n).*?(<!-- /unit table -->)", re.S)
    if not marked.search(text):
        print(f"no <!-- unit table --> markers in {args.write}", file=sys.stderr)
        return 1
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = print_tables()
    if status == 0:
        args.write.write_text(
            marked.sub(lambda m: m[1] + "\n" + out.getvalue() + "\n" + m[2], text)
        )
    return status


# Where a preset has several FPGA runs at its lanes, the table shows the
# flattened one: Yosys then optimizes across the modules' ports.
FLOW_PREFERENCE = ("flattened", "by-module")


def fpga_unit(fpga: list[dict], name: str, lanes: int, fits: bool = False) -> dict | None:
    """The FPGA run of ``name`` at ``lanes`` (flattened if there is one;
    with ``fits``, only one that fits its part)."""
    runs = [u for u in fpga if u["preset"] == name and u["lanes"] == lanes]
    runs = [u for u in runs if u["fits"] or not fits]
    runs.sort(key=lambda u: FLOW_PREFERENCE.index(u["flow"]))
    return runs[0] if runs else None


def fpga_cells(f: dict | None) -> str:
    """The LUT4 ... ns cells of the main table."""
    if f is None:
        return "| | | | | "
    luts = f"{f['luts']:,}"
    if not f["fits"]:
        share = f["luts"] / f["utilization"]["TRELLIS_COMB"]["available"]
        rest = f"{f['flip_flops']:,} | {f['dsp']} | {f['bram']}"
        return f"{luts} ({share:.0%}) | {rest} | does not fit | "
    return (
        f"{luts} | {f['flip_flops']:,} | {f['dsp']} | {f['bram']} | {f['fmax_mhz']:.1f} | "
        f"{f['ns']['64']:,.0f} / {f['ns']['1024']:,.0f}"
    )


def lut_ns_ratio(fpga: list[dict], name: str, base: str, lanes: int) -> str:
    """LUT4 x ns of ``name`` over ``base``'s at d = 64 and 1024, both fitted
    at the same lanes and flow: the group's lanes if both fit there, else
    the most lanes at which both do (named)."""
    fitted = {(u["preset"], u["lanes"], u["flow"]): u for u in fpga if u["fits"]}
    for count in sorted({u["lanes"] for u in fpga}, key=lambda c: (c != lanes, -c)):
        for flow in FLOW_PREFERENCE:
            f, g = fitted.get((name, count, flow)), fitted.get((base, count, flow))
            if f and g:
                ratio = " / ".join(
                    f"{f['luts'] * f['ns'][d] / (g['luts'] * g['ns'][d]):.2f}"
                    for d in ("64", "1024")
                )
                return ratio if count == lanes else f"{ratio} ({count} lanes)"
    return ""


def print_other_runs(fpga: list[dict], shown: list[dict]) -> None:
    """The FPGA runs the main table does not show: other lanes, the other flow."""
    rest = [u for u in fpga if u not in shown]
    if not rest:
        return
    print("\nFPGA runs besides the table's (other lanes, the other flow):\n")
    print(
        "| preset | lanes | flow | cycles d=64 / 1024 | LUT4 | FF | DSP | BRAM | Fmax MHz "
        "| ns d=64 / 1024 | synth_ecp5 + nextpnr s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for f in rest:
        c, seconds = f["cycles"], f["seconds"]
        print(
            f"| {f['preset']} | {f['lanes']} | {f['flow']} | {c['64']} / {c['1024']} | "
            f"{fpga_cells(f)} | {seconds['synth_ecp5']:,.0f} + {seconds['nextpnr']:,.0f} |"
        )


def print_tables() -> int:
    gates = {u["preset"]: u for u in load("rtl_units.json").get("units", [])}
    fpga = load("fpga_units.json").get("units", [])
    error = {p["preset"]: p["max_abs_error"] for p in load("hw.json").get("presets", [])}
    if not gates:
        print("no docs/rtl_units.json: run scripts/unit_synthesis.py first", file=sys.stderr)
        return 1
    print(
        "| preset | lanes | cycles d=64 / 1024 | NAND2 | flip-flops | memory bits | "
        "LUT4 | FF | DSP | BRAM | Fmax MHz | ns d=64 / 1024 | max abs error d=64 / 1024 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    shown = []
    for name, u in gates.items():
        f = fpga_unit(fpga, name, u["lanes"])
        shown += [f] if f else []
        board = fpga_cells(f)
        c = u["cycles"]
        err = error.get(name, {})
        precision = f"{err['64']:.2e} / {err['1024']:.2e}" if err else ""
        print(
            f"| {name} | {u['lanes']} | {c['64']} / {c['1024']} | {u['nand2_equivalents']:,.0f} | "
            f"{u['flip_flops']:,} | {sum(u['memory_bits'].values()):,} | {board} | {precision} |"
        )
    print_other_runs(fpga, shown)
    blocks = list(next(iter(gates.values()))["blocks"])
    print("\nNAND2 equivalents by block:\n")
    print("| preset | " + " | ".join(blocks) + " |")
    print("|---|" + "---|" * len(blocks))
    for name, u in gates.items():
        cells = " | ".join(f"{u['blocks'][b]['nand2_equivalents']:,.0f}" for b in blocks)
        print(f"| {name} | {cells} |")
    for title, names in GROUPS.items():
        names = [n for n in names if n in gates]
        if len(names) < 2:
            continue
        base = gates[names[0]]
        print(f"\n{title}; area x latency relative to {names[0]}:\n")
        print(
            "| preset | NAND2 | scalar unit | cycles d=64 / 1024 | NAND2 x cycles d=64 / 1024 "
            "| LUT4 x ns d=64 / 1024 |"
        )
        print("|---|---|---|---|---|---|")
        for name in names:
            u = gates[name]
            ratios = [
                u["nand2_equivalents"]
                * u["cycles"][d]
                / (base["nand2_equivalents"] * base["cycles"][d])
                for d in ("64", "1024")
            ]
            board = lut_ns_ratio(fpga, name, names[0], base["lanes"])
            print(
                f"| {name} | {u['nand2_equivalents']:,.0f} | "
                f"{u['blocks']['scalar unit']['nand2_equivalents']:,.0f} | "
                f"{u['cycles']['64']} / {u['cycles']['1024']} | "
                f"{ratios[0]:.2f} / {ratios[1]:.2f} | {board} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
