"""The one tolerance table: {(operation, format): (rtol, atol)} against float64.

Each entry is derived, not fitted; the comment says from what. u = 2**-(m+1)
is the unit roundoff of the format (half an ulp at 1).
"""

from __future__ import annotations

from iterl2norm.formats import FORMATS


def _u(name: str) -> float:
    return 2.0 ** -(FORMATS[name].mantissa_bits + 1)


def _tiny(name: str) -> float:
    return FORMATS[name].smallest_subnormal


TOL: dict[tuple[str, str], tuple[float, float]] = {}

for _name in ("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2"):
    # iterl2norm at 5 steps, exponent start, emulated in the format. The
    # scale's exact-arithmetic error after five Newton steps is <= 4.8e-7
    # (METHOD.md section 4); a 16/8-bit iteration stalls within a few units
    # of its own roundoff instead: ~6 roundings per step, contracting, so 8u
    # on the scale, plus the final rounding of each output (u) -> 9u + 4.8e-7.
    # Outputs near zero round on the subnormal grid: atol one subnormal.
    TOL["iterl2norm", _name] = (9 * _u(_name) + 4.8e-7, _tiny(_name))
    # sqrt + divide: sqrt and divide each round once (2u), q is rounded to
    # the datapath (u/2 on the root) plus the accumulated sum (d*u_acc << u).
    TOL["exact_normalize", _name] = (4 * _u(_name), _tiny(_name))

# Native fp32 (fmt=None): same reasoning as emulated fp32, with torch's own
# summation order instead of the adder tree.
TOL["iterl2norm", "native_fp32"] = TOL["iterl2norm", "fp32"]

# Drop-in layers at their defaults (native fp32, 5 steps) against torch.nn
# in float64: outputs are O(1) after weight/bias, so a relative error of
# 4.8e-7 (the iteration) + ~8 fp32 roundings gives about 1.5e-6: (2e-6, 2e-6).
TOL["layer_norm_forward", "native_fp32"] = (2e-6, 2e-6)
TOL["rms_norm_forward", "native_fp32"] = (2e-6, 2e-6)
# Backward is autograd through the iteration, i.e. the exact derivative of
# the computed function. Its d(a_5)/dq lags the forward by one step: worst
# relative error 5.05e-5 over every q (test_rsqrt measures and pins it). That
# error enters only the radial term of the Jacobian, which is at most the
# gradient's natural scale r * max|w * upstream|: atol = 1e-4 of that scale.
TOL["layer_norm_backward", "native_fp32"] = (1e-4, 1e-4)
TOL["rms_norm_backward", "native_fp32"] = (1e-4, 1e-4)
# 16-bit inputs on the native path compute in fp32 like torch, then both
# round the result once to the 16-bit dtype: at most one ulp apart (2u).
TOL["layer_norm_forward", "native_bf16"] = (2 * 2 * _u("bf16"), 1e-6)
TOL["layer_norm_forward", "native_fp16"] = (2 * 2 * _u("fp16"), 1e-6)

# Scalar and vector mode at fp64: equal in exact arithmetic, so they may
# differ by the float64 rounding of ~6 operations per step on O(1) values.
TOL["scalar_vs_vector", "fp64"] = (1e-14, 1e-15)


def tol(op: str, fmt: str) -> dict[str, float]:
    """``rtol``/``atol`` keywords for ``torch.testing.assert_close``."""
    rtol, atol = TOL[op, fmt]
    return {"rtol": rtol, "atol": atol}
