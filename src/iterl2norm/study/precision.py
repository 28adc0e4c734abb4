"""The precision study: every method, format, d and input, against float64.

All methods run on one front end per batch (pre-scaling, sum of squares,
exponent split: the work they share), so they see identical q values and
differ only in how they estimate q**-0.5 and apply it. Each result equals
the corresponding public function bit for bit (tests/test_study.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import torch

from .. import rsqrt
from .._arith import Arithmetic
from .._pipeline import divide_output, front_end, multiply_output, vector_iterates
from ..cost import estimate_cost
from ..methods import METHODS

# The paper's settings for IterL2Norm: exponent start, update rate 1/2.
PAPER_RATE = 0.5


@dataclass(frozen=True)
class MethodRun:
    """One (method, settings, steps) cell of the study."""

    method: str  # a key of iterl2norm.methods.METHODS
    steps: int
    init: str = "-"
    mode: str = "scalar"

    @property
    def label(self) -> str:
        if self.method == "iterl2norm":
            extra = "" if self.init == "exponent" else f", {self.init} start"
            extra += "" if self.mode == "scalar" else ", vector mode"
            return f"IterL2Norm {self.steps} step{'s' * (self.steps != 1)}{extra}"
        if self.method == "exact":
            return METHODS["exact"]
        return f"{METHODS[self.method]} {self.steps} step{'s' * (self.steps != 1)}"

    def cost(self, d: int):
        if self.method == "iterl2norm":
            return estimate_cost(
                "iterl2norm",
                self.steps,
                init=self.init,
                update_rate=PAPER_RATE,
                mode=self.mode,
                d=d,
            )
        return estimate_cost(self.method, self.steps, d=d)


def method_runs(max_steps: int) -> list[MethodRun]:
    """Every cell the study computes, in table order."""
    runs = [MethodRun("iterl2norm", n, "exponent") for n in range(1, max_steps + 1)]
    runs += [MethodRun("iterl2norm", n, "exponent", "vector") for n in range(1, max_steps + 1)]
    runs += [MethodRun("iterl2norm", n, "magic") for n in range(1, 4)]
    runs += [MethodRun("fisr", n) for n in (1, 2, 3)]
    runs += [MethodRun("invsqrt2", n) for n in (1, 2)]
    runs += [MethodRun("sqrt23", n) for n in (1, 2)]
    runs += [MethodRun("exact", 0)]
    return runs


def outputs(x: torch.Tensor, fmt: str, max_steps: int) -> Iterator[tuple[MethodRun, torch.Tensor]]:
    """(run, normalized rows) for every run of :func:`method_runs`, x: (n, d) fmt values."""
    ar = Arithmetic.resolve(torch.float64, fmt)
    fe = front_end(x, ar)
    a = rsqrt.initial_estimate(fe.qn, ar, "exponent")
    for n in range(1, max_steps + 1):
        a = rsqrt.euler_steps(fe.qn, a, ar, [PAPER_RATE])
        yield MethodRun("iterl2norm", n, "exponent"), multiply_output(fe, ar, a)
    rates = [PAPER_RATE] * max_steps
    for n, out in enumerate(vector_iterates(x, ar, init="exponent", rates=rates)):
        if n:
            yield MethodRun("iterl2norm", n, "exponent", "vector"), out
    a = rsqrt.initial_estimate(fe.qn, ar, "magic")
    for n in range(1, 4):
        a = rsqrt.euler_steps(fe.qn, a, ar, [PAPER_RATE])
        yield MethodRun("iterl2norm", n, "magic"), multiply_output(fe, ar, a)
    estimates = {
        "fisr": partial(rsqrt.fisr, magic=None),
        "invsqrt2": rsqrt.invsqrt2,
        "sqrt23": rsqrt.sqrt23,
    }
    for run in method_runs(max_steps):
        if run.method in estimates:
            yield run, multiply_output(fe, ar, estimates[run.method](fe.qn, ar, steps=run.steps))
    yield MethodRun("exact", 0), divide_output(fe, ar)


def errors(out: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Error of normalized rows against float64: elementwise and of the norm."""
    diff = (out - ref).abs()
    norm_err = (out.norm(dim=-1) - 1).abs()
    return {
        "mean_abs": diff.mean().item(),
        "max_abs": diff.max().item(),
        "norm_rel_mean": norm_err.mean().item(),
        "norm_rel_max": norm_err.max().item(),
    }


def precision_rows(x: torch.Tensor, fmt: str, max_steps: int, **labels) -> list[dict]:
    """One row per method run for the batch ``x`` (fmt values), tagged with ``labels``.

    Rows that are all zero in ``fmt`` have no direction and are left out.
    """
    x = x[x.abs().amax(dim=-1) > 0]
    ref = x / x.norm(dim=-1, keepdim=True)
    d = x.shape[-1]
    rows = []
    for run, out in outputs(x, fmt, max_steps):
        cost = run.cost(d)
        rows.append(
            {
                **labels,
                "format": fmt,
                "d": d,
                "method": run.method,
                "init": run.init,
                "mode": run.mode,
                "steps": run.steps,
                "label": run.label,
                "vectors": x.shape[0],
                "multiplies": cost.multiplies,
                **errors(out, ref),
            }
        )
    return rows
