"""iterl2norm and the baselines: precision, invariances, edge cases, bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from iterl2norm import (
    exact_normalize,
    fisr_normalize,
    invsqrt2_normalize,
    iterl2norm,
    round_to_format,
    sqrt23_normalize,
)
from iterl2norm.formats import FORMATS
from tolerances import tol

EMULATED = ["fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2"]
METHODS = [iterl2norm, exact_normalize, fisr_normalize, invsqrt2_normalize, sqrt23_normalize]


def reference(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    x = x.to(torch.float64)
    return x / x.norm(dim=dim, keepdim=True)


FORMATS_OF_NUMPY = {np.float64: "fp64", np.float32: "fp32", np.float16: "fp16"}


def gaussian(shape, seed=0, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("fmt", EMULATED)
@pytest.mark.parametrize("d", [1, 5, 64, 768, 4096])
def test_unit_norm_and_direction_against_float64(fmt, d):
    x = round_to_format(gaussian((32, d), seed=d) * 3, fmt)
    out = iterl2norm(x, fmt=fmt)
    torch.testing.assert_close(out, reference(x), **tol("iterl2norm", fmt))
    exact = exact_normalize(x, fmt=fmt)
    torch.testing.assert_close(exact, reference(x), **tol("exact_normalize", fmt))


@pytest.mark.parametrize("shape", [(7,), (5, 123, 123), (3, 1, 2048)])
def test_native_fp32_against_float64(shape):
    x = gaussian(shape, dtype=torch.float32)
    out = iterl2norm(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), reference(x), **tol("iterl2norm", "native_fp32"))


def test_precision_improves_with_steps_until_the_format_limit():
    x = gaussian((64, 768))
    errs = [
        (iterl2norm(x, steps=n, fmt="fp32") - reference(x)).abs().max().item() for n in range(6)
    ]
    # Gaussian rows start mid-interval, so fp32 is reached by step 4; after
    # that the error may only stay put.
    assert all(a > b for a, b in itertools.pairwise(errs[:5])), errs
    assert errs[5] <= errs[4] < 2e-7


@pytest.mark.parametrize("fmt", ["fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp64"])
@pytest.mark.parametrize("mode", ["scalar", "vector"])
def test_scale_invariance_over_the_whole_exponent_range(fmt, mode):
    # Integers of 3 significant bits times 2**n, for every n from the smallest
    # subnormal binade to the top of the range: every element is exact in fmt
    # (subnormals included), so pre-scaling must make every row identical.
    f = FORMATS[fmt]
    base = torch.tensor([[5.0, -3.0, 7.0, 1.0, 0.0, -6.0]], dtype=torch.float64)
    shifts = torch.arange(f.emin - f.mantissa_bits, f.emax - 3 + 1, dtype=torch.float64)
    x = base * torch.exp2(shifts)[:, None]  # one row per binade, all exact in fmt
    assert torch.equal(round_to_format(x, fmt), x)
    out = iterl2norm(x, fmt=fmt, mode=mode)
    assert torch.equal(out, out[:1].expand_as(out)), "output changed with the scale"
    assert torch.isfinite(out).all() and (out[:, 4] == 0).all()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, allow_subnormal=False, width=32), min_size=1, max_size=40),
    st.integers(-120, 120),
)
def test_native_fp32_is_exactly_scale_invariant(values, shift):
    x = torch.tensor(values, dtype=torch.float32)
    scaled = x * 2.0**shift
    if not torch.equal(scaled / 2.0**shift, x) or not torch.isfinite(scaled).all():
        return  # the scaled input itself lost bits: nothing to compare
    assert torch.equal(iterl2norm(scaled), iterl2norm(x))


@pytest.mark.parametrize("fn", METHODS)
@pytest.mark.parametrize("fmt", [None, "bf16", "fp8_e4m3"])
def test_zero_nan_and_inf_rows_stay_in_their_rows(fn, fmt):
    x = gaussian((5, 16), dtype=torch.float32)
    x[1] = 0.0
    x[2, 3] = float("nan")
    x[3, 0] = float("inf")
    out = fn(x, fmt=fmt)
    assert torch.equal(out[1], torch.zeros(16))
    assert torch.isnan(out[2]).all() and torch.isnan(out[3]).all()
    clean = fn(x[[0, 4]], fmt=fmt)
    assert torch.equal(out[[0, 4]], clean), "a bad row changed another row"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_large_activations_in_16_bit_stay_finite(dtype):
    x = (gaussian((8, 4096), dtype=torch.float32) * 1e4).to(dtype)
    fmt = "fp16" if dtype == torch.float16 else "bf16"
    for out in (
        iterl2norm(x, mode="vector"),
        iterl2norm(x, fmt=fmt, mode="vector"),
        fisr_normalize(x, fmt=fmt),
        fisr_normalize(x, fmt=fmt, acc_fmt=fmt),
    ):
        assert out.dtype == dtype and torch.isfinite(out).all()
    # Native 16-bit inputs compute in fp32 and round once at the end.
    torch.testing.assert_close(iterl2norm(x).double(), reference(x), **tol("iterl2norm", fmt))
    torch.testing.assert_close(
        iterl2norm(x, fmt=fmt).double(), reference(x), **tol("iterl2norm", fmt)
    )
    torch.testing.assert_close(
        iterl2norm(x, fmt=fmt, acc_fmt=fmt).double(),
        reference(x),
        **tol("iterl2norm", f"{fmt}+{fmt}"),
    )


def test_extreme_magnitudes_do_not_overflow_or_underflow():
    fp32 = FORMATS["fp32"]
    x = torch.tensor(
        [[fp32.max, fp32.max, -fp32.max], [fp32.smallest_subnormal, 0.0, fp32.smallest_subnormal]]
    )
    out = iterl2norm(x)
    expected = torch.tensor([[1, 1, -1], [1, 0, 1]], dtype=torch.float64) / torch.tensor(
        [[math.sqrt(3)], [math.sqrt(2)]], dtype=torch.float64
    )
    torch.testing.assert_close(out.double(), expected, **tol("iterl2norm", "native_fp32"))


@pytest.mark.parametrize("dim", [0, 1, -2, 2])
def test_dim_and_non_contiguous_inputs(dim):
    x = gaussian((6, 7, 8), dtype=torch.float32).transpose(0, 2)  # non-contiguous
    assert not x.is_contiguous()
    out = iterl2norm(x, dim=dim)
    assert out.shape == x.shape
    torch.testing.assert_close(out.double(), reference(x, dim), **tol("iterl2norm", "native_fp32"))
    assert torch.equal(out, iterl2norm(x.contiguous(), dim=dim))


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_numpy_in_numpy_out(dtype):
    x = np.random.default_rng(0).standard_normal((4, 33)).astype(dtype)
    out = iterl2norm(x, steps=7)  # 7 steps reach float64 precision too
    assert isinstance(out, np.ndarray) and out.dtype == dtype
    converged = tol("converged_native", FORMATS_OF_NUMPY[dtype])
    np.testing.assert_allclose(np.linalg.norm(out.astype(np.float64), axis=-1), 1, **converged)
    flipped = x[:, ::-1]  # negative strides; the sum runs in another order
    np.testing.assert_allclose(iterl2norm(flipped, steps=7), out[:, ::-1], **converged)


@pytest.mark.parametrize(
    ("in_dtype", "fmt", "out_dtype"),
    [
        (torch.float32, "bf16", torch.float32),
        (torch.bfloat16, "bf16", torch.bfloat16),
        (torch.float16, "bf16", torch.float32),
        (torch.float16, "fp8_e4m3", torch.float16),
        (torch.bfloat16, "fp32", torch.float32),
        (torch.float32, "fp64", torch.float64),
    ],
)
def test_emulated_output_dtype_holds_the_format(in_dtype, fmt, out_dtype):
    x = gaussian((3, 10), dtype=torch.float32).to(in_dtype)
    out = iterl2norm(x, fmt=fmt)
    assert out.dtype == out_dtype
    assert torch.equal(round_to_format(out, fmt), out.double())


def test_scalar_and_vector_mode_agree_in_fp64():
    x = gaussian((16, 300))
    for init in ("exponent", "exponent+mantissa", "magic"):
        a = iterl2norm(x, steps=7, init=init, fmt="fp64")
        b = iterl2norm(x, steps=7, init=init, fmt="fp64", mode="vector")
        torch.testing.assert_close(a, b, **tol("scalar_vs_vector", "fp64"))


def test_per_step_update_rates():
    x = gaussian((4, 50))
    same = iterl2norm(x, steps=3, update_rate=(0.5, 0.5, 0.5), fmt="fp32")
    assert torch.equal(same, iterl2norm(x, steps=3, fmt="fp32"))
    slow = iterl2norm(x, steps=3, update_rate=0.25, fmt="fp32")
    assert (slow - reference(x)).abs().max() > (same - reference(x)).abs().max()


def test_better_starts_converge_sooner():
    x = gaussian((256, 64)) * torch.exp2(torch.linspace(-20, 20, 256))[:, None]
    err = {
        init: (iterl2norm(x, steps=3, init=init, fmt="fp32") - reference(x)).abs().max()
        for init in ("exponent", "exponent+mantissa", "magic")
    }
    assert err["magic"] < err["exponent+mantissa"] < err["exponent"]


def test_autograd_matches_numerical_gradient():
    x = gaussian((3, 6)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: iterl2norm(t, steps=4), (x,))
    assert torch.autograd.gradcheck(lambda t: iterl2norm(t, steps=3, mode="vector"), (x,))


def test_autograd_converges_to_the_exact_gradient():
    x = gaussian((4, 20)).requires_grad_(True)
    probe = gaussian((4, 20), seed=1)
    (g_iter,) = torch.autograd.grad(iterl2norm(x, steps=8), x, probe)
    (g_ref,) = torch.autograd.grad(reference(x), x, probe)
    torch.testing.assert_close(g_iter, g_ref, **tol("l2_backward_8_steps", "fp64"))


@pytest.mark.parametrize("fmt", ["bf16", "fp16"])
def test_autograd_through_emulation_passes_rounding_straight_through(fmt):
    # The straight-through gradient is the native one evaluated at the rounded
    # intermediates: within the table's bound of the float64 native gradient,
    # relative to each row's largest component.
    x = gaussian((6, 64), dtype=torch.float32).requires_grad_(True)
    probe = gaussian((6, 64), seed=1, dtype=torch.float32)
    (emulated,) = torch.autograd.grad(iterl2norm(x, fmt=fmt), x, probe)
    (native,) = torch.autograd.grad(iterl2norm(x.double()), x, probe.double())
    emulated, native = emulated.double(), native.double()  # x's dtype, float32
    scale = native.abs().amax(dim=-1, keepdim=True)
    torch.testing.assert_close(
        emulated / scale, native / scale, **tol("l2_backward_straight_through", fmt)
    )


def test_empty_inputs():
    assert iterl2norm(torch.empty(0, 5)).shape == (0, 5)
    assert iterl2norm(torch.empty(3, 0), fmt="bf16").shape == (3, 0)


BAD_INPUTS = [
    (lambda: iterl2norm(torch.ones(2, 3), dim=2), ValueError, "dim 2"),
    (lambda: iterl2norm(torch.ones(2, 3), dim=1.0), TypeError, "dim"),
    (lambda: iterl2norm(torch.tensor(1.0)), ValueError, "0-dimensional"),
    (lambda: iterl2norm(torch.ones(3), steps=-1), ValueError, "steps must be >= 0, got -1"),
    (lambda: iterl2norm(torch.ones(3), steps=2.5), TypeError, "steps"),
    (lambda: iterl2norm(torch.ones(3), steps=True), TypeError, "steps"),
    (lambda: iterl2norm(torch.ones(3), fmt="fp12"), ValueError, "'fp12'"),
    (lambda: iterl2norm(torch.ones(3), fmt=3), TypeError, "fmt"),
    (lambda: iterl2norm(torch.ones(3), acc_fmt="fp32"), ValueError, "needs fmt"),
    (lambda: iterl2norm(torch.ones(3), fmt="fp32", acc_fmt="bf16"), ValueError, "'bf16'"),
    (
        lambda: iterl2norm(torch.ones(200), fmt="fp8_e4m3", acc_fmt="fp8_e4m3"),
        ValueError,
        "cannot hold",
    ),
    (lambda: iterl2norm(torch.ones(3, dtype=torch.int64)), TypeError, "torch.int64"),
    (lambda: iterl2norm(np.ones(3, dtype=np.int32)), TypeError, "int32"),
    (lambda: iterl2norm([1.0, 2.0]), TypeError, "list"),
    (lambda: iterl2norm(torch.ones(3), init="cubic"), ValueError, "'cubic'"),
    (lambda: iterl2norm(torch.ones(3), mode="matrix"), ValueError, "'matrix'"),
    (lambda: iterl2norm(torch.ones(3), update_rate=-0.5), ValueError, "-0.5"),
    (lambda: iterl2norm(torch.ones(3), update_rate=float("nan")), ValueError, "nan"),
    (lambda: iterl2norm(torch.ones(3), update_rate="fast"), TypeError, "'fast'"),
    (lambda: iterl2norm(torch.ones(3), steps=2, update_rate=(0.5,)), ValueError, "1 entries"),
    (lambda: fisr_normalize(torch.ones(3), magic=1 << 40), ValueError, "magic"),
    (lambda: fisr_normalize(torch.ones(3), steps=-2), ValueError, "-2"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_INPUTS)
def test_bad_input_raises_a_clear_error(call, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace("[", r"\[")):
        call()


def test_numpy_zero_dim_is_rejected_like_a_tensor():
    with pytest.raises(ValueError, match="0-dimensional"):
        iterl2norm(np.array(3.0))


def test_memoized_settings_still_reject_what_they_would_reject():
    # steps=1 is cached first; True == 1 and hash(True) == hash(1), yet bool is refused
    iterl2norm(torch.ones(3), steps=1)
    with pytest.raises(TypeError, match="steps"):
        iterl2norm(torch.ones(3), steps=True)
    for _ in range(2):  # errors are raised on every call, not cached
        with pytest.raises(ValueError, match="'cubic'"):
            iterl2norm(torch.ones(3), init="cubic")
    x = gaussian((4, 16), dtype=torch.float32)
    # a list of rates (unhashable) gives what the tuple gives
    assert torch.equal(
        iterl2norm(x, steps=2, update_rate=[0.5, 0.6]),
        iterl2norm(x, steps=2, update_rate=(0.5, 0.6)),
    )


def test_fisr_newton_steps_is_the_old_name_of_steps():
    x = gaussian((3, 16))
    with pytest.warns(DeprecationWarning, match="now fisr_normalize"):
        old = fisr_normalize(x, newton_steps=2)
    assert torch.equal(old, fisr_normalize(x, steps=2))
