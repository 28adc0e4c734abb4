"""The ``iterl2norm`` command line.

Usage errors and bad values end in one line on stderr and exit status 2;
nothing a user types produces a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from . import __version__
from ._cli_args import positive_int
from ._cli_bench import add_command as add_bench_command
from ._cli_bench import run as run_bench
from ._cli_hw import add_command as add_hw_command
from ._cli_hw import run as run_hw
from ._cli_models import COMMANDS as MODEL_COMMANDS
from ._cli_models import add_commands as add_model_commands
from ._cli_models import run as run_model_command
from ._markdown import table


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, not usage plus message."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="iterl2norm", description="Division- and square-root-free iterative L2 normalization."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    demo = sub.add_parser(
        "demo",
        help="error vs float64 per format and step, and the LayerNorm/RMSNorm check",
        description="Error of IterL2Norm (steps 1..N, exponent start, update rate 1/2) and "
        "of FISR and sqrt + divide against float64, per format and d; then "
        "IterLayerNorm/IterRMSNorm against torch.nn.LayerNorm/RMSNorm.",
    )
    demo.add_argument(
        "--formats",
        nargs="+",
        default=None,
        metavar="FMT",
        help="formats to emulate (default: fp32 fp16 bf16 fp8_e4m3 fp8_e5m2)",
    )
    demo.add_argument(
        "--dims",
        nargs="+",
        type=positive_int,
        default=None,
        metavar="D",
        help="vector lengths (default: 64 768 4096)",
    )
    demo.add_argument(
        "--vectors",
        type=positive_int,
        default=128,
        help="random vectors per (format, d) (default: 128)",
    )
    demo.add_argument(
        "--steps",
        type=positive_int,
        default=5,
        help="largest IterL2Norm step count shown (default: 5)",
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    demo.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")

    study = sub.add_parser(
        "study",
        help="the paper's precision and convergence results: report, plots, JSON, CSV",
        description="Precision of IterL2Norm and its peers per format and d against float64 "
        "(the paper's comparison, equal-cost comparison, scalar vs vector mode, several "
        "inputs), and worst-case convergence over every input. Writes report.md, "
        "results.json, precision.csv, convergence.csv and PNG plots to --out.",
    )
    study.add_argument(
        "part",
        nargs="?",
        choices=("precision", "convergence"),
        help="run one part only (default: both)",
    )
    study.add_argument(
        "--quick",
        action="store_true",
        help="8 vectors per cell and every 256th FP32 mantissa: under a minute",
    )
    study.add_argument(
        "--out", default="results", metavar="DIR", help="output directory (default: results)"
    )
    study.add_argument(
        "--formats",
        nargs="+",
        default=None,
        metavar="FMT",
        help="formats (default: fp32 fp16 bf16 fp8_e4m3 fp8_e5m2)",
    )
    study.add_argument(
        "--dims",
        nargs="+",
        type=positive_int,
        default=None,
        metavar="D",
        help="vector lengths (default: the nine OPT embedding sizes)",
    )
    study.add_argument(
        "--vectors",
        type=positive_int,
        default=None,
        help="vectors per (format, d, input) (default: 256; --quick: 8)",
    )
    study.add_argument(
        "--inputs",
        metavar="FILE.npy",
        default=None,
        help="also normalize the rows of this array (e.g. captured activations)",
    )
    study.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    study.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    study.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_model_commands(sub)
    add_hw_command(sub)
    add_bench_command(sub)
    return parser


def _run_study(args, argv: Sequence[str]) -> int:
    from pathlib import Path

    from .formats import get_format
    from .study import OPT_DIMS, PARTS, StudyConfig, run_study
    from .study.report import write

    overrides = {
        "parts": (args.part,) if args.part else PARTS,
        "seed": args.seed,
        "input_file": args.inputs,
    }
    if args.formats:
        overrides["formats"] = tuple(get_format(f).name for f in args.formats)
    overrides["dims"] = tuple(args.dims) if args.dims else OPT_DIMS
    if args.vectors:
        overrides["vectors"] = args.vectors
    config = StudyConfig.quick_config(**overrides) if args.quick else StudyConfig(**overrides)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} exists and is not a directory")
    if not args.no_plots:
        from .study.plots import _pyplot

        _pyplot()  # fail on a missing matplotlib before the work, not after
    results = run_study(config, progress=not args.no_progress)
    command = " ".join(["iterl2norm", *argv])
    for path in write(results, out, command, plots=not args.no_plots):
        print(path)
    return 0


def _run_demo(args) -> int:
    from . import demo
    from .formats import get_format

    formats = [get_format(f).name for f in (args.formats or demo.DEFAULT_FORMATS)]
    dims = args.dims or list(demo.DEFAULT_DIMS)
    json_file = open(args.json, "w") if args.json else None  # fail before the work, not after
    start = time.perf_counter()

    def progress(message: str) -> None:
        print(f"  ... {message}", file=sys.stderr, flush=True)

    rows = demo.precision_table(formats, dims, args.vectors, args.seed, args.steps, progress)
    print(
        f"# Max |error| of x/||x|| against float64 ({args.vectors} vectors per d, "
        f"seed {args.seed})\n"
    )
    labels = [label for label, _ in demo.methods(args.steps)]
    for fmt in formats:
        cell = {(r["method"], r["d"]): r["max_abs"] for r in rows if r["format"] == fmt}
        body = [[label, *(f"{cell[label, d]:.2e}" for d in dims)] for label in labels]
        print(f"## {fmt}\n\n{table(['method', *(f'd={d}' for d in dims)], body)}\n")
    # Every q of fp64 would be 2**53 values: the sweep covers the formats up to fp32.
    worst_formats = [f for f in formats if f != "fp64"]
    worst = demo.worst_case_table(worst_formats, args.steps)
    cell = {(r["format"], r["steps"]): r for r in worst}
    inputs = ", ".join(f"{cell[f, 0]['inputs']} for {f}" for f in worst_formats)
    print("# Worst relative error of the scale a_n ~ q^-1/2 over every q in [1/2, 2)\n")
    print(
        "Exponent start, update rate 1/2; in brackets: the worst distance from the correctly "
        f"rounded q^-1/2, in ulps. Inputs: {inputs}.\n"
    )
    body = [
        [
            str(n),
            *(
                f"{cell[f, n]['worst_rel']:.2e} ({cell[f, n]['worst_ulps']:.3g})"
                for f in worst_formats
            ),
        ]
        for n in range(args.steps + 1)
    ]
    print(table(["step", *worst_formats], body) + "\n")
    drop_in = demo.drop_in_table(args.seed)
    print("# IterLayerNorm / IterRMSNorm (defaults, native fp32) vs torch.nn\n")
    body = [
        [
            r["norm"],
            "x".join(map(str, r["shape"])),
            f"{r['forward_max_abs']:.2e}",
            f"{r['backward_max_abs']:.2e}",
            f"{r['backward_ref_max']:.2e}",
        ]
        for r in drop_in
    ]
    print(table(["norm", "shape", "max abs dy", "max abs dgrad", "max abs grad"], body))
    from .study import environment

    env = environment()
    print(
        f"\niterl2norm {env['iterl2norm']}, torch {env['torch']}, python {env['python']}, "
        f"{env['machine']}, {env['cpu_threads']} threads; {time.perf_counter() - start:.1f} s"
    )
    if json_file:
        config = {k: getattr(args, k) for k in ("vectors", "steps", "seed")}
        config.update(formats=formats, dims=dims)
        payload = {
            "config": config,
            "environment": env,
            "precision": rows,
            "worst_case": worst,
            "drop_in": drop_in,
        }
        with json_file:
            json.dump(payload, json_file, indent=2)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "study":
            return _run_study(args, list(sys.argv[1:] if argv is None else argv))
        if args.command == "hw":
            return run_hw(args, list(sys.argv[1:] if argv is None else argv))
        if args.command == "bench":
            return run_bench(args, list(sys.argv[1:] if argv is None else argv))
        if args.command in MODEL_COMMANDS:
            return run_model_command(args, list(sys.argv[1:] if argv is None else argv))
        return _run_demo(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        print(f"iterl2norm: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("iterl2norm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
