"""Synthesize the RTL to generic CMOS gates: the operators (each format, the
mixed 16-bit-into-fp32 forms), and the scalar unit for every start and
schedule at the steps that reach full precision (every input within 1 ulp of
the correctly rounded q^-1/2, from the committed study, docs/study/results.json),
beside the sqrt + divide unit. Writes docs/rtl_synthesis.json and prints the
tables of docs/HARDWARE.md.

    .venv/bin/python scripts/rtl_synthesis.py [--out docs/rtl_synthesis.json] [--jobs 2]

About ten minutes on two cores (Yosys and ABC in WebAssembly).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from iterl2norm._env import environment, progress_bar
from iterl2norm.hw.flows.export import verilog
from iterl2norm.hw.flows.synth import synthesize
from iterl2norm.hw.rtl import SUPPORTED
from iterl2norm.hw.rtl.fp import operator
from iterl2norm.hw.rtl.rsqrt_unit import RsqrtUnit
from iterl2norm.hw.rtl.sqrt_divide import SqrtDivide
from iterl2norm.study.convergence import full_precision_steps, steps_to_converge

ROOT = Path(__file__).resolve().parent.parent
LATENCIES = {"mul_latency": 3, "add_latency": 3, "exp_latency": 1}  # the presets' operators
# (label, iter_rsqrt settings, key of the study's full-precision steps)
VARIANTS = [
    ("paper (exponent, lambda 1/2)", {"init": "exponent"}, ("convergence", "exponent")),
    (
        "exponent+mantissa, lambda 1/2",
        {"init": "exponent+mantissa"},
        ("convergence", "exponent+mantissa"),
    ),
    ("magic, lambda 1/2", {"init": "magic"}, ("convergence", "magic")),
    ("minimax", {"schedule": "minimax"}, ("methods", "minimax")),
    ("minimax-mantissa", {"schedule": "minimax-mantissa"}, ("methods", "minimax-mantissa")),
    ("minimax-magic", {"schedule": "minimax-magic"}, ("methods", "minimax-magic")),
    ("table", {"schedule": "table"}, ("methods", "table")),
]


def designs() -> list[dict]:
    study = json.loads((ROOT / "docs/study/results.json").read_text())
    methods = full_precision_steps(study["methods"])
    converge = steps_to_converge(study["convergence"])
    out = []
    for fmt in SUPPORTED:
        for op in ("mul", "add"):
            for latency in (1, 3):
                out.append({"kind": "operator", "op": op, "fmt": fmt, "latency": latency})
    for fmt in ("bf16", "fp16"):
        for op in ("mul", "add"):
            out.append({"kind": "operator", "op": op, "fmt": fmt, "acc_fmt": "fp32", "latency": 1})
    for fmt in SUPPORTED:
        for label, settings, (table, name) in VARIANTS:
            steps = methods[fmt, name] if table == "methods" else converge[fmt, name, 0.5]
            out.append({"kind": "rsqrt", "fmt": fmt, "variant": label, "steps": steps, **settings})
        out.append({"kind": "rsqrt", "fmt": fmt, "variant": "paper, 5 steps", "steps": 5})
        out.append({"kind": "sqrt-divide", "fmt": fmt, "variant": "sqrt + divide"})
    return out


def component(design: dict):
    if design["kind"] == "operator":
        return operator(design["op"], design["fmt"], design["latency"], design.get("acc_fmt"))
    if design["kind"] == "sqrt-divide":
        return SqrtDivide(design["fmt"])
    settings = {k: design[k] for k in ("init", "schedule") if k in design}
    return RsqrtUnit.from_settings(design["fmt"], steps=design["steps"], **settings, **LATENCIES)


def run(design: dict) -> dict:
    unit = component(design)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "design.v"
        path.write_text(verilog(unit, "top"))
        gates = synthesize(path, "top")
    cycles = getattr(unit, "cycles", design.get("latency"))
    return {**design, "cycles": cycles, **gates}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs/rtl_synthesis.json"))
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    todo = designs()
    bar = progress_bar(len(todo), unit="design", desc="synthesis")
    with ThreadPoolExecutor(args.jobs) as pool:
        results = []
        for result in pool.map(run, todo):
            results.append(result)
            bar.update(1)
    bar.close()
    for r in results:
        r.pop("cells")  # in each design's own report; the totals are kept here
    Path(args.out).write_text(
        json.dumps(
            {"environment": environment(), "latencies": LATENCIES, "designs": results}, indent=1
        )
        + "\n"
    )
    print_tables(results)
    return 0


def print_tables(results: list[dict]) -> None:
    print("| operator | latency | transistors | NAND2 | flip-flops |")
    print("|----------|---------|-------------|-------|------------|")
    for r in results:
        if r["kind"] == "operator":
            what = f"{r['fmt']} {r['op']}"
            if r.get("acc_fmt"):
                what = (
                    f"{r['fmt']} x {r['fmt']} -> fp32"
                    if r["op"] == "mul"
                    else f"fp32 + {r['fmt']} -> fp32"
                )
            print(
                f"| {what} | {r['latency']} | {r['transistors']} | "
                f"{r['nand2_equivalents']:g} | {r['flip_flops']} |"
            )
    for fmt in SUPPORTED:
        rows = [r for r in results if r["kind"] != "operator" and r["fmt"] == fmt]
        base = next(r for r in rows if r["kind"] == "sqrt-divide")
        base_cost = base["nand2_equivalents"] * base["cycles"]
        print(f"\n{fmt}:\n")
        print("| unit | steps | cycles | NAND2 | flip-flops | NAND2 x cycles | vs sqrt + divide |")
        print("|------|-------|--------|-------|------------|----------------|------------------|")
        for r in rows:
            cost = r["nand2_equivalents"] * r["cycles"]
            steps = r.get("steps", "")
            print(
                f"| {r['variant']} | {steps} | {r['cycles']} | {r['nand2_equivalents']:g} | "
                f"{r['flip_flops']} | {cost / 1000:.0f}k | {cost / base_cost:.2f} |"
            )


if __name__ == "__main__":
    sys.exit(main())
