"""The architecture of a normalization unit, as data, with named presets."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

from ..._validation import MODES, check_int
from ...formats import get_format
from ...methods import method_name
from ...rsqrt import INITS
from ...schedules import (
    SCHEDULES,
    Iteration,
    euler_iteration,
    fisr_iteration,
    schedule_iteration,
)

D_MIN, D_MAX = 64, 1024
STATISTICS = ("three-pass", "two-pass", "l2")
REDUCTIONS = ("tree", "accumulators")
# The methods the unit can run, by their names in iterl2norm.methods.
METHODS = ("iterl2norm", "fisr", "exact")
# The paper's macro (DATE 2025): 116 cycles at d = 64, 227 at d = 1024, 100 MHz.
PAPER_CYCLES = {64: 116, 1024: 227}


@dataclass(frozen=True)
class UnitConfig:
    """One normalization unit. Latencies are in cycles; every unit is pipelined
    (one new operation per instance per cycle).

    Args:
        name: preset name.
        lanes: P, elements read and processed per cycle (a power of two).
        mul_latency, add_latency: floating-point multiplier and adder latency,
            for the P lane units, the adder tree and the scalar unit alike.
        exp_latency: exponent-field operations (exponent split, exponent-only
            start, power-of-two scalings, format conversions), integer and
            table operations.
        reduction: ``"tree"`` (a P-input adder tree per cycle into one
            accumulator) or ``"accumulators"`` (one accumulator per lane).
        acc_slots: interleaved partial sums per accumulator; a pipelined
            accumulator needs ``add_latency`` of them to take a value every
            cycle. Default: ``add_latency``.
        fmt, acc_fmt: datapath and accumulation formats.
        statistics: ``"three-pass"`` (mean; sum of squares of y = x - mean;
            output), ``"two-pass"`` (sum(x) and sum(x^2) together, then
            s = sum(x^2) - sum(x)^2 / d; output) or ``"l2"`` (no centring:
            sum(x^2); output, i.e. plain L2 normalization).
        mode: ``"scalar"`` (iterate on the scale) or ``"vector"`` (update the
            whole vector every step).
        method: ``"iterl2norm"``, ``"fisr"`` (magic start, Newton steps) or
            ``"exact"`` (sqrt + divide: a square root, then a divider per lane;
            the old name ``"sqrt-divide"`` still works, with a warning).
        steps: iteration (or Newton) steps.
        init: start of the paper's iteration (``"exponent"``,
            ``"exponent+mantissa"``, ``"magic"``); ignored with a schedule.
        schedule: a preset of :mod:`iterl2norm.schedules` (scalar mode).
        affine: LayerNorm's output, sqrt(d) * gamma * z + beta, with
            sqrt(d) * gamma precomputed per channel.
        sqrt_latency, div_latency: for ``"exact"``.
        description: one line about the preset.
    """

    name: str = "custom"
    lanes: int = 16
    mul_latency: int = 3
    add_latency: int = 3
    exp_latency: int = 1
    reduction: str = "tree"
    acc_slots: int | None = None
    fmt: str = "bf16"
    acc_fmt: str = "fp32"
    statistics: str = "three-pass"
    mode: str = "scalar"
    method: str = "iterl2norm"
    steps: int = 5
    init: str = "exponent"
    schedule: str | None = None
    affine: bool = True
    sqrt_latency: int = 12
    div_latency: int = 12
    description: str = ""

    def __post_init__(self):
        for name in (
            "lanes",
            "mul_latency",
            "add_latency",
            "exp_latency",
            "sqrt_latency",
            "div_latency",
        ):
            check_int(getattr(self, name), name, minimum=1)
        check_int(self.steps, "steps")
        if self.lanes & (self.lanes - 1) or self.lanes > D_MIN:
            raise ValueError(f"lanes must be a power of two up to {D_MIN}, got {self.lanes}")
        if self.acc_slots is not None:
            check_int(self.acc_slots, "acc_slots", minimum=1)
        object.__setattr__(self, "method", method_name(self.method, METHODS))
        for value, name, choices in (
            (self.reduction, "reduction", REDUCTIONS),
            (self.statistics, "statistics", STATISTICS),
            (self.mode, "mode", MODES),
            (self.init, "init", INITS),
        ):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
        fmt, acc = get_format(self.fmt), get_format(self.acc_fmt)
        if not acc.holds(fmt) or fmt.name not in ("fp32", "fp16", "bf16"):
            raise ValueError(
                f"unsupported formats fmt={self.fmt!r}, acc_fmt={self.acc_fmt!r}: "
                "the unit models fp32, fp16 or bf16 datapaths with an "
                "accumulator at least as wide"
            )
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ValueError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )
        if self.mode == "vector" and (self.method != "iterl2norm" or self.schedule):
            raise ValueError(
                "vector mode runs the paper's iteration only "
                f"(got method={self.method!r}, schedule={self.schedule!r})"
            )

    @property
    def slots(self) -> int:
        return self.acc_slots if self.acc_slots is not None else self.add_latency

    @property
    def iteration(self) -> Iteration:
        """The scalar unit's start and steps (iterl2norm.schedules); the
        exact method (sqrt + divide) has none."""
        if self.method == "fisr":
            return fisr_iteration(self.steps)
        if self.schedule is not None:
            return schedule_iteration(self.schedule, self.steps)
        return euler_iteration(self.init, (0.5,) * self.steps)

    def with_(self, **changes) -> UnitConfig:
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def summary(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_d(d) -> int:
    d = check_int(d, "d")
    if not D_MIN <= d <= D_MAX:
        raise ValueError(f"d={d} is outside the unit's supported range {D_MIN}..{D_MAX}")
    return d


PRESETS: dict[str, UnitConfig] = {
    p.name: p
    for p in (
        UnitConfig(
            "paper-l2-fp32",
            fmt="fp32",
            statistics="l2",
            lanes=16,
            mul_latency=3,
            add_latency=3,
            affine=False,
            description="the paper's IterL2Norm as an L2 normalizer: fp32, one pass for "
            "sum(x^2) and one for the output, 16 lanes, adder tree, exponent start, "
            "5 Euler steps (lambda = 1/2)",
        ),
        UnitConfig(
            "paper-layernorm-bf16",
            fmt="bf16",
            statistics="three-pass",
            lanes=32,
            mul_latency=3,
            add_latency=2,
            affine=True,
            description="the paper's IterL2Norm in a LayerNorm: bf16 datapath, fp32 "
            "accumulation, three passes (mean; sum of squares of y; output with "
            "sqrt(d) gamma, beta), 32 lanes, exponent start, 5 Euler steps",
        ),
        UnitConfig(
            "fast-l2-fp32",
            fmt="fp32",
            statistics="l2",
            lanes=16,
            mul_latency=3,
            add_latency=3,
            affine=False,
            schedule="table",
            steps=2,
            description="ours, on paper-l2-fp32's datapath: the table start and 2 steps "
            "(iterl2norm.schedules), full fp32 precision",
        ),
        UnitConfig(
            "fast-layernorm-bf16",
            fmt="bf16",
            statistics="two-pass",
            lanes=32,
            mul_latency=3,
            add_latency=2,
            affine=True,
            schedule="table",
            steps=0,
            description="ours, on paper-layernorm-bf16's datapath: two-pass statistics and "
            "the table start, full bf16 precision with no step",
        ),
        UnitConfig(
            "fisr-l2-fp32",
            fmt="fp32",
            statistics="l2",
            lanes=16,
            mul_latency=3,
            add_latency=3,
            affine=False,
            method="fisr",
            steps=2,
            description="the FISR alternative on paper-l2-fp32's datapath: magic start, "
            "2 Newton steps",
        ),
        UnitConfig(
            "sqrt-div-l2-fp32",
            fmt="fp32",
            statistics="l2",
            lanes=16,
            mul_latency=3,
            add_latency=3,
            affine=False,
            method="exact",
            sqrt_latency=12,
            div_latency=12,
            description="the textbook alternative on paper-l2-fp32's datapath: a square "
            "root (12 cycles), then a pipelined divider per lane (12 cycles)",
        ),
    )
}


def closed_form_cycles(cfg: UnitConfig, d: int) -> int:
    """The latency of a simple configuration, counted by hand from its schedule.

    For the adder tree with at least ``add_latency`` accumulator slots, scalar
    mode, the paper's iteration (exponent start, update rate 1/2): the same
    critical path the simulator finds, written as a formula, to cross-check it.
    """
    if (
        cfg.reduction != "tree"
        or cfg.slots < cfg.add_latency
        or cfg.mode != "scalar"
        or cfg.method != "iterl2norm"
        or cfg.schedule not in (None, "paper")
        or cfg.init != "exponent"
    ):
        raise ValueError(
            f"no closed form for {cfg.name!r}: it covers the adder tree, scalar "
            "mode and the paper's iteration only"
        )
    d = check_d(d)
    lm, la, le, s = cfg.mul_latency, cfg.add_latency, cfg.exp_latency, cfg.slots
    chunks, levels = -(-d // cfg.lanes), cfg.lanes.bit_length() - 1

    def reduced(last_arrival: int) -> int:
        # Chunk c arrives from the tree at last_arrival - (chunks - 1 - c); the last
        # one is added to its slot unless it is the slot's first; then the slots'
        # pairwise tree, one level per add latency.
        extra = la if chunks > s else 0
        return last_arrival + extra + math.ceil(math.log2(s)) * la

    read_last = chunks  # chunk c is read on cycle c, usable from c + 1
    if cfg.statistics == "l2":
        q = reduced(read_last + lm + levels * la)
    elif cfg.statistics == "two-pass":
        s1 = reduced(read_last + levels * la)
        s2 = reduced(read_last + lm + levels * la)
        q = max(s2, s1 + 2 * lm) + la  # s2 - (s1 * s1) * (1/d)
    else:
        mean = reduced(read_last + levels * la) + lm
        q = reduced(mean + read_last + la + lm + levels * la)  # x - mean, squared
    r = q + le + cfg.steps * (3 * lm + 2 * la + le)  # split; per step t, u, e, g, h, a
    centring = la if cfg.statistics != "l2" else 0
    return r + read_last + centring + lm + ((lm + la) if cfg.affine else 0)


def get_preset(name) -> UnitConfig:
    if isinstance(name, UnitConfig):
        return name
    if name in PRESETS:
        return PRESETS[name]
    raise ValueError(f"unknown unit preset {name!r}; choose one of {', '.join(PRESETS)}")
