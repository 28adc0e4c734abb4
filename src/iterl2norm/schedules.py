"""Named step schedules: a start and per-step constants, derived minimax.

A schedule replaces the paper's fixed update rate with per-step constants
of the generalized step

    a <- a + a * (gamma_n - beta_n * a^2 q)          (= a (alpha_n - beta_n u), alpha = 1 + gamma)

computed in that order (t = a*a, u = t*q, v = beta*u, e = gamma - v,
h = a*e, a = a + h), so that near convergence the correction is a small
number and the last rounding is the add's. The paper's Euler step is
gamma = beta = lambda.

Presets (constants from scripts/derive_schedules.py, which prints how they
were chosen and, for FP32, FP16 and BF16, the worst-case bound per step that
the exhaustive tests in tests/test_schedules.py hold them to):

- ``"paper"``: the exponent start and Newton's update rate 1/2 every step,
  IterL2Norm as published (the default; same as ``schedule=None``).
- ``"minimax"``: the exponent start, then (gamma_n, beta_n) minimax for the
  interval the step before leaves: 8.6e-2, 5.6e-3, 2.3e-5, 4.0e-10 after
  steps 1..4 in exact arithmetic (Newton: 2.9e-1, 1.2e-1, 1.9e-2, 5.6e-4).
- ``"minimax-mantissa"``: one mantissa comparison first, then minimax steps.
- ``"minimax-magic"``: the FISR bit trick first, then minimax steps.
- ``"table"``: a piecewise-linear start a0 = c0 - c1 qn from a table of 32
  constants (8 segments per exponent parity, indexed by the top 3 mantissa
  bits), error 6.5e-4, then steps with beta = 1/2 (a shift) and a minimax
  gamma. Every input to full precision (within 1 ulp) after 2 steps in FP32,
  1 in FP16, 0 in BF16.


Steps beyond a schedule's derived ones are Newton steps (gamma = beta = 1/2),
which is what the minimax constants converge to.

Every scalar iteration, a schedule's or the paper's (``init`` and
``update_rate``) or FISR's, is described once as an :class:`Iteration`: its
start and its :class:`~iterl2norm.rsqrt.Step` list, the constants as
designed. The torch emulation (:func:`run`), the compiled kernels, the
hardware model and the cost model all read that description.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from . import rsqrt
from ._arith import Arithmetic
from ._schedule_data import SCHEDULE_DATA
from .formats import fisr_magic
from .rsqrt import Step

__all__ = ["SCHEDULES", "Iteration", "Schedule", "Step", "get_schedule"]

STARTS = ("exponent", "exponent+mantissa", "magic", "table")

NEWTON = (0.5, 0.5)


@dataclass(frozen=True)
class Schedule:
    """A start and the (gamma, beta) of each step.

    Args:
        name: registry name.
        start: ``"exponent"``, ``"exponent+mantissa"``, ``"magic"`` or ``"table"``.
        steps: (gamma_n, beta_n) per step; later steps are Newton's (1/2, 1/2).
        table: for the ``"table"`` start, (c0, c1) per segment, [parity][segment]
            with parity 0 for qn in [1/2, 1), 1 for [1, 2).
        bounds: worst relative error of a_n per format after n = 0, 1, ... steps,
            as derived (exact-arithmetic image plus rounding allowance).
    """

    name: str
    start: str
    steps: tuple[tuple[float, float], ...]
    table: tuple | None = None
    # Derived from the rest, and a dict: not part of equality or the hash, so
    # settings holding a schedule are hashable (and their validation cached).
    bounds: dict | None = field(default=None, compare=False)

    def step_constants(self, steps: int) -> tuple[tuple[float, float], ...]:
        """(gamma, beta) for each of ``steps`` steps."""
        return (self.steps + (NEWTON,) * steps)[:steps]

    @property
    def table_entries(self) -> int:
        """Constants the start keeps in ROM."""
        return 0 if self.table is None else sum(len(row) * 2 for row in self.table)

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, start={self.start!r}, {len(self.steps)} derived steps)"


SCHEDULES: dict[str, Schedule] = {"paper": Schedule("paper", "exponent", ())}
SCHEDULES.update(
    {
        name: Schedule(name, d["start"], tuple(d["steps"]), d["table"], d["bounds"])
        for name, d in SCHEDULE_DATA.items()
    }
)


def get_schedule(name) -> Schedule:
    """A schedule by name (or the Schedule itself)."""
    if isinstance(name, Schedule):
        return name
    if isinstance(name, str) and name in SCHEDULES:
        return SCHEDULES[name]
    raise ValueError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")


@dataclass(frozen=True)
class Iteration:
    """The scalar iteration a_0, a_1, ..., a_N ~ qn**-0.5, as data.

    Args:
        start: ``"exponent"``, ``"exponent+mantissa"``, ``"magic"`` or ``"table"``
            (see :func:`iterl2norm.rsqrt.initial_estimate` and
            :func:`~iterl2norm.rsqrt.table_start`).
        steps: one :class:`~iterl2norm.rsqrt.Step` per step.
        table: the table start's (c0, c1) per segment, [parity][segment].
        magic: the magic start's constant in the datapath format's bits; None
            for FISR's 0x5F3759DF carried to that format (:func:`fisr_magic`).
    """

    start: str
    steps: tuple[Step, ...]
    table: tuple | None = None
    magic: int | None = None

    def __post_init__(self):
        if self.start not in STARTS:
            raise ValueError(f"unknown start {self.start!r}; choose one of {', '.join(STARTS)}")
        if (self.start == "table") != (self.table is not None):
            raise ValueError("a table start needs its table, and only it has one")

    def magic_for(self, fmt) -> int:
        """The magic start's constant in ``fmt``."""
        return fisr_magic(fmt) if self.magic is None else self.magic


def euler_iteration(init: str, rates: Sequence[float]) -> Iteration:
    """The paper's iteration: ``init``, then one Euler step per update rate."""
    return Iteration(init, tuple(Step("euler", rate) for rate in rates))


def schedule_iteration(schedule: Schedule | str, steps: int) -> Iteration:
    """``steps`` steps of a named schedule (the paper's: Euler steps at rate 1/2)."""
    schedule = get_schedule(schedule)
    if schedule.name == "paper":
        return euler_iteration("exponent", (0.5,) * steps)
    return Iteration(
        schedule.start,
        tuple(Step("correction", g, b) for g, b in schedule.step_constants(steps)),
        schedule.table,
    )


def fisr_iteration(steps: int, magic: int | None = None, ks: Sequence[float] = ()) -> Iteration:
    """The FISR family: the magic start, then Newton's product-form step with
    k from ``ks`` first (InvSqrt2's modified constants), 1.5 after."""
    ks = rsqrt.newton_constants(steps, ks)
    return Iteration("magic", tuple(Step("newton", k) for k in ks), magic=magic)


def start_estimate(qn: torch.Tensor, ar: Arithmetic, iteration: Iteration) -> torch.Tensor:
    """a_0 for the iteration's start."""
    if iteration.start == "table":
        return rsqrt.table_start(qn, ar, iteration.table)
    if iteration.start == "magic":
        return rsqrt.magic_estimate(qn, ar.fmt, iteration.magic_for(ar.fmt))
    return rsqrt.initial_estimate(qn, ar, iteration.start)


def run(qn: torch.Tensor, ar: Arithmetic, iteration: Iteration) -> torch.Tensor:
    """qn**-0.5 by the iteration: its start, then its steps (rsqrt.apply_steps)."""
    return rsqrt.apply_steps(qn, start_estimate(qn, ar, iteration), ar, iteration.steps)


def start(qn: torch.Tensor, ar: Arithmetic, schedule: Schedule) -> torch.Tensor:
    """a_0 for the schedule's start."""
    return start_estimate(qn, ar, schedule_iteration(schedule, 0))


def correction_steps(qn: torch.Tensor, a: torch.Tensor, ar: Arithmetic, constants) -> torch.Tensor:
    """a <- a + a * (gamma - beta * a^2 qn) per (gamma, beta)."""
    return rsqrt.apply_steps(qn, a, ar, [Step("correction", g, b) for g, b in constants])


def estimate(qn: torch.Tensor, ar: Arithmetic, *, schedule: Schedule, steps: int) -> torch.Tensor:
    """qn**-0.5 by ``steps`` steps of ``schedule`` (the paper's is the Euler step)."""
    return run(qn, ar, schedule_iteration(schedule, steps))
