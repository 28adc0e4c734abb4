"""LayerNorm/RMSNorm drop-ins against PyTorch's own modules."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from iterl2norm import (
    IterLayerNorm,
    IterRMSNorm,
    _rows,
    functional,
    layer_norm,
    rms_norm,
    round_to_format,
)
from iterl2norm._validation import _settings_memo, iter_settings
from iterl2norm.formats import get_format
from iterl2norm.schedules import get_schedule
from tolerances import tol

SHAPES = [  # (input shape, normalized_shape)
    ((5, 123, 123), (123,)),
    ((4, 768), (768,)),
    ((2, 3, 4096), (4096,)),
    ((3, 6, 10), (6, 10)),
    ((7, 1), (1,)),
]


def _randomize(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p + 0.2 * torch.randn(p.shape, generator=gen))
    return module


def _forward_backward(module: nn.Module, x: torch.Tensor, probe: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = module(x)
    grads = torch.autograd.grad(y, [x, *module.parameters()], probe)
    return y.detach(), grads


@pytest.mark.parametrize(("shape", "normalized"), SHAPES)
@pytest.mark.parametrize(
    ("torch_cls", "iter_cls", "op"),
    [
        (nn.LayerNorm, IterLayerNorm, "layer_norm"),
        (nn.RMSNorm, IterRMSNorm, "rms_norm"),
    ],
)
@pytest.mark.parametrize("steps", [5, 8])
def test_matches_torch_forward_and_backward(shape, normalized, torch_cls, iter_cls, op, steps):
    gen = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(shape, generator=gen) + 0.5
    probe = torch.randn(shape, generator=gen)
    module = _randomize(torch_cls(normalized), seed=1)
    ours = iter_cls.from_module(module, steps=steps)  # fp32
    reference = copy.deepcopy(module).double()  # PyTorch's own module in float64
    if reference.eps is None:  # RMSNorm's default eps is that of the input dtype: fp32's
        reference.eps = torch.finfo(torch.float32).eps
    y_ref, g_ref = _forward_backward(reference, x.double(), probe.double())
    y, g = _forward_backward(ours, x, probe)
    torch.testing.assert_close(y.double(), y_ref, **tol(f"{op}_forward", "native_fp32"))
    # The gradient's natural scale: 1/rms per row times the largest |w * upstream|.
    dims = tuple(range(x.dim() - len(normalized), x.dim()))
    centered = (
        x.double() - x.double().mean(dims, keepdim=True) if op == "layer_norm" else x.double()
    )
    r = 1 / torch.sqrt(centered.pow(2).mean(dims) + reference.eps)
    scale = r.max().item() * (probe.double() * reference.weight).abs().max().item()
    backward = f"{op}_backward" if steps == 5 else f"{op}_backward_{steps}_steps"
    rtol, atol = tol(backward, "native_fp32").values()

    # The input gradient at the table's tolerance; parameter gradients sum over
    # every row in fp32 as well, so they get the 5-step (lag) tolerance at any step count.
    torch.testing.assert_close(g[0].double(), g_ref[0], rtol=rtol, atol=atol * scale)
    rtol, atol = tol(f"{op}_backward", "native_fp32").values()
    for got, want in zip(g[1:], g_ref[1:], strict=True):
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol * scale)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_inputs_match_torch_within_one_ulp(dtype):
    x = torch.randn(8, 512, generator=torch.Generator().manual_seed(0)).to(dtype)
    ref = _randomize(nn.LayerNorm(512, dtype=dtype), seed=2)
    ours = IterLayerNorm.from_module(ref)
    with torch.no_grad():
        y_ref, y = ref(x), ours(x)
    assert y.dtype == dtype
    name = "native_bf16" if dtype == torch.bfloat16 else "native_fp16"
    torch.testing.assert_close(y.float(), y_ref.float(), **tol("layer_norm_forward", name))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_rows_with_an_outlier_first_match_torch(dtype):
    # The kernel sums about the first element in one pass, and sums again about
    # the mean where that element lies far out (the one-pass sum would cancel).
    x = torch.randn(6, 384, generator=torch.Generator().manual_seed(5))
    x[0, 0] = 100.0  # K far out: the second pass
    x[1, 0] = -40.0
    x[2] += 300.0  # a large mean, K near it: one pass
    x[3, 0], x[3, 1:] = 3.0, x[3, 1:] * 1e-3  # a spike over a near-constant row
    x = x.to(dtype)
    ref = _randomize(nn.LayerNorm(384, dtype=dtype), seed=3)
    ours = IterLayerNorm.from_module(ref)
    with torch.no_grad():
        y = ours(x)
        # against float64, not torch: on row 2 torch's own float mean is off by
        # ~1e-5, which near-zero outputs (normalized value cancelling the bias) show
        y64 = F.layer_norm(x.double(), (384,), ref.weight.double(), ref.bias.double(), eps=ref.eps)
    name = "native_bf16" if dtype == torch.bfloat16 else "native_fp16"
    torch.testing.assert_close(y.double(), y64, **tol("layer_norm_forward", name))


@pytest.mark.parametrize(
    ("kwargs", "keys"),
    [
        ({}, ["weight", "bias"]),
        ({"bias": False}, ["weight"]),
        ({"elementwise_affine": False}, []),
    ],
)
def test_layer_norm_parameters_and_state_dict_like_torch(kwargs, keys):
    ref, ours = nn.LayerNorm(16, **kwargs), IterLayerNorm(16, **kwargs)
    assert list(ours.state_dict()) == list(ref.state_dict()) == keys
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    ours.load_state_dict(_randomize(ref, seed=3).state_dict())
    x = torch.randn(3, 16)
    torch.testing.assert_close(ours(x), ref(x), **tol("layer_norm_forward", "native_fp32"))
    copy = IterLayerNorm.from_module(ref, steps=6)
    assert copy.settings.steps == 6 and (copy.bias is None) == (ref.bias is None)
    if ref.weight is not None:
        assert copy.weight.data_ptr() != ref.weight.data_ptr()  # copied, not shared
        assert torch.equal(copy.weight, ref.weight)


def test_rms_norm_eps_semantics_like_torch():
    x = torch.full((2, 4), 1e-4)  # mean(x**2) = 1e-8, comparable to fp32 eps
    for eps in (None, 1e-6, 0.0):
        ref, ours = nn.RMSNorm(4, eps=eps), IterRMSNorm(4, eps=eps)
        assert list(ours.state_dict()) == list(ref.state_dict()) == ["weight"]
        torch.testing.assert_close(ours(x), ref(x), **tol("rms_norm_forward", "native_fp32"))
    ours = IterRMSNorm.from_module(nn.RMSNorm([2, 3], eps=1e-3, elementwise_affine=False))
    assert ours.normalized_shape == (2, 3) and ours.eps == 1e-3 and ours.weight is None


def test_layer_norm_with_large_eps_and_constant_rows():
    x = torch.tensor([[3.0, 3.0, 3.0, 3.0], [1e-4, -1e-4, 1e-4, -1e-4]])
    for eps in (1e-5, 1.0):
        torch.testing.assert_close(
            layer_norm(x, (4,), eps=eps),
            torch.nn.functional.layer_norm(x, (4,), eps=eps),
            **tol("layer_norm_forward", "native_fp32"),
        )


def test_extra_repr_and_settings():
    m = IterLayerNorm(8, steps=3, init="magic", fmt="bf16", mode="vector")
    text = repr(m)
    for part in ("(8,)", "eps=1e-05", "steps=3", "init=magic", "fmt=bf16", "mode=vector"):
        assert part in text
    assert "fmt=native" in repr(IterRMSNorm(4))


@pytest.mark.parametrize("fmt", ["bf16", "fp16", "fp8_e4m3"])
def test_emulated_layer_norm_against_float64(fmt):
    gen = torch.Generator().manual_seed(0)
    x = round_to_format(torch.randn(4, 64, generator=gen, dtype=torch.float64), fmt)
    w = round_to_format(1 + 0.1 * torch.randn(64, generator=gen, dtype=torch.float64), fmt)
    b = round_to_format(0.1 * torch.randn(64, generator=gen, dtype=torch.float64), fmt)
    module = nn.LayerNorm(64, dtype=torch.float64)
    with torch.no_grad():
        module.weight.copy_(w)
        module.bias.copy_(b)
    y = IterLayerNorm.from_module(module, fmt=fmt)(x)
    torch.testing.assert_close(y, module(x), **tol("layer_norm", fmt))


def test_numpy_input_to_functional_forms():
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    out = layer_norm(x, (8,))
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    expected = torch.nn.functional.layer_norm(torch.from_numpy(x), (8,)).numpy()
    np.testing.assert_allclose(out, expected, **tol("layer_norm_forward", "native_fp32"))
    assert isinstance(rms_norm(x, 8), np.ndarray)


BAD = [
    (lambda: layer_norm(torch.ones(2, 3), (4,)), ValueError, r"normalized_shape \(4,\)"),
    (lambda: layer_norm(torch.ones(2, 3), (2, 3, 1)), ValueError, "normalized_shape"),
    (lambda: layer_norm(torch.ones(2, 3), "3"), TypeError, "normalized_shape"),
    (
        lambda: layer_norm(torch.ones(2, 3), (3,), torch.ones(4)),
        ValueError,
        r"weight has shape \(4,\)",
    ),
    (lambda: layer_norm(torch.ones(2, 3), (3,), eps=-1.0), ValueError, "eps must be >= 0"),
    (lambda: rms_norm(torch.ones(2, 3), (3,), eps="small"), TypeError, "eps"),
    (lambda: IterLayerNorm(4, steps=-1), ValueError, "steps"),
    (lambda: IterRMSNorm(4, fmt="fp7"), ValueError, "'fp7'"),
    (lambda: IterLayerNorm.from_module(nn.RMSNorm(4)), TypeError, "LayerNorm"),
    (lambda: IterRMSNorm.from_module(nn.LayerNorm(4)), TypeError, "RMSNorm"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD)
def test_bad_input_raises_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_extreme_eps_and_magnitudes_stay_finite_and_right():
    x = torch.tensor([[1e-40, -2e-40, 3e-40, 1e-41]])
    expected = torch.nn.functional.rms_norm(x.double(), (4,), eps=1e-80)
    for kwargs in ({}, {"fmt": "fp32"}, {"mode": "vector"}):
        torch.testing.assert_close(
            rms_norm(x, (4,), eps=1e-80, **kwargs).double(),
            expected,
            **tol("rms_norm_forward", "native_fp32"),
        )
    big = torch.tensor([[1.7e308, -1.7e308, -1.7e308, -1.7e308]], dtype=torch.float64)
    expected = torch.tensor([[3, -1, -1, -1]], dtype=torch.float64) / 3**0.5
    for kwargs in ({}, {"fmt": "fp64"}, {"mode": "vector"}):
        torch.testing.assert_close(
            layer_norm(big, (4,), **kwargs), expected, **tol("layer_norm_forward", "native_fp32")
        )
    for fmt in ("fp32", "fp16"):
        y = rms_norm(torch.randn(2, 8), (8,), eps=1e9, fmt=fmt, acc_fmt=fmt, mode="vector")
        assert torch.isfinite(y).all()


def test_constant_rows_centre_to_zero_natively():
    # BERT's eps = 1e-12: any rounding left in x - mean would be normalized to O(1).
    for value, d in ((3.7, 768), (0.1, 3)):
        x = torch.full((2, d), value)
        assert torch.equal(layer_norm(x, (d,), eps=1e-12), torch.zeros(2, d))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_rms_norm_default_eps_is_that_of_the_compute_dtype_like_torch(dtype):
    x = torch.full((1, 4), 1e-2 if dtype == torch.float16 else 1e-4, dtype=dtype)
    ours, ref = IterRMSNorm(4, dtype=dtype, steps=8)(x), nn.RMSNorm(4, dtype=dtype)(x)
    torch.testing.assert_close(ours, ref, **tol("converged_native", get_format(dtype).name))


def test_shapes_may_be_numpy_integers():
    m = IterLayerNorm([np.int64(8)])
    assert m.normalized_shape == (8,) and m(torch.randn(2, 8)).shape == (2, 8)
    assert layer_norm(torch.randn(2, 8), (np.int32(8),)).shape == (2, 8)


def test_modules_pass_their_settings_straight_through(monkeypatch):
    # forward must not turn its validated settings back into keyword arguments.
    def fail(*args):
        raise AssertionError("settings validated again in forward")

    monkeypatch.setattr(functional, "iter_settings", fail)
    x = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
    ln, rms = IterLayerNorm(16, schedule="table", steps=1), IterRMSNorm(16, fmt="bf16")
    assert torch.equal(ln(x), _rows.layer_norm(x, (16,), ln.weight, ln.bias, ln.eps, ln.settings))
    assert torch.equal(rms(x), _rows.rms_norm(x, (16,), rms.weight, rms.eps, rms.settings))


def test_settings_with_a_schedule_are_hashable_and_their_validation_cached():
    schedule = get_schedule("minimax")
    _settings_memo.cache_clear()
    first = iter_settings(3, 0.5, "exponent", "scalar", "bf16", None, schedule)
    assert iter_settings(3, 0.5, "exponent", "scalar", "bf16", None, schedule) is first
    assert _settings_memo.cache_info().hits == 1 and hash(first) == hash(replace(first))
