"""``iterl2norm hw``: latency, stages, operations and precision of the unit presets."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from .._markdown import table
from ._args import check_output_path, positive_int

DIMS = (64, 128, 256, 512, 768, 1024)


COMMANDS = ("hw",)


def add_commands(sub) -> None:
    hw = sub.add_parser(
        "hw",
        help="the hardware unit model: cycles per preset and d, stages, precision",
        description="Simulate each unit preset cycle by cycle: latency for each d next to "
        "the paper's 116 cycles (d = 64) and 227 (d = 1024), the per-stage breakdown, the "
        "operation counts and the output's error against float64.",
    )
    hw.add_argument(
        "--presets", nargs="+", default=None, metavar="NAME", help="presets to run (default: all)"
    )
    hw.add_argument(
        "--dims",
        nargs="+",
        type=positive_int,
        default=list(DIMS),
        metavar="D",
        help="vector lengths, 64..1024 (default: 64 128 256 512 768 1024)",
    )
    hw.add_argument(
        "--vectors",
        type=positive_int,
        default=32,
        help="random vectors for the precision column (default: 32)",
    )
    hw.add_argument(
        "--mul-latency",
        type=int,
        default=None,
        metavar="N",
        help="override every preset's multiplier latency",
    )
    hw.add_argument(
        "--add-latency",
        type=int,
        default=None,
        metavar="N",
        help="override every preset's adder latency",
    )
    hw.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    hw.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    hw.add_argument("--plot", metavar="FILE.png", help="also plot latency against d")


def _exact(x: torch.Tensor, cfg) -> torch.Tensor:
    """What the unit approximates, in float64, from its rounded inputs: y/||y||
    (y = x - mean with centring), times sqrt(d) gamma + beta with the affine part
    (gamma = 1, beta = 0 here), i.e. LayerNorm with eps = 0."""
    y = x if cfg.statistics == "l2" else x - x.mean(dim=-1, keepdim=True)
    z = y / y.norm(dim=-1, keepdim=True)
    return z * math.sqrt(x.shape[-1]) if cfg.affine else z


def run(args, argv) -> int:
    from ..hw import PAPER_CYCLES, PRESETS, check_d, get_preset, simulate
    from ..hw.model.reference import arithmetic

    if args.vectors < 1:
        raise ValueError(f"--vectors must be positive, got {args.vectors}")
    dims = [check_d(d) for d in args.dims]
    presets = [get_preset(p) for p in (args.presets or PRESETS)]
    overrides = {
        k: v
        for k, v in (("mul_latency", args.mul_latency), ("add_latency", args.add_latency))
        if v is not None
    }
    presets = [cfg.with_(**overrides) for cfg in presets]

    check_output_path(args.json)
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    results = []
    for cfg in presets:
        latency, stages, ops, errors = {}, {}, {}, {}
        for d in dims:
            x = torch.randn(args.vectors, d, generator=gen, dtype=torch.float64)
            res = simulate(x, cfg)
            latency[d], stages[d], ops[d] = res.cycles, res.stages, res.ops
            xq = arithmetic(cfg).quantize(x).to(torch.float64)
            errors[d] = (res.out - _exact(xq, cfg)).abs().max().item()
        results.append(
            {
                "preset": cfg.name,
                "description": cfg.description,
                "config": cfg.summary(),
                "latency": latency,
                "stages": stages,
                "ops": ops,
                "max_abs_error": errors,
            }
        )
    _print(results, dims, PAPER_CYCLES)
    print(
        f"\n{' '.join(['iterl2norm', *argv])}; torch {torch.__version__}; "
        f"{time.perf_counter() - start:.0f} s"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "command": " ".join(["iterl2norm", *argv]),
                    "paper": PAPER_CYCLES,
                    "presets": results,
                },
                indent=1,
            )
            + "\n"
        )
    if args.plot:
        _plot(results, dims, PAPER_CYCLES, Path(args.plot))
    return 0


def _print(results, dims, paper) -> None:
    print("# Simulated latency (cycles) per preset and d\n")
    body = [[r["preset"], *(str(r["latency"][d]) for d in dims)] for r in results]
    body.append(["paper (DATE 2025)", *(str(paper.get(d, "")) for d in dims)])
    print(table(["preset", *(f"d={d}" for d in dims)], body))
    ends = [d for d in paper if d in dims]
    if ends:
        print(
            "\nAgainst the paper's endpoints: "
            + "; ".join(
                f"{r['preset']} "
                + ", ".join(f"{r['latency'][d] / paper[d] - 1:+.1%} at d={d}" for d in ends)
                for r in results
                if r["preset"].startswith("paper")
            )
        )
    for d in (dims[0], dims[-1]):
        print(
            f"\n# Stages at d={d} (cycles; three-pass statistics: mean, then the sum of squares)\n"
        )
        seen = {n for r in results for n in r["stages"][d]}
        steps = sorted((n for n in seen if n.startswith("step ")), key=lambda n: int(n[5:]))
        names = [n for n in ("mean", "statistics", "initialization", "square root") if n in seen]
        names += [*steps, "output"]

        body = [[r["preset"], *(str(r["stages"][d].get(n, "")) for n in names)] for r in results]
        print(table(["preset", *names], body))
    for d in (dims[0], dims[-1]):
        print(f"\n# Operations per vector and precision at d={d}\n")
        kinds = list(dict.fromkeys(k for r in results for k in r["ops"][d]))
        body = [
            [
                r["preset"],
                *(str(r["ops"][d].get(k, 0)) for k in kinds),
                f"{r['max_abs_error'][d]:.2e}",
            ]
            for r in results
        ]
        print(table(["preset", *kinds, "max abs error vs float64"], body))


def _plot(results, dims, paper, path: Path) -> None:
    from .._env import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r in results:
        ax.plot(dims, [r["latency"][d] for d in dims], "-o", ms=3, label=r["preset"])
    ax.plot(list(paper), list(paper.values()), "k*", ms=10, label="paper (DATE 2025)")
    ax.set(xlabel="d", ylabel="latency (cycles)", title="Simulated latency of the unit presets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
