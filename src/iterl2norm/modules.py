"""Drop-in replacements for ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm``.

Same constructor arguments, parameters and ``state_dict`` keys as PyTorch's
modules, plus the IterL2Norm settings; ``forward`` is one call to the
functional form.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import nn

from . import _rows
from ._validation import IterSettings

__all__ = ["IterLayerNorm", "IterRMSNorm"]


def _as_shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(int(n) for n in normalized_shape)


class _IterNorm(nn.Module):
    """Shared state of the two norms: shape, eps, affine parameters, settings."""

    def __init__(
        self, normalized_shape, eps, elementwise_affine, bias, device, dtype, settings: IterSettings
    ):
        super().__init__()
        self.normalized_shape = _as_shape(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        self.settings = settings
        factory = {"device": device, "dtype": dtype}
        if elementwise_affine:
            self.weight = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(self.normalized_shape, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def extra_repr(self) -> str:
        s = self.settings
        fmt = "native" if s.fmt is None else s.fmt.name
        acc = "" if s.acc_fmt is None else f", acc_fmt={s.acc_fmt.name}"
        method = (
            f"update_rate={s.update_rate}, init={s.init}"
            if s.schedule is None
            else f"schedule={s.schedule.name}"
        )
        return (
            f"{self.normalized_shape}, eps={self.eps}, "
            f"elementwise_affine={self.elementwise_affine}, steps={s.steps}, "
            f"{method}, mode={s.mode}, fmt={fmt}{acc}"
        )

    @classmethod
    def _copy_from(cls, module: nn.Module, **kwargs):
        weight = getattr(module, "weight", None)
        factory = {}
        if weight is not None:
            factory = {"device": weight.device, "dtype": weight.dtype}
        new = cls(
            module.normalized_shape,
            eps=module.eps,
            elementwise_affine=weight is not None,
            **factory,
            **kwargs,
        )
        new.load_state_dict(module.state_dict())
        return new


class IterLayerNorm(_IterNorm):
    r"""``torch.nn.LayerNorm`` with IterL2Norm for (Var[x] + eps)^-1/2.

    Args:
        normalized_shape: trailing shape to normalize over.
        eps: added to the variance. Default: 1e-5.
        elementwise_affine: learnable weight (ones) and bias (zeros). Default: True.
        bias: with ``elementwise_affine``, whether to learn a bias. Default: True.
        steps, update_rate, init, mode, fmt, acc_fmt, schedule: the iteration
            settings of :func:`~iterl2norm.iterl2norm`. Defaults: 5, 0.5,
            "exponent", "scalar", native, default accumulation, None.

    Shape:
        Input (*, *normalized_shape); output the same.

    Examples:
        >>> ln = IterLayerNorm(4)
        >>> ln(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
        tensor([[-1.3416, -0.4472,  0.4472,  1.3416]], grad_fn=<...>)
        >>> ln
        IterLayerNorm((4,), eps=1e-05, elementwise_affine=True, steps=5, update_rate=0.5, init=exponent, mode=scalar, fmt=native)
    """  # noqa: E501

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        device=None,
        dtype=None,
        *,
        steps: int = 5,
        update_rate: float | Sequence[float] = 0.5,
        init: str = "exponent",
        mode: str = "scalar",
        fmt=None,
        acc_fmt=None,
        schedule: str | None = None,
    ):
        settings = IterSettings(steps, update_rate, init, mode, fmt, acc_fmt, schedule)
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype, settings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rows.layer_norm(
            x, self.normalized_shape, self.weight, self.bias, self.eps, self.settings
        )

    @classmethod
    def from_module(cls, module: nn.LayerNorm, **iter_kwargs) -> IterLayerNorm:
        """An IterLayerNorm with ``module``'s shape, eps, parameters (copied),
        device and dtype, and the given iteration settings."""
        if not isinstance(module, nn.LayerNorm):
            raise TypeError(f"expected a torch.nn.LayerNorm, got {type(module).__name__}")
        if module.weight is not None and module.bias is None:
            iter_kwargs = {"bias": False, **iter_kwargs}
        return cls._copy_from(module, **iter_kwargs)


class IterRMSNorm(_IterNorm):
    r"""``torch.nn.RMSNorm`` with IterL2Norm for (mean(x^2) + eps)^-1/2.

    Args:
        normalized_shape: trailing shape to normalize over.
        eps: added to mean(x^2); None means ``torch.finfo(x.dtype).eps``. Default: None.
        elementwise_affine: learnable weight (ones). Default: True.
        steps, update_rate, init, mode, fmt, acc_fmt, schedule: see :class:`IterLayerNorm`.

    Examples:
        >>> IterRMSNorm(2)(torch.tensor([[3.0, 4.0]]))
        tensor([[0.8485, 1.1314]], grad_fn=<...>)
    """

    def __init__(
        self,
        normalized_shape: int | Sequence[int],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device=None,
        dtype=None,
        *,
        steps: int = 5,
        update_rate: float | Sequence[float] = 0.5,
        init: str = "exponent",
        mode: str = "scalar",
        fmt=None,
        acc_fmt=None,
        schedule: str | None = None,
    ):
        settings = IterSettings(steps, update_rate, init, mode, fmt, acc_fmt, schedule)
        super().__init__(normalized_shape, eps, elementwise_affine, False, device, dtype, settings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _rows.rms_norm(x, self.normalized_shape, self.weight, self.eps, self.settings)

    @classmethod
    def from_module(cls, module: nn.Module, **iter_kwargs) -> IterRMSNorm:
        """An IterRMSNorm with ``module``'s shape, eps, weight (copied), device and dtype."""
        if not isinstance(module, nn.RMSNorm):
            raise TypeError(f"expected a torch.nn.RMSNorm, got {type(module).__name__}")
        return cls._copy_from(module, **iter_kwargs)
