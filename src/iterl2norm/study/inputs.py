"""The vectors the precision study normalizes.

Every generator returns float64 rows already rounded to the format under
study, so that the float64 reference x/||x|| is that of the rounded input
and the error measures the method, not the quantization of its input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..formats import get_format, round_to_format

# The embedding lengths of the nine OPT models (the paper's table).
OPT_DIMS = (768, 1024, 2048, 2560, 4096, 5120, 7168, 9216, 12288)
KINDS = ("gaussian", "scaled", "outliers")
DESCRIPTIONS = {
    "gaussian": "N(0, 1) elements",
    "scaled": "N(0, 1) elements times a per-vector 2**U(lo, hi), spanning the format's "
    "exponent range (lo = emin + 4, hi = emax - 4)",
    "outliers": "N(0, 1) elements with 4 fixed channels times 100, like the massive "
    "activations of LLMs",
    "file": "rows of a user-supplied .npy file",
}
OUTLIER_CHANNELS = 4
OUTLIER_GAIN = 100.0


def make_inputs(kind: str, d: int, n: int, fmt: str, seed: int) -> torch.Tensor:
    """``n`` rows of length ``d`` of input ``kind``, rounded to ``fmt``. (n, d) float64."""
    f = get_format(fmt)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if kind == "scaled":
        lo, hi = f.emin + 4, f.emax - 4
        exponents = torch.empty(n, 1, dtype=torch.float64).uniform_(lo, hi, generator=gen)
        x = x * torch.exp2(exponents)
    elif kind == "outliers":
        channels = torch.randperm(d, generator=gen)[: min(OUTLIER_CHANNELS, d)]
        x[:, channels] *= OUTLIER_GAIN
    elif kind != "gaussian":
        raise ValueError(f"unknown input kind {kind!r}; choose one of {', '.join(KINDS)}")
    return round_to_format(x, f)


def row_statistics(rows: torch.Tensor) -> dict[str, float]:
    """How far the rows are from Gaussian ones: the largest |x| over the rms
    (about 3.5 for Gaussian rows of a few hundred, sqrt(d) for a single spike)
    and the spread of the rms itself. Zero rows are left out."""
    rms = rows.pow(2).mean(dim=1).sqrt()
    keep = rms > 0
    peak = rows[keep].abs().amax(dim=1) / rms[keep]
    return {
        "peak_over_rms_median": float(peak.median()) if keep.any() else 0.0,
        "peak_over_rms_max": float(peak.max()) if keep.any() else 0.0,
        "rms_min": float(rms[keep].min()) if keep.any() else 0.0,
        "rms_max": float(rms.max()),
    }


def load_rows(path: str | Path, max_rows: int, seed: int) -> torch.Tensor:
    """Rows (last axis) of a .npy file of activations, as float64: at most
    ``max_rows`` of them, sampled with ``seed``; rows with NaN/Inf are dropped."""
    path = Path(path)
    if path.suffix != ".npy":
        raise ValueError(f"--inputs expects a .npy file, got {str(path)!r}")
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ValueError(f"input file {str(path)!r} does not exist") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {str(path)!r} as a NumPy array: {exc}") from None
    if array.dtype.kind not in "fiu" or array.ndim < 1 or array.size == 0:
        raise ValueError(
            f"{str(path)!r} must hold a non-empty numeric array, "
            f"got dtype {array.dtype} and shape {array.shape}"
        )
    rows = torch.from_numpy(np.ascontiguousarray(array.reshape(-1, array.shape[-1]))).double()
    rows = rows[torch.isfinite(rows).all(dim=1)]
    if rows.shape[0] == 0:
        raise ValueError(f"{str(path)!r} has no row free of NaN and Inf")
    if rows.shape[0] > max_rows:
        pick = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))
        rows = rows[pick[:max_rows].sort().values]
    return rows
