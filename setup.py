"""The compiled kernels (src/iterl2norm/csrc). Everything else is in
pyproject.toml. Without torch in the build environment (pip's build
isolation) the package installs as pure Python and builds the kernels on
first import (src/iterl2norm/_jit.py); `make` installs with
--no-build-isolation so they build here, against the installed torch."""

import importlib.util
from pathlib import Path

from setuptools import setup

# The compiler flags live in _jit.py, which builds the same source on first
# use where this build did not run: one list, so both builds give one set of bits.
_JIT = Path(__file__).resolve().parent / "src" / "iterl2norm" / "_jit.py"
_spec = importlib.util.spec_from_file_location("_jit_flags", _JIT)
_jit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_jit)

ext_modules, cmdclass = [], {}
try:
    from torch.utils.cpp_extension import BuildExtension, CppExtension
except ImportError:  # pure-Python install
    pass
else:
    ext_modules = [
        CppExtension(
            "iterl2norm._kernels",
            ["src/iterl2norm/csrc/kernels.cpp"],
            extra_compile_args=_jit.CFLAGS,
            extra_link_args=_jit.LDFLAGS,
        )
    ]
    cmdclass = {"build_ext": BuildExtension}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
