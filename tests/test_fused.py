"""The compiled kernels: the same bits as the torch emulation, the native path's
accuracy and gradient, and the torch paths they replace still tested."""

from __future__ import annotations

import pytest
import torch

import exact_reference as ref
from iterl2norm import _fused, iterl2norm, layer_norm, rms_norm
from iterl2norm.formats import FORMATS, fisr_magic, round_to_format
from tolerances import tol


@pytest.fixture
def torch_paths():
    """Run the body with the compiled kernels switched off."""
    with _fused.disabled():
        yield


def test_the_kernels_are_built():
    # make installs with --no-build-isolation, so the extension must be there;
    # the speed figures in docs/SPEED.md depend on it.
    assert _fused.available()


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    nan = a.isnan()
    return a.dtype == b.dtype and torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan])


def rows(dtype: torch.dtype, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(10, d, generator=gen)
    x[1] *= 1e4
    x[2] = 0.0
    x[3] = 2.5
    x[4, 3 % d] = float("nan")
    x[5, 0] = float("inf")
    x[6] *= 1e-4
    x[7, : d // 2] *= 2.0**-20
    x[8, 1 % d] = 300.0

    return x.to(dtype)


CASES = [
    ("paper", lambda x, **kw: iterl2norm(x, **kw)),
    ("e+m", lambda x, **kw: iterl2norm(x, steps=3, init="exponent+mantissa", **kw)),
    ("magic", lambda x, **kw: iterl2norm(x, steps=2, init="magic", **kw)),
    ("rates", lambda x, **kw: iterl2norm(x, steps=3, update_rate=(0.75, 0.3, 0.5), **kw)),
    ("minimax", lambda x, **kw: iterl2norm(x, steps=4, schedule="minimax", **kw)),
    ("table", lambda x, **kw: iterl2norm(x, steps=1, schedule="table", **kw)),
    (
        "rms",
        lambda x, **kw: rms_norm(
            x, (x.shape[-1],), torch.linspace(0.5, 2, x.shape[-1]), 1e-5, **kw
        ),
    ),
    ("rms eps", lambda x, **kw: rms_norm(x, (x.shape[-1],), None, 0.5, steps=3, **kw)),
    (
        "layer",
        lambda x, **kw: layer_norm(
            x,
            (x.shape[-1],),
            torch.linspace(0.5, 2, x.shape[-1]),
            torch.linspace(-1, 1, x.shape[-1]),
            1e-5,
            **kw,
        ),
    ),
    (
        "layer tiny eps",
        lambda x, **kw: layer_norm(
            x, (x.shape[-1],), eps=1e-30, schedule="minimax-magic", steps=2, **kw
        ),
    ),
]


@pytest.mark.parametrize("fmt", ["bf16", "fp16", "fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("label", "fn"), CASES, ids=[c[0] for c in CASES])
def test_emulation_kernel_equals_the_torch_emulation(fmt, dtype, label, fn):
    for d in (1, 7, 64, 300):
        x = rows(dtype, d, seed=d)
        fast = fn(x, fmt=fmt)
        with _fused.disabled():
            slow = fn(x, fmt=fmt)
        assert same(fast, slow), (fmt, dtype, label, d)


@pytest.mark.parametrize("fmt", ["bf16", "fp16", "fp8_e4m3"])
def test_emulation_kernel_equals_the_exact_model(fmt):
    F, A = FORMATS[fmt], FORMATS["fp32"]
    method = {"kind": "iter", "init": "magic", "rates": [0.5, 0.5], "magic": fisr_magic(F)}
    gen = torch.Generator().manual_seed(7)
    x = round_to_format(torch.randn(6, 33, generator=gen, dtype=torch.float64) * 50, fmt)
    ours = iterl2norm(x.float(), steps=2, init="magic", fmt=fmt)  # float32 input: the kernel
    want = [
        [float(v) for v in ref.normalize([ref.Fraction(e) for e in row.tolist()], F, A, method)]
        for row in x
    ]
    assert ours.double().tolist() == want


@pytest.mark.parametrize("on", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("shape", [(7,), (5, 123, 123), (3, 2, 2048)])
def test_native_paths_against_float64(on, shape):
    with _fused.disabled(off=not on):
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        ref64 = x.double() / x.double().norm(dim=-1, keepdim=True)
        torch.testing.assert_close(
            iterl2norm(x).double(), ref64, **tol("iterl2norm", "native_fp32")
        )
        y = layer_norm(x, (shape[-1],), eps=1e-5).double()
        torch.testing.assert_close(
            y,
            torch.nn.functional.layer_norm(x.double(), (shape[-1],), eps=1e-5),
            **tol("layer_norm_forward", "native_fp32"),
        )


def test_native_kernel_gradient_of_l2_is_the_analytic_one():
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(2), requires_grad=True)
    probe = torch.randn(4, 50, generator=torch.Generator().manual_seed(3))
    (g,) = torch.autograd.grad(iterl2norm(x), x, probe)
    x64 = x.detach().double().requires_grad_(True)
    (g64,) = torch.autograd.grad(x64 / x64.norm(dim=-1, keepdim=True), x64, probe.double())
    rtol, atol = tol("l2_backward_analytic", "native_fp32").values()
    torch.testing.assert_close(g.double(), g64, rtol=rtol, atol=atol * g64.abs().max().item())


def test_bf16_inputs_and_special_rows_on_the_native_kernel():
    x = rows(torch.bfloat16, 64)
    out = iterl2norm(x)
    assert out.dtype == torch.bfloat16
    assert torch.isnan(out[4]).all() and torch.isnan(out[5]).all() and (out[2] == 0).all()
    clean = [0, 1, 3, 6, 7, 8, 9]
    ref64 = x[clean].double() / x[clean].double().norm(dim=-1, keepdim=True)
    torch.testing.assert_close(out[clean].double(), ref64, **tol("iterl2norm", "bf16"))


def test_torch_paths_stay_correct(torch_paths):
    x = rows(torch.float32, 33)
    assert not _fused.available()
    out = iterl2norm(x)
    assert torch.isnan(out[4]).all() and (out[2] == 0).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_conversions_equal_torch_casts(dtype):
    from iterl2norm import _kernels

    every = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16).view(dtype)
    assert same(_kernels.widen(every), every.float())
    # Every 16-bit value, the midpoints between neighbours (ties), and one
    # float above and below each midpoint, plus random float32 bit patterns.
    wide = every.float()
    wide = wide[wide.isfinite()].unique()
    mids = ((wide[1:].double() + wide[:-1].double()) / 2).float()
    near = torch.cat(
        [
            mids,
            mids.nextafter(torch.tensor(float("inf"))),
            mids.nextafter(torch.tensor(float("-inf"))),
        ]
    )
    gen = torch.Generator().manual_seed(5)
    bits = torch.randint(-(1 << 31), 1 << 31, (1 << 20,), generator=gen, dtype=torch.int64)
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 3.4e38, 1e-45])
    x = torch.cat([wide, near, bits.to(torch.int32).view(torch.float32), specials]).contiguous()
    assert same(_kernels.narrow_to(x, dtype).float(), x.to(dtype).float())
    # Signed zeros survive both ways.
    assert same(
        _kernels.narrow_to(x, dtype).view(torch.int16)[x == 0],
        x.to(dtype).view(torch.int16)[x == 0],
    )


def test_native_kernel_backward_in_bf16_follows_fp32():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(6, 96, generator=gen).bfloat16()
    probe = torch.randn(6, 96, generator=gen).bfloat16()
    w = torch.linspace(0.5, 2, 96).bfloat16()
    b = torch.linspace(-1, 1, 96).bfloat16()

    def grads(dtype):
        leaves = [t.to(dtype).requires_grad_(True) for t in (x, w, b)]
        y = layer_norm(leaves[0], (96,), leaves[1], leaves[2], 1e-5)
        return torch.autograd.grad(y, leaves, probe.to(dtype))

    rtol, atol = tol("backward_16_bit_vs_fp32", "native_bf16").values()
    for low, high in zip(grads(torch.bfloat16), grads(torch.float32), strict=True):
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(
            low.float(), high, rtol=rtol, atol=atol * high.abs().max().item()
        )


def test_native_kernel_without_autograd_gives_the_same_bits():
    # Inference skips the autograd.Function; training goes through it.
    x = rows(torch.float32, 96)
    w = torch.linspace(0.5, 1.5, 96, requires_grad=True)
    b = torch.linspace(-0.1, 0.1, 96, requires_grad=True)
    with_grad = layer_norm(x, (96,), w, b)
    assert with_grad.requires_grad
    with torch.no_grad():
        plain = layer_norm(x, (96,), w, b)
    assert not plain.requires_grad
    assert same(with_grad.detach(), plain)
    with torch.inference_mode():
        assert same(rms_norm(x, (96,), w), rms_norm(x, (96,), w.detach()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_short_call_path_is_taken_and_gives_the_general_paths_bits(dtype, monkeypatch):
    # The common eager call (contiguous, last dim, nothing needing a gradient)
    # goes straight to the kernel; anything else takes the general path, with
    # the same bits.
    from iterl2norm import IterLayerNorm, _rows

    x = rows(dtype, 96).reshape(2, -1, 96)
    w = torch.linspace(0.5, 1.5, 96)
    b = torch.linspace(-0.1, 0.1, 96)
    general = {
        "layer_norm": layer_norm(x, [96], w, b),  # a list: not the short path
        "rms_norm": rms_norm(x, [96], w),
        "module": layer_norm(x, [96], w.to(dtype), b.to(dtype), 1e-5).to(dtype),
    }
    module = IterLayerNorm(96, dtype=dtype)
    with torch.no_grad():
        module.weight.copy_(w)
        module.bias.copy_(b)

    def general_path(*args, **kwargs):
        raise AssertionError("the general path ran")

    monkeypatch.setattr(_rows, "norm_rows", general_path)
    short = {"layer_norm": layer_norm(x, (96,), w, b), "rms_norm": rms_norm(x, 96, w)}
    with torch.no_grad():
        short["module"] = module(x)
    for name, out in short.items():
        assert same(out, general[name]), name
    with pytest.raises(AssertionError, match="general path"):
        layer_norm(x.transpose(0, 1), (96,), w, b)  # not contiguous


@pytest.mark.parametrize("magnitude", [2e38, 1e37, 1e-37, 1e-44])
def test_native_kernel_rows_at_the_ends_of_float_range(magnitude):
    # Scales near 2^-126 (huge rows) or beyond 2^126 (tiny rows) leave float's
    # normal range: those rows are scaled in double, forward and backward.
    gen = torch.Generator().manual_seed(4)
    base = torch.rand(6, 40, generator=gen) + 0.5  # |x| / magnitude in [0.5, 1.5)
    sign = torch.where(torch.rand(6, 40, generator=gen) < 0.5, -1.0, 1.0)
    x64 = (base * sign).double() * magnitude
    x = x64.float()
    assert torch.isfinite(x).all() and (x != 0).all()
    x64 = x.double()  # what the float input holds (subnormals included)
    ref = x64 / x64.norm(dim=-1, keepdim=True)
    xg = x.clone().requires_grad_(True)
    out = iterl2norm(xg)
    torch.testing.assert_close(out.double(), ref, **tol("iterl2norm", "native_fp32"))
    w = torch.linspace(0.5, 1.5, 40)
    y = rms_norm(x, (40,), w, eps=0.0).double()
    ref_rms = x64 / x64.pow(2).mean(dim=-1, keepdim=True).sqrt() * w.double()
    torch.testing.assert_close(y, ref_rms, **tol("rms_norm_forward", "native_fp32"))
    probe = torch.randn(6, 40, generator=gen)
    (g,) = torch.autograd.grad(out, xg, probe)
    x64g = x64.clone().requires_grad_(True)
    (g64,) = torch.autograd.grad(x64g / x64g.norm(dim=-1, keepdim=True), x64g, probe.double())
    rtol, atol = tol("l2_backward_analytic", "native_fp32").values()
    scale = g64.abs().max().item()
    if scale < 1e38:  # the gradient of a row of size 1e-37 is ~1e37 and fits float
        torch.testing.assert_close(g.double(), g64, rtol=rtol, atol=atol * scale)
