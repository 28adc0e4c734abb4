"""The one tolerance table: {(operation, format): (rtol, atol)} against float64.

Every entry is derived from error bounds, not fitted to results; the
comments give the derivation. u_F = 2**-(m+1) is the unit roundoff of format
F (half an ulp at 1).
"""

from __future__ import annotations

from iterl2norm.formats import FORMATS


def u(name: str) -> float:
    return 2.0 ** -(FORMATS[name].mantissa_bits + 1)


def tiny(name: str) -> float:
    return FORMATS[name].smallest_subnormal


# Worst relative error of the scale a_5 ~ qn**-0.5 after five steps (exponent
# start, update rate 1/2), over every qn of the format in [1/2, 2): measured by
# the exhaustive sweep, rounded up, and pinned (measured <= value < 1.01 x
# measured) by tests/test_rsqrt.py::test_worst_scale_error_after_five_steps.
WORST_SCALE_ERROR_5 = {
    "fp32": 5.42e-7,  # the exact-arithmetic bound 4.8e-7 (test_rsqrt), plus rounding
    "fp16": 8.38e-4,
    "bf16": 6.27e-3,
    "fp8_e4m3": 6.46e-2,
    "fp8_e5m2": 1.34e-1,
}
DEFAULT_ACC = {
    "fp32": "fp32",
    "fp16": "fp32",
    "bf16": "fp32",
    "fp8_e4m3": "fp32",
    "fp8_e5m2": "fp32",
}
MAX_LOG2_D = 14  # the tests use d <= 2**14


def l2_rtol(fmt: str, acc: str | None = None, *, estimate: float | None = None) -> float:
    """Relative error bound of an L2-normalized element, emulated in ``fmt``.

    - the estimate of qn**-0.5 (``estimate``; default: five IterL2Norm steps);
    - qn rounded from the accumulator to fmt: u_F / 2 on the root (0 if acc = fmt);
    - the adder tree: each of <= log2(d) levels rounds once, u_A each on s,
      half of that on the root;
    - the final product rounded once: u_F.
    """
    acc = acc or DEFAULT_ACC[fmt]
    estimate = WORST_SCALE_ERROR_5[fmt] if estimate is None else estimate
    qn_rounding = 0.0 if acc == fmt else u(fmt) / 2
    return estimate + qn_rounding + MAX_LOG2_D / 2 * u(acc) + u(fmt)


TOL: dict[tuple[str, str], tuple[float, float]] = {}
for _f in WORST_SCALE_ERROR_5:
    # Outputs near zero round on the subnormal grid: atol one subnormal.
    TOL["iterl2norm", _f] = (l2_rtol(_f), tiny(_f))
    # sqrt + divide: in place of the estimate, the root rounds once (u_F); the
    # quotient rounds once, like the final product.
    TOL["exact_normalize", _f] = (l2_rtol(_f, estimate=u(_f)), tiny(_f))
TOL["iterl2norm", "fp16+fp16"] = (l2_rtol("fp16", "fp16"), tiny("fp16"))
TOL["iterl2norm", "bf16+bf16"] = (l2_rtol("bf16", "bf16"), tiny("bf16"))

# Native fp32 (fmt=None): the emulated fp32 bound, with torch's summation
# order in place of the adder tree (pairwise as well, <= log2(d) levels).
TOL["iterl2norm", "native_fp32"] = TOL["iterl2norm", "fp32"]

# LayerNorm emulated in F against float64 LayerNorm of the same F inputs:
# x - mean rounds once (u_F), the L2 part as above, then * weight and + bias
# round once each (2 u_F relative to the output; atol u_F for outputs that
# cancel against a bias of at most 1).
for _f in ("fp16", "bf16", "fp8_e4m3"):
    TOL["layer_norm", _f] = (l2_rtol(_f) + 3 * u(_f), u(_f))

# Drop-in layers at their defaults (native fp32, 5 steps) against torch.nn
# in float64: outputs are O(1) after weight/bias; the L2 bound plus the
# centring, weight and bias roundings: (l2_rtol + 3u, 3u) < (2e-6, 2e-6).
TOL["layer_norm_forward", "native_fp32"] = (2e-6, 2e-6)
TOL["rms_norm_forward", "native_fp32"] = (2e-6, 2e-6)
assert l2_rtol("fp32") + 3 * u("fp32") < 2e-6
# Backward on the torch path is autograd through the iteration, i.e. the
# exact derivative of the computed function (the compiled kernel's analytic
# backward, below, is tighter and passes these too). Its d(a_5)/dq lags the
# forward by one step: worst relative error 5.05e-5 over every q (test_rsqrt
# measures and pins it). That error enters only the radial term of the
# Jacobian, which is at most the gradient's natural scale r * max|w * upstream|:
# atol = 1e-4 of that scale.
TOL["layer_norm_backward", "native_fp32"] = (1e-4, 1e-4)
TOL["rms_norm_backward", "native_fp32"] = (1e-4, 1e-4)
# With 8 steps the lag is below 1e-10 and the gradient is as good as fp32
# arithmetic allows: ~10 roundings of terms of the natural scale, < 1e-6 of it.
TOL["layer_norm_backward_8_steps", "native_fp32"] = (1e-6, 1e-6)
TOL["rms_norm_backward_8_steps", "native_fp32"] = (1e-6, 1e-6)

# The compiled native kernel differentiates x / sqrt(q) analytically at its
# computed scale: the forward's relative error 5.4e-7 on the scale, plus a few
# float roundings of O(1/|x|) terms: 2e-6 relative, atol 2e-6 of the largest
# gradient component.
TOL["l2_backward_analytic", "native_fp32"] = (2e-6, 2e-6)
# bf16 inputs and gradients: the kernel computes in float and rounds dx once,
# so it is within one bf16 ulp (2u) of the float32 computation rounded alike;
# atol 2u of the largest component for the entries that cancel.
TOL["backward_16_bit_vs_fp32", "native_bf16"] = (2 * 2 * u("bf16"), 2 * u("bf16"))

# 16-bit inputs on the native path compute in fp32 like torch, then both
# round the result once to the 16-bit dtype: at most one ulp apart (2u).
TOL["layer_norm_forward", "native_bf16"] = (2 * 2 * u("bf16"), 1e-6)
TOL["layer_norm_forward", "native_fp16"] = (2 * 2 * u("fp16"), 1e-6)

# A whole model patched at the defaults against the same model unpatched:
# each norm output is within 2e-6 of its own scale (above); the tiny random
# models of the tests are residual stacks near identity at initialization
# (weights ~ N(0, 0.02)), so the errors of their <= 5 norms add rather than
# compound: 5 x 2e-6 = 1e-5 of the output's scale.
TOL["model_outputs", "native_fp32"] = (1e-5, 1e-5)

# Autograd through the emulation passes the roundings straight through: the
# gradient is the native Jacobian a (I - y y^T) of the computed function, with
# a and y as emulated. Each of its three factors carries at most the forward's
# relative error, so relative to the row's largest component: 3 x l2_rtol.
for _f in ("bf16", "fp16"):
    TOL["l2_backward_straight_through", _f] = (0.0, 3 * l2_rtol(_f))

# Converged native runs (7 or 8 steps: the exact-arithmetic error of the scale,
# 1.5 e_n**2 per step from 4.8e-7 after five, is below 1e-24, far under
# any format's roundoff): a few roundings remain, the scale's, the product's
# and (16-bit) the output's, each at most u: 4 eps = 8 u covers them.
for _f in ("fp64", "fp32", "fp16", "bf16"):
    TOL["converged_native", _f] = (4 * FORMATS[_f].eps, 0.0)
# Autograd through 8 float64 steps: the derivative's one-step lag is below
# 1e-24 (above), so ~10 float64 roundings of terms of the gradient's natural
# scale remain: 100 u relative and absolute covers them.
TOL["l2_backward_8_steps", "fp64"] = (100 * u("fp64"), 100 * u("fp64"))
# iter_rsqrt where the study proved convergence (every input within one ulp
# of the correctly rounded q**-0.5: fp32 after 6 steps, bf16 after 4): one ulp
# plus the correct rounding's half ulp, 1.5 ulp <= 3 u relative.
TOL["iter_rsqrt_converged", "fp32"] = (3 * u("fp32"), 0.0)
TOL["iter_rsqrt_converged", "bf16"] = (3 * u("bf16"), 0.0)
# lambda = 1/2 against Newton's product form in float64: two orders of about
# four roundings each on values near 1, whose correction terms are small: 4 u.
TOL["euler_vs_newton_form", "fp64"] = (4 * u("fp64"), 0.0)

# Scalar and vector mode at fp64: equal in exact arithmetic, so they may

# differ by the float64 rounding of ~6 operations per step on O(1) values.
TOL["scalar_vs_vector", "fp64"] = (1e-14, 1e-15)


def tol(op: str, fmt: str) -> dict[str, float]:
    """``rtol``/``atol`` keywords for ``torch.testing.assert_close``."""
    rtol, atol = TOL[op, fmt]
    return {"rtol": rtol, "atol": atol}
