"""The optional compiled kernels (src/iterl2norm/csrc). Everything else is in
pyproject.toml. Without torch in the build environment the package installs
as pure Python and runs its (slower) torch paths; `make` installs with
--no-build-isolation so the kernels build against the installed torch."""

from setuptools import setup

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
            # No floating-point contraction: the emulation rounds every operation.
            extra_compile_args=["-O3", "-ffp-contract=off", "-fopenmp"],
            extra_link_args=["-fopenmp"],
        )
    ]
    cmdclass = {"build_ext": BuildExtension}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
