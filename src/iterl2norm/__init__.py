"""iterl2norm: division- and square-root-free iterative L2 normalization.

A bit-accurate reference implementation of IterL2Norm (Ye et al., DATE 2025)
with the methods it is compared with, number formats from FP64 down to FP8,
and LayerNorm/RMSNorm drop-ins for PyTorch.
"""

from .formats import FORMATS, Format, fisr_magic, get_format, round_to_format
from .functional import layer_norm, rms_norm
from .modules import IterLayerNorm, IterRMSNorm
from .normalize import (
    exact_normalize,
    fisr_normalize,
    invsqrt2_normalize,
    iter_rsqrt,
    iterl2norm,
    sqrt23_normalize,
)
from .patching import patch_model, patched, unpatch_model
from .rsqrt import INITS

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "INITS",
    "Format",
    "IterLayerNorm",
    "IterRMSNorm",
    "__version__",
    "exact_normalize",
    "fisr_magic",
    "fisr_normalize",
    "get_format",
    "invsqrt2_normalize",
    "iter_rsqrt",
    "iterl2norm",
    "layer_norm",
    "patch_model",
    "patched",
    "rms_norm",
    "round_to_format",
    "sqrt23_normalize",
    "unpatch_model",
]
