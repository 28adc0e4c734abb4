"""A compiled simulation of the whole normalization unit
:class:`~iterl2norm.hw.rtl.unit.NormUnit`: Yosys's CXXRTL back-end and g++
(through :func:`.cxxrtl._compile`), driven by a small C++ testbench.

Amaranth's Python simulator takes seconds a vector for the unit; the compiled
one runs hundreds a second, so thousands of vectors a preset can be checked
bit- and cycle-exact against ``hw.reference`` and ``hw.simulate``. The driver
follows the protocol of ``run_unit`` in ``tests/test_rtl_unit.py``: an affine
unit's constants are loaded first, outside the counted cycles; then a
vector's ceil(d/P) beats are streamed without gaps with ``o.ready`` high, and
its latency is the cycle of the last output beat minus the cycle the first
beat was taken.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from ..rtl.unit import NormUnit
from .cxxrtl import _compile

__all__ = ["compile_unit", "run_unit_compiled"]

TOP = "iterl2norm_unit"

# Reads per vector a line "d", for an affine unit d lines "g b" (the bits of
# sqrt(d) gamma and beta), then d hex words of x; prints the d output words
# and the latency on one line. Ports are packed bit by bit: Amaranth's
# layouts put their first field at bit 0 (i: d, x; o: z, last; params:
# first, gamma, beta), and the payloads are wider than 64 bits.
_UNIT_DRIVER = r"""#include <cstdint>
#include <cstdio>
#include <vector>
#include "op.h"
template <size_t N> void put(value<N> &v, size_t at, size_t width, uint32_t bits) {
  for (size_t k = 0; k < width; k++) v.set_bit(at + k, (bits >> k) & 1);
}
template <size_t N> uint32_t take(const value<N> &v, size_t at, size_t width) {
  uint32_t bits = 0;
  for (size_t k = 0; k < width; k++) bits |= uint32_t(v.bit(at + k)) << k;
  return bits;
}
int main() {
  cxxrtl_design::p_%(top)s top;
  // As in cxxrtl's stream driver: a second step after the rising edge,
  // since step() may stop before outputs that depend on the flip-flops settle.
  auto tick = [&]() {
    top.p_clk.set<bool>(false);
    top.step();
    top.p_clk.set<bool>(true);
    top.step();
    top.step();
  };
  top.p_rst.set<bool>(true);
  tick();
  top.p_rst.set<bool>(false);
  top.p_o____ready.set<bool>(true);
  std::vector<uint32_t> x(D_MAX + LANES), got(D_MAX + LANES);
  unsigned d;
  while (std::scanf("%%u", &d) == 1) {
    if (d > D_MAX) return 4;
    unsigned chunks = (d + LANES - 1) / LANES;
#if AFFINE
    std::vector<uint32_t> g(chunks * LANES, 0), b(chunks * LANES, 0);
    for (unsigned k = 0; k < d; k++)
      if (std::scanf("%%x %%x", &g[k], &b[k]) != 2) return 5;
    for (unsigned word = 0; word < chunks; word++) {
      put(top.p_params____payload, 0, 1, word == 0);
      for (unsigned lane = 0; lane < LANES; lane++) {
        put(top.p_params____payload, 1 + lane * WIDTH, WIDTH, g[word * LANES + lane]);
        put(top.p_params____payload, 1 + (LANES + lane) * WIDTH, WIDTH, b[word * LANES + lane]);
      }
      top.p_params____valid.set<bool>(true);
      top.step();
      if (!top.p_params____ready.get<bool>()) return 6;  // a vector is still in the unit
      tick();
    }
    top.p_params____valid.set<bool>(false);
#endif
    for (unsigned k = 0; k < chunks * LANES; k++) x[k] = 0;  // lanes past d
    for (unsigned k = 0; k < d; k++)
      if (std::scanf("%%x", &x[k]) != 1) return 5;
    unsigned beat = 0, out_beat = 0;
    long t = 0, t0 = -1, t_last = -1;
    while (t_last < 0) {
      top.p_i____valid.set<bool>(beat < chunks);
      if (beat < chunks) {
        put(top.p_i____payload, 0, 11, d);
        for (unsigned lane = 0; lane < LANES; lane++)
          put(top.p_i____payload, 11 + lane * WIDTH, WIDTH, x[beat * LANES + lane]);
      }
      top.step();
      if (beat < chunks && top.p_i____ready.get<bool>()) {
        if (t0 < 0) t0 = t;
        beat++;
      }
      if (top.p_o____valid.get<bool>()) {
        for (unsigned lane = 0; lane < LANES && out_beat < chunks; lane++)
          got[out_beat * LANES + lane] = take(top.p_o____payload, lane * WIDTH, WIDTH);
        out_beat++;
        if (top.p_o____payload.bit(LANES * WIDTH)) t_last = t;
      }
      tick();
      if (++t > 200000) return 3;  // the unit never finished
    }
    top.p_i____valid.set<bool>(false);
    for (unsigned k = 0; k < d; k++) std::printf("%%x ", got[k]);
    std::printf("%%ld\n", t_last - t0);
  }
  return 0;
}
"""


def compile_unit(unit: NormUnit, workdir: str | Path, optimization: str = "-O1") -> Path:
    """Compile ``unit`` to the executable :func:`run_unit_compiled` runs.
    ``optimization``: g++'s level; "-O0" compiles some five times faster and
    runs some twenty times slower, for a few vectors."""
    cfg = unit.cfg
    defines = (
        f"#define LANES {cfg.lanes}\n#define WIDTH {unit.fmt.width}\n"
        f"#define AFFINE {int(bool(cfg.affine))}\n#define D_MAX 1024\n"
    )
    return _compile(unit, workdir, TOP, defines + _UNIT_DRIVER, optimization)


def _input_text(vectors, params) -> str:
    lines = []
    for n, (d, bits) in enumerate(vectors):
        lines.append(f"{d}\n")
        if params is not None:
            gamma, beta = params[n]
            lines += [f"{int(g):x} {int(b):x}\n" for g, b in zip(gamma, beta, strict=True)]
        lines.append(" ".join(f"{int(v):x}" for v in bits) + "\n")
    return "".join(lines)


def run_unit_compiled(binary: str | Path, cfg, vectors, params=None):
    """Stream each (d, bits) vector through the compiled unit: a list of
    (outputs, cycles), outputs an int64 array of d bit patterns. ``params``:
    for an affine unit, per vector the (sqrt(d) gamma, beta) bits it loads
    first (as ``unit_params`` gives them). ``cfg`` is the unit's configuration."""
    if bool(cfg.affine) != (params is not None):
        raise ValueError(f"an affine unit needs params, another none ({cfg.name!r})")
    done = subprocess.run(
        [str(binary)],
        input=_input_text(vectors, params),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode:
        raise RuntimeError(f"the compiled unit failed ({done.returncode}): {done.stderr[-500:]}")
    results = []
    for line in done.stdout.splitlines():
        *words, cycles = line.split()
        results.append((np.array([int(w, 16) for w in words], dtype=np.int64), int(cycles)))
    if len(results) != len(vectors):
        raise RuntimeError(f"the compiled unit gave {len(results)} of {len(vectors)} vectors")
    return results
