"""``iterl2norm study``: the paper's precision and convergence results, and more."""

from __future__ import annotations

from collections.abc import Sequence

from ._args import positive_int

COMMANDS = ("study",)


def add_commands(sub) -> None:
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


def run(args, argv: Sequence[str]) -> int:
    from pathlib import Path

    from ..formats import get_format
    from ..study import OPT_DIMS, PARTS, StudyConfig, run_study
    from ..study.report import write

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
        from .._env import pyplot

        pyplot()  # fail on a missing matplotlib before the work, not after
    results = run_study(config, progress=not args.no_progress)
    command = " ".join(["iterl2norm", *argv])
    for path in write(results, out, command, plots=not args.no_plots):
        print(path)
    return 0
