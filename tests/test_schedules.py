"""Step schedules: derived bounds proven by exhaustion, goals, API, cost.

Every value of qn the estimate can see (every FP16/BF16/FP8 value and every
FP32 mantissa of both exponent parities in [1/2, 2], plus 2 itself) goes
through each schedule's emulation; the worst relative error after every
step must stay within the bound scripts/derive_schedules.py printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from script_support import load_script

from iterl2norm import iter_rsqrt, iterl2norm, layer_norm
from iterl2norm._arith import Arithmetic
from iterl2norm._validation import IterSettings
from iterl2norm.cost import schedule_cost
from iterl2norm.formats import fisr_magic
from iterl2norm.rsqrt import INVSQRT2_KS, INVSQRT2_MAGIC_FP32, Step, fisr, invsqrt2
from iterl2norm.schedules import (
    SCHEDULES,
    Iteration,
    correction_steps,
    euler_iteration,
    fisr_iteration,
    get_schedule,
    run,
    start,
)
from iterl2norm.study.convergence import _ulp, correctly_rounded_rsqrt
from tolerances import tol

ROOT = Path(__file__).resolve().parents[1]
DERIVED = [name for name in SCHEDULES if name != "paper"]
BOUND_FORMATS = ("fp32", "fp16", "bf16")  # see scripts/derive_schedules.py


derive = load_script("derive_schedules")


def arithmetic(fmt: str) -> Arithmetic:
    # IEEE single arithmetic is FP32 emulation bit for bit (test below), and fast.
    return (
        Arithmetic.resolve(torch.float32)
        if fmt == "fp32"
        else Arithmetic.resolve(torch.float64, fmt)
    )


def iterates(name: str, fmt: str, qn: torch.Tensor, steps: int):
    """a_0, a_1, ..., a_steps of a schedule, as float64."""
    schedule = get_schedule(name)
    ar = arithmetic(fmt)
    q = qn.to(ar.carrier)
    a = start(q, ar, schedule)
    yield a.to(torch.float64)
    for gamma_beta in schedule.step_constants(steps):
        a = correction_steps(q, a, ar, [gamma_beta])
        yield a.to(torch.float64)


@pytest.fixture(scope="module")
def grids():
    return {fmt: derive.every_qn(fmt) for fmt in BOUND_FORMATS}


@pytest.mark.parametrize("fmt", BOUND_FORMATS)
@pytest.mark.parametrize("name", DERIVED)
def test_worst_case_is_within_the_derived_bound_at_every_step(grids, name, fmt):
    qn = grids[fmt]
    exact = torch.sqrt(qn)
    bounds = get_schedule(name).bounds[fmt]
    for n, (a, bound) in enumerate(
        zip(iterates(name, fmt, qn, len(bounds) - 1), bounds, strict=True)
    ):
        worst = (a * exact - 1).abs().max().item()
        assert worst <= bound, f"{name} {fmt} step {n}: {worst:.3e} > {bound:.3e}"
    # The start's bound is its measured interval: attained, not an envelope.
    a0 = next(iterates(name, fmt, qn, 0))
    assert (a0 * exact - 1).abs().max().item() > 0.999 * bounds[0]


# The goals: within 1 ulp of the correctly rounded qn^-1/2 for every input,
# at this many steps (and not one step earlier).
FULL_PRECISION = {
    ("minimax", "fp32"): 4,
    ("minimax", "fp16"): 3,
    ("minimax", "bf16"): 3,
    ("minimax-magic", "fp32"): 3,
    ("minimax-magic", "bf16"): 1,
    ("table", "fp32"): 2,
    ("table", "fp16"): 1,
    ("table", "bf16"): 0,
}


@pytest.fixture(scope="module")
def targets(grids):
    """The correctly rounded qn^-1/2 of every grid value and its ulp, per format
    (computed once: three schedules share each grid)."""
    cache = {}

    def get(fmt):
        if fmt not in cache:
            target = correctly_rounded_rsqrt(grids[fmt], fmt)
            cache[fmt] = target, _ulp(target, fmt)
        return cache[fmt]

    return get


@pytest.mark.parametrize(("name", "fmt"), list(FULL_PRECISION))
def test_full_precision_step_counts(grids, targets, name, fmt):
    qn = grids[fmt]
    target, ulp = targets(fmt)
    ulps = [
        ((a - target).abs() / ulp).max().item()
        for a in iterates(name, fmt, qn, FULL_PRECISION[name, fmt])
    ]
    assert ulps[-1] <= 1, ulps
    if len(ulps) > 1:
        assert ulps[-2] > 1, ulps


@pytest.mark.parametrize("name", DERIVED)
def test_native_fp32_is_emulated_fp32_for_schedules(grids, name):
    qn = grids["fp32"][::97]
    native = list(iterates(name, "fp32", qn, 3))
    ar = Arithmetic.resolve(torch.float64, "fp32")
    schedule = get_schedule(name)
    a = start(qn, ar, schedule)
    assert torch.equal(a, native[0])
    for n, gb in enumerate(schedule.step_constants(3), 1):
        a = correction_steps(qn, a, ar, [gb])
        assert torch.equal(a, native[n])


def test_fp32_subnormal_inputs_reach_full_precision_through_iter_rsqrt():
    # Every FP32 subnormal q, through the whole path (exponent split of a
    # subnormal, the table start, two steps, the power of two restored).
    q = torch.arange(1, 1 << 23, dtype=torch.int32).view(torch.float32)
    r = iter_rsqrt(q, steps=2, schedule="table").to(torch.float64)
    target = correctly_rounded_rsqrt(q.to(torch.float64), "fp32")
    assert ((r - target).abs() / _ulp(target, "fp32")).max().item() <= 1


def test_derivation_script_regenerates_the_committed_constants():
    data = derive.derive()
    assert derive.render(data) == derive.DATA_FILE.read_text()
    # The exact-arithmetic figures for minimax from the exponent start.
    errors = data["minimax"]["design_errors"]
    assert [f"{e:.1e}" for e in errors[1:5]] == ["8.6e-02", "5.6e-03", "2.3e-05", "4.0e-10"]


def test_paper_schedule_is_the_default_and_others_differ():
    x = torch.randn(4, 96, generator=torch.Generator().manual_seed(0))
    assert torch.equal(iterl2norm(x, schedule="paper", fmt="bf16"), iterl2norm(x, fmt="bf16"))
    assert not torch.equal(iterl2norm(x, steps=2, schedule="minimax"), iterl2norm(x, steps=2))
    y = layer_norm(x, (96,), steps=2, schedule="table")
    ref = torch.nn.functional.layer_norm(x.double(), (96,))
    torch.testing.assert_close(y.double(), ref, **tol("layer_norm_forward", "native_fp32"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"schedule": "fastest"}, "unknown schedule 'fastest'"),
        ({"schedule": "table", "init": "magic"}, "leave init and update_rate"),
        ({"schedule": "minimax", "update_rate": 0.25}, "leave init and update_rate"),
        ({"schedule": "table", "mode": "vector"}, "scalar mode only"),
    ],
)
def test_bad_schedule_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        iterl2norm(torch.ones(3), **kwargs)


class _Counting(Arithmetic):
    count = 0

    def rnd(self, x):
        _Counting.count += x.numel()
        return super().rnd(x)


@pytest.mark.parametrize("name", DERIVED)
@pytest.mark.parametrize("steps", [0, 1, 3])
def test_schedule_cost_counts_the_rounded_operations(name, steps):
    base = Arithmetic.resolve(torch.float64, "bf16")
    ar = _Counting(base.fmt, base.acc, base.carrier, base.emulated)
    qn = torch.tensor([[1.37]], dtype=torch.float64)
    schedule = get_schedule(name)
    _Counting.count = 0
    correction_steps(qn, start(qn, ar, schedule), ar, schedule.step_constants(steps))
    cost = schedule_cost(name, steps)
    assert _Counting.count == cost.multiplies + cost.adds + cost.pow2_scalings
    assert cost.table_entries == (32 if name == "table" else 0)


# The one description of an iteration ----------------------------------------------


def test_settings_describe_their_iteration():
    paper = IterSettings(steps=2, update_rate=(0.75, 0.5), init="magic").iteration
    assert paper == Iteration("magic", (Step("euler", 0.75), Step("euler", 0.5)))
    table = IterSettings(steps=3, schedule="table").iteration
    assert table.start == "table" and table.table == get_schedule("table").table
    assert [s.form for s in table.steps] == ["correction"] * 3
    assert table.steps[-1] == Step("correction", 0.5, 0.5)  # Newton's after the derived ones
    assert IterSettings(steps=4, schedule="paper").iteration == euler_iteration(
        "exponent", [0.5] * 4
    )


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "fp16"])
def test_fisr_family_as_a_description_is_the_classic_code(fmt):
    ar = arithmetic(fmt)
    qn = derive.every_qn(fmt)[:: 251 if fmt == "fp32" else 1].to(ar.carrier)
    for steps in (0, 1, 2, 3):
        assert torch.equal(
            run(qn, ar, fisr_iteration(steps)), fisr(qn, ar, steps=steps, magic=None)
        )
        invsqrt2_description = fisr_iteration(
            steps, magic=fisr_magic(fmt, INVSQRT2_MAGIC_FP32), ks=INVSQRT2_KS
        )
        assert torch.equal(run(qn, ar, invsqrt2_description), invsqrt2(qn, ar, steps=steps))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Step("halley", 0.5), "unknown step form 'halley'"),
        (lambda: Iteration("cubic", ()), "unknown start 'cubic'"),
        (lambda: Iteration("table", ()), "a table start needs its table"),
        (lambda: Iteration("magic", (), table=((1.0, 0.5),)), "a table start needs its table"),
    ],
)
def test_bad_descriptions_are_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()
