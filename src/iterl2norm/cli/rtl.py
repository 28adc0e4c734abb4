"""``iterl2norm rtl``: Verilog, a self-checking testbench, vectors and a gate count."""

from __future__ import annotations

from ._args import nonnegative_int, positive_int

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
        "--latency",
        type=nonnegative_int,
        default=1,
        help="pipeline registers, 0 for combinational (default: 1)",
    )
    op.add_argument("--out", required=True, metavar="DIR", help="output directory")
    op.add_argument(
        "--vectors", type=positive_int, default=10000, help="test vectors (default: 10000)"
    )
    op.add_argument("--seed", type=int, default=0, help="vector seed (default: 0)")
    op.add_argument("--no-synthesis", action="store_true", help="skip the Yosys gate count")


def run(args, argv) -> int:
    from ..hw.rtl.export import write_op

    written, report = write_op(
        args.out,
        args.op,
        args.fmt,
        args.latency,
        count=args.vectors,
        seed=args.seed,
        synthesis=not args.no_synthesis,
    )
    for path in written:
        print(path)
    if report:
        print(
            f"{report['fmt']} {report['op']}, latency {report['latency']}: "
            f"{report['transistors']} transistors ({report['nand2_equivalents']:g} NAND2), "
            f"{report['flip_flops']} flip-flops, {report['latches']} latches"
        )
    print(f"run it: cd {args.out} && iverilog -g2012 -o sim *.v && vvp sim")
    return 0
