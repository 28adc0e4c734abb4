"""``iterl2norm study``: the paper's precision and convergence results, and more.

:func:`run_study` computes; :mod:`.report` writes the Markdown report, JSON,
CSV and plots. Parts: ``"precision"`` (every method, format, d and input
against float64, with the equal-cost comparison and scalar vs vector mode)
and ``"convergence"`` (worst case over every input, per step, init and rate).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch

from .._env import environment, progress_bar
from ..formats import EVALUATED, get_format
from .convergence import INITS, RATES, convergence_rows, method_rows
from .inputs import KINDS, OPT_DIMS, load_rows, make_inputs, row_statistics
from .precision import precision_rows

FORMATS = EVALUATED
PARTS = ("precision", "convergence")

__all__ = ["OPT_DIMS", "PARTS", "StudyConfig", "run_study"]


@dataclass(frozen=True)
class StudyConfig:
    """Everything that determines the study's numbers."""

    formats: tuple[str, ...] = FORMATS
    dims: tuple[int, ...] = OPT_DIMS
    vectors: int = 256  # per (format, d, input)
    seed: int = 0
    inputs: tuple[str, ...] = KINDS
    input_file: str | None = None  # extra rows from a .npy file (their own d)
    max_steps: int = 5  # precision: IterL2Norm steps 1..max_steps
    conv_steps: int = 8  # convergence: steps 0..conv_steps
    inits: tuple[str, ...] = INITS
    rates: tuple[float, ...] = RATES
    fp32_stride: int = 1  # convergence: every stride-th fp32 mantissa (1: all 2**24)
    schedules: tuple[str, ...] = (
        "paper",
        "minimax",
        "minimax-mantissa",
        "minimax-magic",
        "table",
    )  # convergence: beside FISR, InvSqrt2, SQRT_23-bits

    quick: bool = False
    parts: tuple[str, ...] = field(default=PARTS)

    @classmethod
    def quick_config(cls, **overrides) -> StudyConfig:
        """Minutes become seconds: 8 vectors per cell, every 256th FP32 mantissa."""
        return cls(**{"vectors": 8, "fp32_stride": 256, "quick": True, **overrides})

    def __post_init__(self):
        for f in self.formats:
            get_format(f)  # raises a clear error for an unknown name
        if any(k not in KINDS for k in self.inputs):
            raise ValueError(f"unknown input kind in {self.inputs!r}; choose from {KINDS}")
        if any(p not in PARTS for p in self.parts):
            raise ValueError(f"unknown study part in {self.parts!r}; choose from {PARTS}")
        if self.vectors < 1 or self.fp32_stride < 1:
            raise ValueError("vectors and fp32_stride must be positive")


def _tasks(config: StudyConfig, file_rows: torch.Tensor | None):
    for fmt in config.formats:
        for kind in config.inputs:
            for d in config.dims:
                yield ("precision", fmt, kind, d)
        if file_rows is not None:
            yield ("precision", fmt, "file", file_rows.shape[-1])
    for fmt in config.formats:
        yield ("convergence", fmt, None, None)


def run_study(config: StudyConfig, progress: bool = True) -> dict:
    """Compute every part in ``config.parts``; returns the raw results."""
    start = time.perf_counter()
    file_rows = None
    if config.input_file is not None and "precision" in config.parts:
        file_rows = load_rows(
            config.input_file, max_rows=max(config.vectors, 1024), seed=config.seed
        )
    tasks = [t for t in _tasks(config, file_rows) if t[0] in config.parts]
    results = {
        "config": asdict(config),
        "environment": environment(),
        "precision": [],
        "convergence": [],
        "methods": [],
    }
    bar = progress_bar(len(tasks), unit="task", enabled=progress)
    for part, fmt, kind, d in tasks:
        bar.set_description(f"{part} {fmt}" + (f" {kind} d={d}" if kind else ""))
        if part == "precision":
            if kind == "file":
                from ..formats import round_to_format

                x = round_to_format(file_rows, fmt)
            else:
                # One seed per (input, d), shared by every format: the same
                # random draws before rounding, so formats compare like for like.
                seed = config.seed + 1000 * KINDS.index(kind) + d
                x = make_inputs(kind, d, config.vectors, fmt, seed)
            results["precision"] += precision_rows(x, fmt, config.max_steps, input=kind)
        else:
            stride = config.fp32_stride if fmt == "fp32" else 1
            results["convergence"] += convergence_rows(
                fmt, config.conv_steps, inits=config.inits, rates=config.rates, stride=stride
            )
            results["methods"] += method_rows(
                fmt, config.conv_steps, schedules=config.schedules, stride=stride
            )
        bar.update()
    bar.close()
    results["environment"]["seconds"] = f"{time.perf_counter() - start:.1f}"
    if file_rows is not None:
        results["config"]["input_file_rows"] = file_rows.shape[0]
        results["config"]["input_file_stats"] = row_statistics(file_rows)
    return results
