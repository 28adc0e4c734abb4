"""Derive the step schedules of iterl2norm.schedules and their worst-case bounds.

    python scripts/derive_schedules.py            # print the tables
    python scripts/derive_schedules.py --write    # also regenerate src/iterl2norm/_schedule_data.py
    python scripts/derive_schedules.py --check    # exit 1 unless it regenerates the committed file

A step is a <- a + a * (gamma - beta * a^2 q), i.e. a * (alpha - beta u) with
alpha = 1 + gamma (the paper's Euler step has gamma = beta = lambda). With
t = a sqrt(q) (t* = 1) one step maps t -> f(t) = t (1 + gamma - beta t^2), so
the error after a step depends only on the interval of t before it. Each
schedule picks (gamma_n, beta_n) minimax for the interval left by the step
before: with beta free the optimum equioscillates at both ends and at the
interior maximum and has a closed form; with beta = 1/2 (a shift, not a
multiply) gamma is found by bisection.

Starts: "exponent" (t in [2^-1/2, 2^1/2]), "exponent+mantissa"
([2^-1/4, 2^1/4]), "magic" (the FP32 bit trick's measured interval) and
"table": a0 = c0 - c1 qn, with (c0, c1) minimax per segment of the
mantissa (8 per exponent parity), which is the same closed form applied to
each segment from a = 1.

The bounds: for each format the start interval is measured over every qn of
the format (the library's own emulation of the start), then each step's
exact image of the interval, with the constants rounded to the format, is
widened by the step's rounding error: the final add rounds once (1 u), the
rounded a^2 q carries 2 u (3 u if beta * u rounds too) into gamma - beta u,
and the rounded product a * e adds |e| u: rho = 1 + 3 beta (1 + b)^2 + 2 |e|
units u of the format. tests/test_schedules.py checks every bound against
the exhaustive worst case of the emulation, and that this script regenerates
_schedule_data.py exactly.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from fractions import Fraction
from pathlib import Path

import torch

from iterl2norm import rsqrt
from iterl2norm._arith import Arithmetic
from iterl2norm.formats import FORMATS, decode, round_scalar

DATA_FILE = Path(__file__).resolve().parents[1] / "src" / "iterl2norm" / "_schedule_data.py"
# FP8's unit roundoff (1/16, 1/8) is as wide as the whole convergence range:
# interval bounds say nothing there, and the study measures FP8 by exhaustion.
BOUND_FORMATS = ("fp32", "fp16", "bf16")

MAX_STEPS = 6
TABLE_SEGMENTS = 8  # per exponent parity
DONE = 1e-15  # design interval this narrow: the float64 design is done, Newton takes over

# (name, start, beta of the steps: None = free, or fixed), in registry order.
PRESETS = [
    ("minimax", "exponent", None),
    ("minimax-mantissa", "exponent+mantissa", None),
    ("minimax-magic", "magic", None),
    ("table", "table", 0.5),
]


# The minimax step ---------------------------------------------------------------------


def image(lo: float, hi: float, gamma: float, beta: float) -> tuple[float, float]:
    """The range of f(t) = t (1 + gamma - beta t^2) over [lo, hi]."""
    f = lambda t: t * (1 + gamma - beta * t * t)  # noqa: E731
    points = [lo, hi]
    tm = math.sqrt((1 + gamma) / (3 * beta))  # f' = 0
    if lo < tm < hi:
        points.append(tm)
    values = [f(t) for t in points]
    return min(values), max(values)


def minimax_free(lo: float, hi: float) -> tuple[float, float]:
    """(gamma, beta) minimizing max |f(t) - 1| on [lo, hi]: equioscillation at
    lo, the interior maximum tm and hi gives alpha = beta S, tm^2 = S/3 with
    S = hi^2 + hi lo + lo^2, and f(tm) + f(lo) = 2."""
    s = hi * hi + hi * lo + lo * lo
    tm = math.sqrt(s / 3)
    beta = 2 / (tm * 2 * s / 3 + s * lo - lo * lo * lo)
    return beta * s - 1, beta


def minimax_shift(lo: float, hi: float, beta: float) -> float:
    """gamma minimizing max |f(t) - 1| on [lo, hi] for a fixed beta: the
    balance max(f) - 1 = 1 - min(f), increasing in gamma, by bisection."""

    def imbalance(gamma):
        fmin, fmax = image(lo, hi, gamma, beta)
        return (fmax - 1) + (fmin - 1)

    a, b = -1.0, 2.0
    for _ in range(200):
        mid = (a + b) / 2
        if imbalance(mid) > 0:
            b = mid
        else:
            a = mid
    return (a + b) / 2


def design_steps(lo: float, hi: float, beta_fixed: float | None) -> tuple[list, list]:
    """Per-step constants and the exact-arithmetic error after each step."""
    steps, errors = [], [max(1 - lo, hi - 1)]
    for _ in range(MAX_STEPS):
        if hi - lo < DONE:
            break
        if beta_fixed is None:
            gamma, beta = minimax_free(lo, hi)
        else:
            gamma, beta = minimax_shift(lo, hi, beta_fixed), beta_fixed
        steps.append((gamma, beta))
        lo, hi = image(lo, hi, gamma, beta)
        errors.append(max(1 - lo, hi - 1))
    # Once the design is Newton's step, the schedule ends: every later step is
    # Newton's (1/2, 1/2), whose beta is a shift, not a multiply. "Is Newton's":
    # within 1e-12, which no format but fp64 resolves, and which changes the
    # error after the step by less than 1e-20.
    while steps and all(abs(c - 0.5) < 1e-12 for c in steps[-1]):
        steps.pop()
        errors.pop()
    return steps, errors


# Starts -------------------------------------------------------------------------------


def table_coefficients(segments: int) -> tuple[tuple[tuple[float, float], ...], ...]:
    """(c0, c1) per segment for a0 = c0 - c1 qn; [parity][segment], parity 0
    for qn in [1/2, 1) (odd exponent of q), 1 for qn in [1, 2)."""
    table = []
    for scale in (0.5, 1.0):
        row = []
        for i in range(segments):
            q_lo, q_hi = scale * (1 + i / segments), scale * (1 + (i + 1) / segments)
            # a0 sqrt(q) = c0 t - c1 t^3 with t = sqrt(q): a minimax step from a = 1.
            gamma, beta = minimax_free(math.sqrt(q_lo), math.sqrt(q_hi))
            row.append((1 + gamma, beta))
        table.append(tuple(row))
    return tuple(table)  # hashable: measured_t0 is cached on it


def design_start(start: str, table) -> tuple[float, float]:
    """The exact-arithmetic interval of t_0 a start guarantees."""
    if start == "exponent":
        return root(Fraction(1, 2), 2), root(Fraction(2), 2)
    if start == "exponent+mantissa":
        return root(Fraction(1, 2), 4), root(Fraction(2), 4)
    if start == "magic":  # the FP32 trick's interval over every FP32 qn
        return measured_t0("fp32", start, None)
    worst = 0.0
    for parity, scale in enumerate((0.5, 1.0)):
        for i, (c0, c1) in enumerate(table[parity]):
            n = len(table[parity])
            lo, hi = math.sqrt(scale * (1 + i / n)), math.sqrt(scale * (1 + (i + 1) / n))
            fmin, fmax = image(lo, hi, c0 - 1, c1)
            worst = max(worst, 1 - fmin, fmax - 1)
    return 1 - worst, 1 + worst


def every_qn(fmt: str) -> torch.Tensor:
    """Every value of fmt in [1/2, 2], 2 included (a rounded qn can reach it)."""
    return _every_qn(fmt).clone()  # a copy the caller may change


@functools.cache  # 2**24 + 1 values for fp32, decoded once
def _every_qn(fmt: str) -> torch.Tensor:
    f = FORMATS[fmt]
    mant = torch.arange(1 << f.mantissa_bits, dtype=torch.int64)
    fields = torch.cat(
        [
            mant | ((f.bias - 1) << f.mantissa_bits),
            mant | (f.bias << f.mantissa_bits),
            torch.tensor([(f.bias + 1) << f.mantissa_bits]),
        ]
    )
    return decode(fields, f)


@functools.cache  # the magic start's fp32 interval is both a design start and a bound
def measured_t0(fmt: str, start: str, table) -> tuple[float, float]:
    """The interval of t_0 = a_0 sqrt(qn) over every qn of fmt, with a_0 as the
    library's emulation of the start computes it, rounded outward to float64.

    Exact: a float64 a_0^2 qn (two roundings, so within 2^-51 relative) finds
    the few candidates for each extreme, whose t_0^2 is then compared as a
    Fraction; the square root of the extremes is an integer square root. No
    library square root or reduction of uncertain rounding decides a bit.
    """
    ar = Arithmetic.resolve(torch.float64, fmt)
    qn = _every_qn(fmt)  # read only
    if start == "table":
        a0 = rsqrt.table_start(qn, ar, table)
    else:
        a0 = rsqrt.initial_estimate(qn, ar, start)
    approx = a0 * a0 * qn

    def extreme(pick, near):
        candidates = torch.nonzero(near(approx)).flatten().tolist()
        return pick(Fraction(a0[i].item()) ** 2 * Fraction(qn[i].item()) for i in candidates)

    window = math.ldexp(1.0, -48)  # far wider than the float64 products' error
    lo2 = extreme(min, lambda t: t <= t.min() * (1 + window))
    hi2 = extreme(max, lambda t: t >= t.max() * (1 - window))
    return root(lo2, 2, "down"), root(hi2, 2, "up")


def root(x: Fraction, n: int, direction: str = "nearest") -> float:
    """x ** (1/n) for x > 0 and n = 2 or 4, rounded to float64 to the nearest,
    "down" or "up", by integer square roots alone."""
    bits = 128  # fraction bits of the integer root: far beyond float64's 53
    scaled = x * (1 << (n * bits))
    # isqrt(floor(y)) = floor(sqrt(y)), and isqrt(isqrt(.)) the floor of the fourth root.
    floor_root = math.isqrt(scaled.numerator // scaled.denominator)
    if n == 4:
        floor_root = math.isqrt(floor_root)
    elif n != 2:
        raise ValueError(f"root: n must be 2 or 4, got {n}")
    exact = Fraction(floor_root) ** n == scaled
    # The root lies in [floor_root, floor_root + 1) / 2**bits, at its left end iff exact.
    if exact:
        return _to_float(Fraction(floor_root, 1 << bits), direction)
    if direction == "down":
        return _to_float(Fraction(floor_root, 1 << bits), "down")
    if direction == "up":
        return _to_float(Fraction(floor_root + 1, 1 << bits), "up")
    # Nearest: a point strictly inside the interval, which no float64 midpoint is.
    return _to_float(Fraction(2 * floor_root + 1, 1 << (bits + 1)), "nearest")


def _to_float(x: Fraction, direction: str) -> float:
    f = float(x)  # nearest
    if direction == "down" and Fraction(f) > x:
        f = math.nextafter(f, -math.inf)
    elif direction == "up" and Fraction(f) < x:
        f = math.nextafter(f, math.inf)
    return f


# Bounds -------------------------------------------------------------------------------


def bounds(fmt: str, start: str, table, steps) -> list[float]:
    """Worst relative error of a_n after n = 0, 1, ... steps, in fmt, with rounding."""
    u = math.ldexp(1.0, -(FORMATS[fmt].mantissa_bits + 1))
    lo, hi = measured_t0(fmt, start, table)
    out = [max(1 - lo, hi - 1)]
    for gamma, beta in steps:
        gamma_f, beta_f = round_scalar(gamma, fmt), round_scalar(beta, fmt)
        b = max(1 - lo, hi - 1)
        fmin, fmax = image(lo, hi, gamma_f, beta_f)
        e_max = abs(gamma_f) + beta_f * (1 + b) * (1 + b) * (1 + b)  # |gamma - beta u| <= this
        e_max = min(e_max, max(abs(gamma_f - beta_f * lo * lo), abs(gamma_f - beta_f * hi * hi)))
        rho = 1 + 3 * beta_f * (1 + b) * (1 + b) + 2 * e_max
        lo, hi = fmin * (1 - rho * u), fmax * (1 + rho * u)
        out.append(max(1 - lo, hi - 1))
    return out


# Output -------------------------------------------------------------------------------


def derive() -> dict:
    """Every schedule's constants, design errors and per-format bounds."""
    result = {}
    for name, start, beta_fixed in PRESETS:
        table = table_coefficients(TABLE_SEGMENTS) if start == "table" else None
        lo, hi = design_start(start, table)
        steps, errors = design_steps(lo, hi, beta_fixed)
        result[name] = {
            "start": start,
            "table": table,
            "steps": steps,
            "design_errors": errors,
            # Bounds run two Newton steps past the derived ones, as a schedule does.
            "bounds": {
                fmt: bounds(fmt, start, table, [*steps, (0.5, 0.5), (0.5, 0.5)])
                for fmt in BOUND_FORMATS
            },
        }
    return result


def render(data: dict) -> str:
    """_schedule_data.py: the constants and bounds as Python literals."""
    lines = [
        '"""Constants and worst-case bounds of the step schedules.',
        "",
        "Generated by scripts/derive_schedules.py --write; do not edit. See",
        'iterl2norm.schedules for what they mean."""',
        "",
        "# fmt: off",
        "SCHEDULE_DATA = {",
    ]
    for name, d in data.items():
        lines.append(f"    {name!r}: {{")
        lines.append(f"        'start': {d['start']!r},")
        if d["table"] is None:
            lines.append("        'table': None,")
        else:
            lines.append("        'table': (")
            for row in d["table"]:
                lines.append("            (")
                lines += [f"                ({c0!r}, {c1!r})," for c0, c1 in row]
                lines.append("            ),")
            lines.append("        ),")
        lines.append("        'steps': (")
        lines += [f"            ({g!r}, {b!r})," for g, b in d["steps"]]
        lines.append("        ),")
        lines.append(
            f"        'design_errors': ({', '.join(f'{e:.3e}' for e in d['design_errors'])},),"
        )
        lines.append("        'bounds': {")
        for fmt, bs in d["bounds"].items():
            # Full precision: a bound printed rounded could round below itself.
            lines.append(f"            {fmt!r}: ({', '.join(repr(b) for b in bs)},),")

        lines.append("        },")
        lines.append("    },")
    lines += ["}", "# fmt: on", ""]
    return "\n".join(lines)


def report(data: dict) -> str:
    out = []
    for name, d in data.items():
        out.append(f"{name}: start {d['start']}, {len(d['steps'])} steps")
        for n, (g, b) in enumerate(d["steps"], 1):
            out.append(
                f"  step {n}: gamma = {g:.10f}, beta = {b:.10f}, "
                f"error after = {d['design_errors'][n]:.3e}"
            )
        for fmt, bs in d["bounds"].items():
            out.append(f"  bound {fmt:9s}" + " ".join(f"{b:9.2e}" for b in bs))
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"regenerate {DATA_FILE.name}")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 unless the result is {DATA_FILE.name}"
    )
    args = parser.parse_args(argv)
    data = derive()
    print(report(data))
    if args.write:
        DATA_FILE.write_text(render(data))
        print(f"wrote {DATA_FILE}")
    if args.check:
        same = render(data) == DATA_FILE.read_text()
        print(f"{DATA_FILE.name}: {'regenerated identically' if same else 'DIFFERS'}")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
