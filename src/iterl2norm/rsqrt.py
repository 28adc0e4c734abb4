"""Division- and square-root-free estimates of r = q**-0.5 on a normalized q.

Every normalization in this package reduces a vector to one positive scalar
q and needs r = q**-0.5. The shared front end (see ``_pipeline``) takes the
exponent out of q first, so the functions here only ever see
``qn = q * 2**(-2j)`` in [1/2, 2]; the power of two 2**(-j) is folded back
into the output scaling exactly. That is how hardware keeps the exponent
apart from the mantissa datapath, and it is why nothing here can overflow.

Each function takes ``qn`` (carrier tensor holding datapath values) and an
:class:`~iterl2norm._arith.Arithmetic`, and returns the estimate of qn**-0.5
in the datapath format. The operation order in each is the one a hardware
unit would follow and is part of the bit-exact definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._arith import Arithmetic
from .formats import Format, decode, encode, fisr_magic, round_scalar

INITS = ("exponent", "exponent+mantissa", "magic")

INVSQRT2_MAGIC_FP32 = 0x5F376908
INVSQRT2_KS = (1.50087896, 1.50000057)
SQRT23_MAGIC_FP32 = 0x5F1110A0
SQRT23_COEFFS = (2.2825186, 2.2533049)


def initial_estimate(qn: torch.Tensor, ar: Arithmetic, init: str) -> torch.Tensor:
    """a_0 ~ qn**-0.5 without division or square root.

    - ``"exponent"``: the exponent alone, a_0 = 1 here (2**-j outside), so
      u_0 = a_0**2 q lies in [1/2, 2).
    - ``"exponent+mantissa"``: one comparison of the mantissa with sqrt(2),
      per exponent parity, picks a_0 from {1, 2**-0.5, 2**0.5} (rounded to
      the datapath), so u_0 lies in [2**-0.5, 2**0.5).
    - ``"magic"``: the fast-inverse-square-root bit trick,
      bits(a_0) = MAGIC - bits(qn) >> 1, with MAGIC for the datapath format.
    """
    if init == "exponent":
        return torch.ones_like(qn)
    if init == "exponent+mantissa":
        odd = qn < 1  # qn in [1/2, 1) iff the exponent of q is odd
        mantissa = torch.where(odd, 2 * qn, qn)  # in [1, 2): the stored significand
        high = mantissa >= smallest_at_least_sqrt2(ar.fmt)
        one = torch.ones_like(qn)
        down, up = one * ar.const(math.sqrt(0.5)), one * ar.const(math.sqrt(2))
        return torch.where(odd, torch.where(high, one, up), torch.where(high, down, one))
    if init == "magic":
        return magic_estimate(qn, ar.fmt, fisr_magic(ar.fmt))
    raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")


def table_start(qn: torch.Tensor, ar: Arithmetic, table) -> torch.Tensor:
    """a_0 = c0 - c1 * qn, (c0, c1) from a table indexed by exponent parity
    and the top mantissa bits (len(table[0]) segments per parity, a power of
    two): the piecewise-linear start a hardware unit holds in ROM.

    table[0] covers qn in [1/2, 1) (odd exponent of q), table[1] [1, 2); a
    qn rounded up to 2 uses the last segment, whose fit holds up to 2.
    """
    c0, c1 = table_lookup(qn, ar, table)
    return ar.rnd(c0 - ar.rnd(c1 * qn.detach()))


def table_lookup(qn: torch.Tensor, ar: Arithmetic, table) -> tuple[torch.Tensor, torch.Tensor]:
    """(c0, c1) for each qn, as datapath values: the ROM read of :func:`table_start`."""
    segments = len(table[0])
    coeffs = torch.tensor(
        [[[ar.const(c) for c in pair] for pair in row] for row in table], dtype=qn.dtype
    )  # (parity, segment, 2)
    q = qn.detach()
    even = q >= 1
    mantissa = torch.where(even, q, 2 * q)  # the stored significand, in [1, 2]
    index = ((mantissa - 1) * segments).floor().long().clamp(0, segments - 1)
    c = coeffs[even.long(), index]  # (..., 2)
    return c[..., 0], c[..., 1]


def smallest_at_least_sqrt2(fmt: Format) -> float:
    # The comparison must be exact: compare with the first format value >= sqrt(2).
    # float(sqrt(2)) lies above sqrt(2), so any narrower value below it is below sqrt(2).
    t = round_scalar(math.sqrt(2), fmt)
    return t if t >= math.sqrt(2) else t + fmt.eps


def magic_estimate(qn: torch.Tensor, fmt: Format, magic: int) -> torch.Tensor:
    """The bit trick r0 = from_bits(magic - (to_bits(qn) >> 1)) in ``fmt``."""
    bits = encode(qn.detach(), fmt)
    return decode(magic - (bits >> 1), fmt).to(qn.dtype)


STEP_FORMS = ("euler", "correction", "newton")


@dataclass(frozen=True)
class Step:
    """One step of the scalar iteration on a ~ qn**-0.5: its form and its
    constants as designed (each is rounded to the datapath where it is used).

    - ``"euler"``: a <- a + a * (lambda (1 - u)), c1 = lambda: IterL2Norm's
      Euler step; lambda = 1/2 is Newton's method.
    - ``"correction"``: a <- a + a * (gamma - beta u), c1 = gamma, c2 = beta:
      the schedules' generalized step (gamma = beta = lambda is Euler's).
    - ``"newton"``: a <- a * (k - h a a) with h = qn/2, c1 = k: the FISR
      family's product form (k = 1.5 is Newton's method).

    with u = (a a) qn. :func:`step_ops` defines the operation order; the
    emulation (:func:`apply_steps`), the hardware model, the cost model and
    the RTL read it, and the compiled kernels read the form and constants.
    """

    form: str
    c1: float
    c2: float = 0.0

    def __post_init__(self):
        if self.form not in STEP_FORMS:
            raise ValueError(
                f"unknown step form {self.form!r}; choose one of {', '.join(STEP_FORMS)}"
            )


@dataclass(frozen=True)
class Op:
    """One rounded operation of the iteration: ``out = a (kind) b``, rounded
    to the datapath. Operands are value names (``"qn"``, ``"a"`` and the
    step's temporaries) or constants as designed (rounded where used)."""

    kind: str  # "mul", "add" or "sub"
    out: str
    a: str | float
    b: str | float


def step_ops(step: Step, halved: bool = False) -> tuple[Op, ...]:
    """The operations of one step, in order: the definition every consumer
    reads (the torch emulation here, the hardware model, the cost model and
    the RTL). Per form:

    - euler: t = a*a, u = t*qn, e = 1-u, g = lambda*e, h = a*g, a = a+h;
    - correction: t = a*a, u = t*qn, v = beta*u, e = gamma-v, h = a*e, a = a+h;
    - newton (the classic code's order): half = 0.5*qn (once: unless
      ``halved``, an earlier step made it), t = half*a, t = t*a, t = k-t, a = a*t.
    """
    if step.form == "newton":
        half = () if halved else (Op("mul", "half", 0.5, "qn"),)
        return (
            *half,
            Op("mul", "t", "half", "a"),
            Op("mul", "t", "t", "a"),
            Op("sub", "t", step.c1, "t"),
            Op("mul", "a", "a", "t"),
        )
    square = (Op("mul", "t", "a", "a"), Op("mul", "u", "t", "qn"))
    if step.form == "euler":
        error = (Op("sub", "e", 1.0, "u"), Op("mul", "g", step.c1, "e"), Op("mul", "h", "a", "g"))
    else:
        error = (
            Op("mul", "v", step.c2, "u"),
            Op("sub", "e", step.c1, "v"),
            Op("mul", "h", "a", "e"),
        )
    return (*square, *error, Op("add", "a", "a", "h"))


def iteration_ops(steps: Sequence[Step]) -> list[tuple[Op, ...]]:
    """:func:`step_ops` of each step in turn (Newton's half made once)."""
    out, halved = [], False
    for step in steps:
        out.append(step_ops(step, halved))
        halved = halved or step.form == "newton"
    return out


def apply_steps(
    qn: torch.Tensor, a: torch.Tensor, ar: Arithmetic, steps: Sequence[Step]
) -> torch.Tensor:
    """a after each of ``steps`` in turn, operation by operation as
    :func:`step_ops` defines them."""
    values = {"qn": qn, "a": a}
    for ops in iteration_ops(steps):
        for op in ops:
            x, y = (values[v] if isinstance(v, str) else ar.const(v) for v in (op.a, op.b))
            exact = x * y if op.kind == "mul" else x + y if op.kind == "add" else x - y
            values[op.out] = ar.rnd(exact)
    return values["a"]


def euler_steps(
    qn: torch.Tensor, a: torch.Tensor, ar: Arithmetic, rates: Sequence[float]
) -> torch.Tensor:
    """IterL2Norm's scalar mode: a <- a + lambda * a * (1 - a**2 * qn), one
    Euler step of dz/dt = (1 - |z|**2) z per rate; lambda = 1/2 is Newton."""
    return apply_steps(qn, a, ar, [Step("euler", rate) for rate in rates])


def newton_steps(
    qn: torch.Tensor, r: torch.Tensor, ar: Arithmetic, ks: Sequence[float]
) -> torch.Tensor:
    """The FISR family's step r <- r * (k - (qn/2) * r * r), k per step;
    k = 1.5 is Newton's method."""
    return apply_steps(qn, r, ar, [Step("newton", k) for k in ks])


def iteration(
    qn: torch.Tensor, ar: Arithmetic, *, rates: Sequence[float], init: str
) -> torch.Tensor:
    """IterL2Norm in scalar mode: initial estimate, then one Euler step per rate."""
    return euler_steps(qn, initial_estimate(qn, ar, init), ar, rates)


def newton_constants(steps: int, ks: Sequence[float] = ()) -> tuple[float, ...]:
    """k of each of ``steps`` product-form steps: ``ks`` first, then Newton's 1.5."""
    return (*ks, *(1.5,) * max(steps - len(ks), 0))[:steps]


def fisr(qn: torch.Tensor, ar: Arithmetic, *, steps: int, magic: int | None) -> torch.Tensor:
    """Fast inverse square root: magic-constant start, then ``steps`` Newton steps."""
    magic = fisr_magic(ar.fmt) if magic is None else magic
    return newton_steps(qn, magic_estimate(qn, ar.fmt, magic), ar, newton_constants(steps))


def invsqrt2(qn: torch.Tensor, ar: Arithmetic, *, steps: int) -> torch.Tensor:
    """Walczyk et al. InvSqrt2: modified Newton constants k1, k2, then Newton."""
    r0 = magic_estimate(qn, ar.fmt, fisr_magic(ar.fmt, INVSQRT2_MAGIC_FP32))
    return newton_steps(qn, r0, ar, newton_constants(steps, INVSQRT2_KS))


def sqrt23(qn: torch.Tensor, ar: Arithmetic, *, steps: int) -> torch.Tensor:
    """Kokosinski/Moroz et al. SQRT_23-bits: a cubic first step, then Newton.

    Step 1: c = -(qn*r)*r, r = r * (k1 + c*(k2 + c)). Later steps are Newton
    in correction form, t = (h*r)*r, r = r + r*(0.5 - t) with h = qn/2: its
    rounding gives the published 1.0e-7 after two steps in FP32, where the
    product form r*(1.5 - t) of :func:`newton_steps` gives 1.4e-7.
    """
    r = magic_estimate(qn, ar.fmt, fisr_magic(ar.fmt, SQRT23_MAGIC_FP32))
    if steps >= 1:
        k1, k2 = (ar.const(k) for k in SQRT23_COEFFS)
        c = -ar.rnd(ar.rnd(qn * r) * r)
        r = ar.rnd(r * ar.rnd(k1 + ar.rnd(c * ar.rnd(k2 + c))))
    if steps >= 2:
        h = ar.rnd(0.5 * qn)
        for _ in range(steps - 1):
            t = ar.rnd(ar.rnd(h * r) * r)
            r = ar.rnd(r + ar.rnd(r * ar.rnd(0.5 - t)))
    return r


def exponent_split(q: torch.Tensor) -> torch.Tensor:
    """j = floor((e+1)/2) for q = m * 2**e, m in [1, 2): q * 2**(-2j) is in [1/2, 2)."""
    _, exponent = torch.frexp(q.detach())  # q = f * 2**exponent, f in [0.5, 1)
    return torch.div(exponent.to(torch.int64), 2, rounding_mode="floor")
