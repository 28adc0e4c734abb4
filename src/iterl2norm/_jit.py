"""The compiled kernels, built on first use where the install did not build them.

``pip install iterl2norm`` builds in an isolated environment without torch,
so the wheel holds no compiled kernels (they link against the torch they run
with). The first import then compiles ``csrc/kernels.cpp`` against the torch
in use, once, into a cache directory: one line on stderr says so, and the
build takes about a minute with g++. Later imports load the cached module.
torch's extension loader holds a lock file in that directory, so two
processes never build at once (the second waits and loads the first's).

``ITERL2NORM_JIT=0`` turns the build off; ``ITERL2NORM_CACHE`` moves the
cache (default ``$XDG_CACHE_HOME/iterl2norm`` or ``~/.cache/iterl2norm``).
Where no build can run (no C++ compiler, say), a warning says why and how to
get the kernels, and the torch paths run: correct, but far slower.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
import warnings
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).parent / "csrc" / "kernels.cpp"
JIT_ENV = "ITERL2NORM_JIT"
CACHE_ENV = "ITERL2NORM_CACHE"
# The flags of both builds (setup.py reads them from here; setuptools adds
# Python's -fwrapv and -DNDEBUG there anyway, torch's loader does not). No
# floating-point contraction: the emulation rounds every operation.
CFLAGS = ["-O3", "-fwrapv", "-DNDEBUG", "-ffp-contract=off", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
MODULE = "iterl2norm_kernels"


def cache_dir() -> Path:
    """Where this source, Python and torch build: a directory of their own, so
    an upgrade of either never loads a stale module."""
    import torch

    root = os.environ.get(CACHE_ENV) or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "iterl2norm"
    )
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(CFLAGS).encode()).hexdigest()[:12]
    python = f"py{sys.version_info.major}{sys.version_info.minor}"
    return Path(root) / f"{python}-torch{torch.__version__}-{platform.machine()}-{digest}"


def _ninja_on_path() -> None:
    # torch's loader runs `ninja`; the ninja wheel puts it in the venv's bin,
    # which is not on PATH when the venv is not activated.
    try:
        import ninja
    except ImportError:
        return
    bin_dir = getattr(ninja, "BIN_DIR", None)
    if bin_dir and bin_dir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bin_dir + os.pathsep + os.environ.get("PATH", "")


def load() -> tuple[ModuleType | None, str]:
    """The kernels built on first use (or from the cache) and ``"jit"``, or
    None and why not."""
    if os.environ.get(JIT_ENV, "").strip() == "0":
        return None, f"{JIT_ENV}=0"
    if not SOURCE.exists():
        return None, f"the kernels' source {SOURCE} is not installed"
    try:
        from torch.utils import cpp_extension

        directory = cache_dir()
        built = any(directory.glob(f"{MODULE}*.so"))
        if not built:
            print(
                f"iterl2norm: compiling the kernels for this torch into {directory} "
                "(once, about a minute)",
                file=sys.stderr,
                flush=True,
            )
        directory.mkdir(parents=True, exist_ok=True)
        _ninja_on_path()
        module = cpp_extension.load(
            name=MODULE,
            sources=[str(SOURCE)],
            extra_cflags=CFLAGS,
            extra_ldflags=LDFLAGS,
            build_directory=str(directory),
            verbose=False,
        )
    except Exception as error:  # no compiler, no ninja, a failed build: say so, run on
        text = str(error).strip()
        reason = text.splitlines()[0][:200] if text else type(error).__name__
        warnings.warn(
            f"iterl2norm: the compiled kernels could not be built ({reason}); the torch "
            "paths run instead, correct but up to 100x slower on large inputs. Install a "
            "C++ compiler (g++) and import again, or see `iterl2norm info`.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None, reason
    return module, "jit"
