"""``iterl2norm rtl``: Verilog, a self-checking testbench, vectors and a gate count."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..rsqrt import INITS
from ..schedules import SCHEDULES
from ._args import check_output_path, nonnegative_int, positive_int

COMMANDS = ("rtl",)


def add_commands(sub) -> None:
    rtl = sub.add_parser(
        "rtl",
        help="Verilog of the unit's operators with a testbench and a gate count",
        description="Write an operator's Verilog (top module iterl2norm_op), a "
        "self-checking Icarus testbench (tb.v) with inputs.hex and expected.hex made "
        "from the library, a README, and its synthesis to CMOS gates.",
    )
    parts = rtl.add_subparsers(dest="part", metavar="PART", required=True)
    op = parts.add_parser("op", help="a floating-point multiplier or adder")
    op.add_argument("--op", required=True, choices=("mul", "add"), help="the operator")
    op.add_argument("--fmt", required=True, metavar="FMT", help="fp32, fp16 or bf16")
    op.add_argument(
        "--acc-fmt",
        metavar="A",
        help="a wider result: FMT x FMT -> A (mul), A + FMT -> A (add), e.g. bf16 into fp32",
    )
    op.add_argument(
        "--latency",
        type=positive_int,
        default=1,
        help="pipeline registers, >= 1 (default: 1)",
    )
    op.add_argument("--out", required=True, metavar="DIR", help="output directory")
    op.add_argument(
        "--vectors", type=positive_int, default=10000, help="test vectors (default: 10000)"
    )
    op.add_argument("--seed", type=int, default=0, help="vector seed (default: 0)")
    op.add_argument("--no-synthesis", action="store_true", help="skip the Yosys gate count")

    unit = parts.add_parser(
        "rsqrt",
        help="the scalar unit iterl2norm_rsqrt: q**-0.5 without division or square root",
        description="Write the scalar unit's Verilog (top module iterl2norm_rsqrt), a "
        "self-checking Icarus testbench (tb.v) with inputs.hex and expected.hex from "
        "iter_rsqrt, a README, and its synthesis to CMOS gates. Give a schedule, or a "
        "start and update rate (default: the paper's exponent start and rate 1/2).",
    )
    unit.add_argument("--fmt", required=True, metavar="FMT", help="fp32, fp16 or bf16")
    how = unit.add_mutually_exclusive_group()
    how.add_argument("--schedule", metavar="S", help=f"a schedule: {', '.join(SCHEDULES)}")
    how.add_argument("--init", metavar="I", help=f"the start: {', '.join(INITS)}")
    unit.add_argument(
        "--update-rate",
        type=_rates,
        metavar="R",
        help="lambda, one number or one per step separated by commas (default: 0.5)",
    )
    unit.add_argument("--steps", type=nonnegative_int, default=5, help="steps (default: 5)")
    for name, default in (("mul", 3), ("add", 3), ("exp", 1)):
        unit.add_argument(
            f"--{name}-latency",
            type=positive_int,
            default=default,
            help=f"cycles of the {name} unit (default: {default})",
        )
    unit.add_argument("--out", required=True, metavar="DIR", help="output directory")
    unit.add_argument(
        "--vectors",
        type=positive_int,
        default=4096,
        help="test vectors (default: 4096; 65536 or more: every 16-bit pattern)",
    )
    unit.add_argument("--seed", type=int, default=0, help="vector seed (default: 0)")
    unit.add_argument("--no-synthesis", action="store_true", help="skip the Yosys gate count")

    sd = parts.add_parser(
        "sqrt-divide",
        help="the comparison unit: q**-0.5 by a digit-recurrence square root and division",
        description="Write the sqrt + divide unit's Verilog (top module "
        "iterl2norm_sqrt_divide; the ports of iterl2norm_rsqrt), its testbench and "
        "vectors, a README and its synthesis to CMOS gates.",
    )
    sd.add_argument("--fmt", required=True, metavar="FMT", help="fp32, fp16 or bf16")
    sd.add_argument("--out", required=True, metavar="DIR", help="output directory")
    sd.add_argument(
        "--vectors", type=positive_int, default=4096, help="test vectors (default: 4096)"
    )
    sd.add_argument("--seed", type=int, default=0, help="vector seed (default: 0)")
    sd.add_argument("--no-synthesis", action="store_true", help="skip the Yosys gate count")

    whole = parts.add_parser(
        "unit",
        help="the normalization unit iterl2norm_unit from a preset and config fields",
        description="Write the normalization unit's Verilog (top module iterl2norm_unit) "
        "for a preset with any fields changed, a self-checking Icarus testbench (tb.v) "
        "with inputs.hex, expected.hex (hw.reference) and cycles.txt (hw.simulate), a "
        "README with its ports, and its synthesis to CMOS gates.",
    )
    whole.add_argument("--preset", required=True, metavar="NAME", help="a unit preset")
    for name, kind in (
        ("lanes", positive_int),
        ("mul-latency", positive_int),
        ("add-latency", positive_int),
        ("exp-latency", positive_int),
        ("sqrt-latency", positive_int),
        ("div-latency", positive_int),
        ("acc-slots", positive_int),
        ("steps", nonnegative_int),
        ("fmt", str),
        ("acc-fmt", str),
        ("statistics", str),
        ("method", str),
        ("init", str),
        ("schedule", str),
        ("reduction", str),
        ("mode", str),
    ):
        whole.add_argument(f"--{name}", type=kind, help=f"override the preset's {name}")
    whole.add_argument("--out", required=True, metavar="DIR", help="output directory")
    whole.add_argument(
        "--dims",
        type=positive_int,
        nargs="+",
        default=[64, 128, 768, 1000, 1024],
        metavar="D",
        help="vector lengths (default: 64 128 768 1000 1024)",
    )
    whole.add_argument("--vectors", type=positive_int, default=8, help="vectors per d (default: 8)")
    whole.add_argument(
        "--affine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="override the preset's affine part (sqrt(d) gamma, beta)",
    )
    whole.add_argument("--inputs", metavar="ROWS.npy", help="run these rows (n, d) instead")
    whole.add_argument(
        "--params",
        metavar="GAMMA_BETA.npy",
        help="with --inputs and an affine unit: gamma and beta for the rows, shape (2, d)",
    )
    whole.add_argument("--seed", type=int, default=0, help="vector seed (default: 0)")
    whole.add_argument("--no-synthesis", action="store_true", help="skip the Yosys gate count")

    every = parts.add_parser(
        "exhaustive",
        help="every operand pair of a 16-bit format through an operator",
        description="Run every pair (2^32) of bf16 or fp16 operands through the "
        "operator's compiled simulation (CXXRTL) and compare each result with the "
        "library's; about half an hour per operator on one core.",
    )
    every.add_argument("--op", required=True, choices=("mul", "add"), help="the operator")
    every.add_argument("--fmt", required=True, metavar="FMT", help="bf16 or fp16")
    every.add_argument(
        "--first", type=_row, default=0, help="first a operand (bit pattern, default 0)"
    )
    every.add_argument(
        "--count", type=positive_int, default=1 << 16, help="a operands (default: all 65536)"
    )
    every.add_argument("--json", metavar="FILE", help="write the result as JSON")
    every.add_argument("--no-progress", action="store_true", help="no progress bar")


def _rates(text: str) -> float | tuple[float, ...]:
    try:
        rates = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers separated by commas, got {text!r}"
        ) from None
    return rates[0] if len(rates) == 1 else rates


def _row(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


def run(args, argv) -> int:
    try:
        return _run(args)
    except RuntimeError as error:  # a tool (Yosys, a compiler) failed: its log has the rest
        print(f"iterl2norm: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.part == "exhaustive":
        return _exhaustive(args)
    if args.part in ("rsqrt", "sqrt-divide"):
        return _unit(args)
    if args.part == "unit":
        return _whole_unit(args)
    from ..hw.flows.export import write_op

    written, report = write_op(
        args.out,
        args.op,
        args.fmt,
        args.latency,
        count=args.vectors,
        seed=args.seed,
        synthesis=not args.no_synthesis,
        acc_fmt=args.acc_fmt,
    )
    for path in written:
        print(path)
    if report:
        print(
            f"{report['fmt']} {report['op']}"
            + (f" into {report['acc_fmt']}" if report["acc_fmt"] else "")
            + f", latency {report['latency']}: "
            f"{report['transistors']} transistors ({report['nand2_equivalents']:g} NAND2), "
            f"{report['flip_flops']} flip-flops, {report['latches']} latches"
        )
    print(f"run it: cd {args.out} && iverilog -g2012 -o sim *.v && vvp sim")
    return 0


def _unit(args) -> int:
    from ..hw.flows.export_rsqrt import write_rsqrt, write_sqrt_divide

    common = {"count": args.vectors, "seed": args.seed, "synthesis": not args.no_synthesis}
    if args.part == "sqrt-divide":
        written, report = write_sqrt_divide(args.out, args.fmt, **common)
    else:
        written, report = write_rsqrt(
            args.out,
            args.fmt,
            steps=args.steps,
            init=args.init or "exponent",
            update_rate=0.5 if args.update_rate is None else args.update_rate,
            schedule=args.schedule,
            mul_latency=args.mul_latency,
            add_latency=args.add_latency,
            exp_latency=args.exp_latency,
            **common,
        )
    for path in written:
        print(path)
    steps = f", {report['steps']} steps" if "steps" in report else ""
    line = f"{report['fmt']} {report['unit']}{steps}: {report['cycles']} cycles"
    if "synthesis" in report:
        gates = report["synthesis"]
        line += (
            f", {gates['transistors']} transistors ({gates['nand2_equivalents']:g} NAND2), "
            f"{gates['flip_flops']} flip-flops, {gates['latches']} latches"
        )
    print(line)
    print(f"run it: cd {args.out} && iverilog -g2012 -o sim *.v && vvp sim")
    return 0


def _whole_unit(args) -> int:
    from ..hw import get_preset
    from ..hw.flows.export_unit import write_unit

    fields = (
        "lanes mul_latency add_latency exp_latency acc_slots steps fmt acc_fmt statistics "
        "method init schedule reduction mode affine"
    ).split()
    changes = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    cfg = get_preset(args.preset)
    if changes:
        cfg = cfg.with_(**changes)
    if not args.no_synthesis:
        print(
            "the synthesis of a whole unit (Yosys, ABC) takes minutes on one core; "
            "--no-synthesis skips it",
            file=sys.stderr,
        )
    written, report = write_unit(
        args.out,
        cfg,
        dims=args.dims,
        vectors=args.vectors,
        inputs=args.inputs,
        params=args.params,
        seed=args.seed,
        synthesis=not args.no_synthesis,
    )
    for path in written:
        print(path)
    cycles = ", ".join(f"d={d}: {c}" for d, c in report["cycles"].items())
    line = f"{cfg.name}: {report['vectors']} vectors, cycles {cycles}"
    if "synthesis" in report:
        gates = report["synthesis"]
        line += (
            f"; {gates['transistors']} transistors ({gates['nand2_equivalents']:g} NAND2), "
            f"{gates['flip_flops']} flip-flops, {gates['latches']} latches, "
            f"{sum(gates['memory_bits'].values())} memory bits"
        )
        blocks = ", ".join(
            f"{name} {b['nand2_equivalents']:g}" for name, b in gates["blocks"].items()
        )
        line += f"\nNAND2 by block: {blocks}"
    print(line)
    print(f"run it: cd {args.out} && iverilog -g2012 -o sim *.v && vvp sim")
    return 0


def _exhaustive(args) -> int:
    from .._env import environment, progress_bar
    from ..hw.flows.exhaustive import check_every_pair

    check_output_path(args.json)
    start = time.perf_counter()
    bar = progress_bar(
        args.count, unit="row", desc=f"{args.fmt} {args.op}", enabled=not args.no_progress
    )
    try:
        result = check_every_pair(
            args.op, args.fmt, first=args.first, count=args.count, progress=bar.update
        )
    finally:
        bar.close()
    result["seconds"] = round(time.perf_counter() - start, 1)
    result["environment"] = environment()
    print(
        f"{result['fmt']} {result['op']}: {result['pairs']} pairs, "
        f"{result['failures']} failed ({result['seconds']} s)"
    )
    for example in result["examples"]:
        print("  ", example)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 1 if result["failures"] else 0
