"""What the commands share around their results: the record of versions and
machine, matplotlib without a display, and the progress bar."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from . import __version__


def environment() -> dict[str, str]:
    """Versions and machine, stored with every result."""
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        revision = ""
    return {
        "iterl2norm": __version__,
        "git_revision": revision or "unknown",
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpu_threads": str(torch.get_num_threads()),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def pyplot():
    """matplotlib.pyplot on the Agg back-end, or an ImportError saying how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "the plots need matplotlib: pip install 'iterl2norm[study]' (or pass --no-plots)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


class _Silent:
    """The progress bar's interface, doing nothing (no tqdm and none wanted)."""

    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, _) -> None:
        pass

    def set_postfix_str(self, _) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, *, unit: str, desc: str | None = None, enabled: bool = True):
    """A tqdm bar on a terminal, silent in logs and pipes or when not ``enabled``."""
    try:
        from tqdm import tqdm
    except ImportError:
        if not enabled:
            return _Silent()
        raise ImportError(
            "the progress bar needs tqdm: pip install 'iterl2norm[study]' (or pass --no-progress)"
        ) from None
    # disable=None: a bar on a terminal, silence in logs and pipes.
    return tqdm(
        total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=None if enabled else True
    )
