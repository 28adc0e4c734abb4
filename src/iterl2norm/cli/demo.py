"""``iterl2norm demo``: error against float64 per format and step, and the drop-in check."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence

from .._markdown import table
from ._args import positive_int

COMMANDS = ("demo",)


def add_commands(sub) -> None:
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


def run(args, argv: Sequence[str]) -> int:
    from .. import demo
    from ..formats import get_format

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
    from .._env import environment

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
