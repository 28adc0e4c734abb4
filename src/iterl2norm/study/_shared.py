"""What the study's report and its plots both use: which rows they show and
at which d and input they compare methods."""

from __future__ import annotations

from .convergence import PEERS

HEADLINE = [  # (method, init, mode, steps) shown in the per-format precision tables
    *[("iterl2norm", "exponent", "scalar", n) for n in range(1, 6)],
    ("fisr", "-", "scalar", 1),
    ("fisr", "-", "scalar", 2),
    ("invsqrt2", "-", "scalar", 2),
    ("sqrt23", "-", "scalar", 2),
    ("exact", "-", "scalar", 0),
]
PEER_NAMES = tuple(PEERS)
COST_D = 4096  # the d of the equal-cost and mode tables and plots

# Unit Gaussian rows all have q close to d, so for them the exponent start's
# error is a function of d alone (u_0 ~ 1 at d = 4096, ~ 1/2 at d = 2048). The
# equal-cost and mode comparisons use randomly scaled rows, whose u_0 spread
# over the whole start interval, so that no method is favoured by the choice of d.
COST_INPUT = "scaled"


def method_key(row: dict) -> tuple:
    """A precision row's (method, init, mode, steps)."""
    return (row["method"], row["init"], row["mode"], row["steps"])


def cost_d(dims) -> int:
    """The d of the equal-cost and mode comparisons: COST_D, or the middle d run."""
    return COST_D if COST_D in dims else dims[len(dims) // 2]


def pareto(points: list[tuple[int, float]]) -> list[bool]:
    """Which (cost, error) points no other point beats on both (ties allowed)."""
    return [
        not any((c2 <= c and e2 < e) or (c2 < c and e2 <= e) for c2, e2 in points)
        for c, e in points
    ]
