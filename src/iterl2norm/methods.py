"""The names of the methods that obtain q**-0.5, one per method.

Every part of the package (the public functions, the cost model, the study,
the hardware model and its presets, the demo) names a method by its key in
:data:`METHODS` and shows it by its value.

>>> METHODS["exact"], method_name("fisr")
('sqrt + divide', 'fisr')
"""

from __future__ import annotations

import warnings

__all__ = ["METHODS", "method_name"]

METHODS: dict[str, str] = {
    "iterl2norm": "IterL2Norm",
    "fisr": "FISR",
    "invsqrt2": "InvSqrt2",
    "sqrt23": "SQRT_23-bits",
    "exact": "sqrt + divide",  # exact_normalize: a real square root and divide
}

# Spellings of earlier releases, still accepted with a DeprecationWarning.
_RENAMED = {"sqrt-divide": "exact"}


def method_name(name, allowed=METHODS) -> str:
    """The method's name, checked against ``allowed``; an old spelling warns.

    >>> method_name("cordic")
    Traceback (most recent call last):
    ...
    ValueError: unknown method 'cordic'; choose one of iterl2norm, fisr, invsqrt2, sqrt23, exact
    """
    if isinstance(name, str) and name in _RENAMED:
        new = _RENAMED[name]
        warnings.warn(f"method {name!r} is now called {new!r}", DeprecationWarning, stacklevel=3)
        name = new
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(allowed)}")
    return name
