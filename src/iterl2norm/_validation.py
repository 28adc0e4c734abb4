"""Argument checking and the tensor/array boundary of the public functions.

Every public entry point funnels its settings through :class:`IterSettings`
and its data through :func:`as_tensor`, so bad input gets the same clear
``TypeError``/``ValueError`` everywhere, naming the offending value.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import numpy as np
import torch

from . import _fused
from ._arith import Arithmetic
from .formats import FORMATS, Format, get_format
from .rsqrt import INITS
from .schedules import Iteration, euler_iteration, get_schedule, schedule_iteration

MODES = ("scalar", "vector")


def check_int(value, name: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_float(value, name: str, *, positive: bool = False) -> float:
    if type(value) is not float:  # the usual case skips the ABC check
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number, got {value!r}")
        value = float(value)
    if not math.isfinite(value) or (positive and value <= 0):
        raise ValueError(
            f"{name} must be a finite{' positive' if positive else ''} number, got {value!r}"
        )
    return value


def optional_format(spec, name: str) -> Format | None:
    if spec is None:
        return None
    try:
        return get_format(spec)
    except ValueError:
        raise ValueError(f"unknown {name} {spec!r}; known formats: {', '.join(FORMATS)}") from None
    except TypeError:
        raise TypeError(
            f"{name} must be a format name, Format or torch.dtype, got {spec!r}"
        ) from None


@dataclass(frozen=True)
class IterSettings:
    """The IterL2Norm settings shared by functions and modules, validated once.

    Args:
        steps: number of Euler steps (>= 0).
        update_rate: the update rate lambda, one number or one per step.
        init: initial estimate, one of ``"exponent"``, ``"exponent+mantissa"``,
            ``"magic"``.
        mode: ``"scalar"`` (iterate on the scale a) or ``"vector"`` (update the
            whole vector z every step).
        fmt: datapath format for bit-accurate emulation, or None for native.
        acc_fmt: accumulation format of the reductions (needs ``fmt``).
        schedule: a named start and per-step constants (``iterl2norm.schedules``)
            in place of ``init`` and ``update_rate``; ``"paper"`` or None for
            those two.
    """

    steps: int = 5
    update_rate: float | tuple[float, ...] = 0.5
    init: str = "exponent"
    mode: str = "scalar"
    fmt: Format | str | torch.dtype | None = None
    acc_fmt: Format | str | torch.dtype | None = None
    schedule: str | None = None

    def __post_init__(self):
        steps = check_int(self.steps, "steps")
        rate = self.update_rate
        if isinstance(rate, (str, bytes)) or not isinstance(rate, (numbers.Real, Sequence)):
            raise TypeError(f"update_rate must be a number or a sequence of numbers, got {rate!r}")
        if isinstance(rate, Sequence):
            rate = tuple(check_float(r, "update_rate", positive=True) for r in rate)
            if len(rate) != steps:
                raise ValueError(
                    f"update_rate has {len(rate)} entries but steps={steps}; "
                    "give one rate per step or a single number"
                )
        else:
            rate = check_float(rate, "update_rate", positive=True)
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        schedule = self.schedule
        if schedule is not None:
            schedule = get_schedule(schedule)
            if schedule.name == "paper":
                schedule = None  # the paper's settings are the defaults
            elif self.init != "exponent" or rate != 0.5:
                raise ValueError(
                    f"schedule={schedule.name!r} sets the start and every step's constants; "
                    f"leave init and update_rate at their defaults (got init={self.init!r}, "
                    f"update_rate={self.update_rate!r})"
                )
            elif self.mode != "scalar":
                raise ValueError(
                    f"schedule={schedule.name!r} runs in scalar mode only, got mode={self.mode!r}"
                )
        fmt = optional_format(self.fmt, "fmt")
        acc = optional_format(self.acc_fmt, "acc_fmt")
        # Resolving checks the pair, so modules fail early. Inputs of any dtype
        # but float64 share one policy (fmt or float32); float64 computes in
        # float64 natively.
        ar = Arithmetic.resolve(torch.float32, fmt, acc)
        ar64 = Arithmetic.resolve(torch.float64, fmt, acc)
        for name, value in (
            ("steps", steps),
            ("update_rate", rate),
            ("fmt", fmt),
            ("acc_fmt", acc),
            ("schedule", schedule),
            ("_arithmetic", ar),
            ("_arithmetic64", ar64),
        ):
            object.__setattr__(self, name, value)
        # Everything a call derives from the settings is computed here, once,
        # outside any torch.compile trace: a traced call only reads attributes
        # (a cached_property computed inside a trace is a graph break).
        self.iteration  # noqa: B018
        self.kernel_iteration  # noqa: B018
        self.native_scalar  # noqa: B018

    # Pickled as the fields alone: the derived attributes (the resolved
    # arithmetic, the kernels' iteration) are remade on loading, for this
    # version of the package and the kernels this install has.
    def __getstate__(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __setstate__(self, state: dict) -> None:
        for name in (f.name for f in fields(self)):
            object.__setattr__(self, name, state[name])
        self.__post_init__()

    @property
    def rates(self) -> tuple[float, ...]:
        """The update rate of every step."""
        if isinstance(self.update_rate, tuple):
            return self.update_rate
        return (self.update_rate,) * self.steps

    @functools.cached_property
    def iteration(self) -> Iteration:
        """The scalar iteration these settings describe (iterl2norm.schedules)."""
        if self.schedule is not None:
            return schedule_iteration(self.schedule, self.steps)
        return euler_iteration(self.init, self.rates)

    @functools.cached_property
    def kernel_iteration(self) -> _fused.KernelIteration | None:
        """The iteration as the compiled kernels take it, its constants rounded
        to the datapath (float32 natively, else ``fmt``); None where no kernel
        runs these settings."""
        return _fused.kernel_iteration(self, self._arithmetic)

    @functools.cached_property
    def native_scalar(self):
        """The native kernel's ``Iteration`` object for these settings, or None
        (emulated, vector mode, no kernels)."""
        return _fused.native_scalar(self)

    def arithmetic(self, dtype: torch.dtype) -> Arithmetic:
        """``Arithmetic.resolve(dtype, fmt, acc_fmt)``, resolved at construction."""
        return self._arithmetic64 if dtype == torch.float64 else self._arithmetic


# typed: steps=True must not find the entry of steps=1 (bool is rejected).
@functools.lru_cache(maxsize=256, typed=True)
def _settings_memo(*args) -> IterSettings:
    return IterSettings(*args)


def iter_settings(steps, update_rate, init, mode, fmt, acc_fmt, schedule) -> IterSettings:
    """``IterSettings(...)``, memoized: the public functions validate their
    settings on every call, and a model calls its norms thousands of times
    with the same ones. Invalid settings raise every time (errors are not
    cached); unhashable ones are validated afresh."""
    if isinstance(update_rate, list):
        update_rate = tuple(update_rate)
    args = (steps, update_rate, init, mode, fmt, acc_fmt, schedule)
    if torch.compiler.is_compiling():
        return _TRACED[_traced_settings_id(*args)]
    return _settings(args)


def _settings(args: tuple) -> IterSettings:
    try:
        hash(args)
    except TypeError:
        return IterSettings(*args)
    return _settings_memo(*args)


# Under torch.compile the validation runs as plain Python at trace time, not
# traced (Dynamo would trace IterSettings and warn that it ignores the
# lru_cache): _traced_settings_id's result enters the graph as a constant. The
# arguments are the call's constants, so the result is too. A trace cannot be
# handed the settings object itself (Dynamo cannot guard an object made outside
# its view), so it gets an int and looks the settings up in _TRACED, which it can.
_TRACED: dict[int, IterSettings] = {}


@torch.compiler.assume_constant_result
def _traced_settings_id(*args) -> int:
    settings = _settings(args)
    _TRACED[id(settings)] = settings  # held, so the id stays this object's
    return id(settings)


Restore = Callable[[torch.Tensor, "Format | None"], "torch.Tensor | np.ndarray"]


def as_tensor(x, name: str = "x") -> tuple[torch.Tensor, Restore]:
    """A floating-point torch tensor for ``x``, and a function that gives a
    result back in the caller's kind (tensor or array) and dtype.

    ``restore(result, emulated_fmt)`` returns the input dtype for the native
    path; for emulation, the input dtype when it holds every value of the
    emulated format, else float32 or float64, whichever holds them first.
    """
    if isinstance(x, np.ndarray):
        if x.dtype.kind != "f":
            raise TypeError(f"{name} must be a floating-point array, got dtype {x.dtype}")
        # torch cannot view negative strides; copy those (keeping 0-d arrays 0-d).
        t = torch.from_numpy(x.copy() if any(s < 0 for s in x.strides) else x)
        is_numpy = True
    elif isinstance(x, torch.Tensor):
        t = x
        is_numpy = False
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    try:
        in_fmt = get_format(t.dtype)
    except ValueError:
        raise TypeError(f"{name} has unsupported dtype {t.dtype}") from None

    def restore(result: torch.Tensor, emulated: Format | None):
        dtype = t.dtype
        if emulated is not None and not in_fmt.holds(emulated):
            dtype = torch.float32 if FORMATS["fp32"].holds(emulated) else torch.float64
        out = result if result.dtype == dtype else result.to(dtype)
        return out.detach().numpy() if is_numpy else out

    return t, restore


def check_dim(t: torch.Tensor, dim) -> int:
    """``dim`` as a non-negative axis of ``t``."""
    dim = check_int(dim, "dim", minimum=-(1 << 62))
    if t.dim() == 0:
        raise ValueError("cannot normalize a 0-dimensional tensor; it has no dim to normalize")
    if not -t.dim() <= dim < t.dim():
        raise ValueError(f"dim {dim} is out of range for a tensor with {t.dim()} dimensions")
    return dim % t.dim()
