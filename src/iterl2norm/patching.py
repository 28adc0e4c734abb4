"""Swap a live model's norm layers for IterL2Norm ones, and back.

In the spirit of Liger-Kernel's ``apply_liger_kernel_to_*``, but for any
model: :func:`patch_model` replaces every ``torch.nn.LayerNorm``,
``torch.nn.RMSNorm`` and every module that *behaves* like one (Hugging Face's
``LlamaRMSNorm`` and its many copies) with :class:`~iterl2norm.IterLayerNorm`
or :class:`~iterl2norm.IterRMSNorm` carrying the same weights, eps and
attribute names, so state dicts load unchanged. :func:`unpatch_model` puts
the originals back, with any change made to the weights in between.

>>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
>>> patch_model(model, steps=3)
['1']
>>> type(model[1]).__name__
'IterLayerNorm'
>>> unpatch_model(model), type(model[1]).__name__
(['1'], 'LayerNorm')
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from .modules import IterLayerNorm, IterRMSNorm

__all__ = ["find_norms", "patch_model", "patched", "unpatch_model"]

_ORIGINAL = "_iterl2norm_original"


# Relative agreement a probed module must show with the norm it is taken for:
# far above a norm's rounding in its own dtype, far below what computing a
# different norm changes (a missing mean subtraction, a (1 + weight) scale:
# O(1) on the probe, whose mean is 1 and spread 3).
def _probe_rtol(dtype: torch.dtype) -> float:
    return max(1e-4, 4 * torch.finfo(dtype).eps)


def _eps_of(module: nn.Module) -> float | None:
    for name in ("eps", "variance_epsilon", "epsilon"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def _probe_kind(module: nn.Module) -> str | None:
    """ "layer_norm", "rms_norm" or None, by running the module on a probe.

    Candidates are leaf modules whose only parameters are a 1-D ``weight``
    (and, for LayerNorm, a ``bias`` of the same shape) and that have an eps
    attribute; the probe's outputs decide which norm, if any, they compute.
    """
    params = dict(module.named_parameters(recurse=False))
    weight, eps = params.get("weight"), _eps_of(module)
    if weight is None or weight.dim() != 1 or eps is None or list(module.children()):
        return None
    if set(params) - {"weight", "bias"}:
        return None
    d = weight.shape[0]
    gen = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(2, 3, d, generator=gen) + 1).to(weight.device, weight.dtype)
    with torch.no_grad():
        try:
            out = module(x)
        except Exception:  # not callable on a plain tensor: not a norm we know
            return None
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            return None
        x32, w32 = x.float(), weight.float()
        bias = params.get("bias")
        candidates = {"rms_norm": nn.functional.rms_norm(x32, (d,), w32, eps)}
        candidates["layer_norm"] = nn.functional.layer_norm(
            x32, (d,), w32, None if bias is None else bias.float(), eps
        )
        for kind, expected in candidates.items():
            if kind == "rms_norm" and bias is not None:
                continue
            scale = expected.abs().max().clamp_min(1e-12)
            if ((out.float() - expected).abs().max() / scale).item() < _probe_rtol(x.dtype):
                return kind
    return None


def find_norms(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """(name, module, kind) for every norm layer of ``model`` that can be patched."""
    for name, module in model.named_modules():
        if isinstance(module, (IterLayerNorm, IterRMSNorm)):
            continue
        if isinstance(module, nn.LayerNorm):
            yield name, module, "layer_norm"
        elif isinstance(module, nn.RMSNorm):
            yield name, module, "rms_norm"
        elif "norm" in type(module).__name__.lower():
            kind = _probe_kind(module)
            if kind is not None:
                yield name, module, kind


def _replacement(module: nn.Module, kind: str, settings: dict) -> nn.Module:
    if isinstance(module, nn.LayerNorm):
        return IterLayerNorm.from_module(module, **settings)
    if isinstance(module, nn.RMSNorm):
        return IterRMSNorm.from_module(module, **settings)
    # A look-alike: a 1-D weight, an eps attribute, and (LayerNorm) a bias.
    weight, bias, eps = module.weight, getattr(module, "bias", None), _eps_of(module)
    factory = {"device": weight.device, "dtype": weight.dtype}
    if kind == "layer_norm":
        new = IterLayerNorm(weight.shape[0], eps=eps, bias=bias is not None, **factory, **settings)
    else:
        new = IterRMSNorm(weight.shape[0], eps=eps, **factory, **settings)
    new.load_state_dict(module.state_dict())
    for name in ("variance_epsilon", "epsilon"):  # keep the names callers read
        if hasattr(module, name):
            setattr(new, name, getattr(module, name))
    return new


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def patch_model(model: nn.Module, **iter_settings) -> list[str]:
    """Replace every norm layer of ``model`` in place; returns the names replaced.

    ``iter_settings`` are those of :class:`~iterl2norm.IterLayerNorm`
    (``steps``, ``update_rate``, ``init``, ``mode``, ``fmt``, ``acc_fmt``,
    ``schedule``). Raises ValueError if the model has no norm layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    unpatch_model(model)  # patching again changes the settings, from the originals
    found = list(find_norms(model))
    if not found:
        raise ValueError(f"{type(model).__name__} has no LayerNorm or RMSNorm layer to patch")
    names = []
    for name, module, kind in found:
        new = _replacement(module, kind, iter_settings)
        new.train(module.training)
        object.__setattr__(new, _ORIGINAL, module)  # not a submodule: no double state
        _set(model, name, new)
        names.append(name)
    return names


def unpatch_model(model: nn.Module) -> list[str]:
    """Put back the modules :func:`patch_model` replaced, with the replacement's
    current weights; returns their names."""
    names = []
    for name, module in list(model.named_modules()):
        original = getattr(module, _ORIGINAL, None)
        if original is None:
            continue
        original.load_state_dict(module.state_dict())
        _set(model, name, original)
        names.append(name)
    return names


@contextlib.contextmanager
def patched(model: nn.Module, **iter_settings):
    """``with patched(model, steps=3) as names: ...``: patch, then always unpatch
    (a model patched before the block comes out unpatched)."""

    names = patch_model(model, **iter_settings)
    try:
        yield names
    finally:
        unpatch_model(model)
