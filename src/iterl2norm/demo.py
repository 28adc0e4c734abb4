"""``iterl2norm demo``: a first look at precision, per format and step count.

Three tables:

1. Error of L2 normalization against float64, per format, for IterL2Norm at
   steps 1..5 (the paper's settings: exponent start, update rate 1/2, scalar
   mode), classic FISR with one and two Newton steps, and sqrt + divide
   in the same format. The reference is float64 x/||x|| of the input after
   it is rounded to the format, so the numbers measure the method, not the
   quantization of its input.
2. The worst case over every input of the inverse square root (every
   mantissa of both exponent parities), per step: the paper's "five steps".
3. The drop-in check: IterLayerNorm/IterRMSNorm at their defaults (native
   fp32) against torch.nn.LayerNorm/RMSNorm, forward and backward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch

from .formats import EVALUATED, get_format, round_to_format
from .functional import layer_norm, rms_norm
from .methods import METHODS
from .normalize import exact_normalize, fisr_normalize, iterl2norm
from .study.convergence import convergence_rows
from .study.precision import errors

DEFAULT_FORMATS = EVALUATED
DEFAULT_DIMS = (64, 768, 4096)
DROP_IN_SHAPES = ((5, 123, 123), (16, 768), (4, 4096))


def methods(max_steps: int) -> list[tuple[str, Callable]]:
    """(label, f(x, fmt)) for every method the demo compares."""
    rows = [
        (f"iterl2norm steps={n}", lambda x, fmt, n=n: iterl2norm(x, steps=n, fmt=fmt))
        for n in range(1, max_steps + 1)
    ]
    rows += [
        ("fisr steps=1", lambda x, fmt: fisr_normalize(x, steps=1, fmt=fmt)),
        ("fisr steps=2", lambda x, fmt: fisr_normalize(x, steps=2, fmt=fmt)),
        (f"exact ({METHODS['exact']})", lambda x, fmt: exact_normalize(x, fmt=fmt)),
    ]
    return rows


def sample_vectors(d: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian vectors, each scaled by 2**U(-6, 6) to exercise the pre-scaling."""
    x = torch.randn(n, d, generator=generator, dtype=torch.float64)
    scale = torch.exp2(torch.empty(n, 1, dtype=torch.float64).uniform_(-6, 6, generator=generator))
    return x * scale


def precision_table(
    formats: Sequence[str],
    dims: Sequence[int],
    vectors: int,
    seed: int,
    max_steps: int = 5,
    progress: Callable[[str], None] | None = None,
):
    """Rows of {format, d, method, mean_abs, max_abs, norm_rel_mean, norm_rel_max}."""
    rows = []
    for fmt in formats:
        fmt = get_format(fmt).name
        for d in dims:
            gen = torch.Generator().manual_seed(seed + d)
            x = round_to_format(sample_vectors(d, vectors, gen), fmt)
            ref = x / x.norm(dim=-1, keepdim=True)
            for label, f in methods(max_steps):
                rows.append({"format": fmt, "d": d, "method": label, **errors(f(x, fmt), ref)})
            if progress:
                progress(f"{fmt} d={d}")
    return rows


def _torch_and_iter(norm: str, d: int, weight: torch.Tensor, bias: torch.Tensor):
    """PyTorch's functional norm and ours, with the same parameters."""
    if norm == "LayerNorm":
        return (
            partial(
                torch.nn.functional.layer_norm,
                normalized_shape=(d,),
                weight=weight,
                bias=bias,
                eps=1e-5,
            ),
            partial(layer_norm, normalized_shape=(d,), weight=weight, bias=bias, eps=1e-5),
        )
    return (
        partial(torch.nn.functional.rms_norm, normalized_shape=(d,), weight=weight),
        partial(rms_norm, normalized_shape=(d,), weight=weight),
    )


def _output_and_grad(fn: Callable, x: torch.Tensor, upstream: torch.Tensor):
    t = x.clone().requires_grad_(True)
    y = fn(t)
    (grad,) = torch.autograd.grad(y, t, upstream)
    return y.detach(), grad


def drop_in_table(seed: int) -> list[dict]:
    """Max |Iter* - torch.nn.*| of outputs and input gradients at the defaults (fp32)."""
    rows = []
    gen = torch.Generator().manual_seed(seed)
    for shape in DROP_IN_SHAPES:
        d = shape[-1]
        x = torch.randn(shape, generator=gen)
        weight = 1 + 0.1 * torch.randn(d, generator=gen)
        bias = 0.1 * torch.randn(d, generator=gen)
        upstream = torch.randn(shape, generator=gen)
        for norm in ("LayerNorm", "RMSNorm"):
            torch_fn, iter_fn = _torch_and_iter(norm, d, weight, bias)
            y_ref, g_ref = _output_and_grad(torch_fn, x, upstream)
            y_it, g_it = _output_and_grad(iter_fn, x, upstream)
            rows.append(
                {
                    "norm": norm,
                    "shape": list(shape),
                    "forward_max_abs": (y_it - y_ref).abs().max().item(),
                    "backward_max_abs": (g_it - g_ref).abs().max().item(),
                    "backward_ref_max": g_ref.abs().max().item(),
                }
            )
    return rows


def worst_case_table(formats: Sequence[str], max_steps: int) -> list[dict]:
    """Worst error of the scale a_n ~ q**-0.5 over every q, per step, for the
    paper's settings (exponent start, update rate 1/2)."""
    rows = []
    for fmt in formats:
        rows += convergence_rows(get_format(fmt).name, max_steps, inits=("exponent",), rates=(0.5,))
    return rows
