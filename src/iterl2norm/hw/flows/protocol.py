"""One description of what a testbench streams through a unit's valid/ready
ports, and the three drivers generated from it: an Amaranth-simulator
testbench (:func:`amaranth_testbench`, :func:`run_amaranth`), a C++ driver
for the CXXRTL simulation (:func:`cxx_driver`, :func:`run_cxxrtl`) and a
self-checking Verilog testbench (:func:`verilog_testbench`).

A :class:`Transactions` holds the items in order: :class:`Params` (an
affine unit's constants, loaded through ``params``) and :class:`Vector`
(d elements; a scalar unit's vector is its one q), and the input-gap and
output-stall patterns. Every driver runs the same cycle-by-cycle protocol,
so that for one :class:`Transactions` the three give the same outputs on
the same cycles:

- Cycle numbering: ``rst`` is high for one cycle, then cycle 0 begins.
- Each cycle t, first ``r = xorshift32(r)`` (from ``seed``): the input
  is gapped this cycle when ``r & 0xffff < gap_threshold``, the output
  stalled (``o.ready`` low) when ``r >> 16 < stall_threshold``, the
  thresholds out of 65536.
- The source walks the items in order, one beat or params word a cycle
  when not gapped; it offers the next item as soon as the last beat of the
  one before was taken, so a vector is offered while the unit is still
  busy with the previous one (the unit must make it wait). A vector with
  ``wait`` offers its first beat only from the cycle the previous vector's
  last output beat is taken.
- The sink takes output beats whenever ``o.ready`` is high; a vector is
  done on the cycle its last output beat (``last``; a scalar unit's only
  one) is taken. Its ``first`` is the cycle its first beat was taken, its
  ``cycles`` the done cycle minus ``first``: the model's latency when
  ``gaps = stalls = 0``.
- A vector with ``reset_after = R > 0`` never has its outputs taken;
  ``R`` cycles after its first beat was taken, ``rst`` is high for one
  cycle (nothing offered, nothing taken) and the source goes on with the
  item after it.

Within a cycle the drivers set ``o.ready``, let the design settle, read
``o.valid`` (the wait rule needs it), set the source's valid and payload,
settle again, then read the readies and the output payload, and clock.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "DEFAULT_GAPS",
    "DEFAULT_SEED",
    "DEFAULT_STALLS",
    "Params",
    "Ports",
    "Result",
    "Transactions",
    "Vector",
    "amaranth_testbench",
    "cxx_driver",
    "expected_text",
    "run_amaranth",
    "run_cxxrtl",
    "stimulus_text",
    "verilog_testbench",
    "xorshift32",
]

# Every driver stalls by default: a quarter of the cycles gapped, a quarter stalled.
DEFAULT_GAPS = 0.25
DEFAULT_STALLS = 0.25
DEFAULT_SEED = 0x1D872B41
ONE = 1 << 16  # the thresholds' unit: a probability of 1
# A driver gives up when no vector finishes for this many cycles.
PATIENCE = 200_000


def xorshift32(state: int) -> int:
    """Marsaglia's xorshift32 (13, 17, 5): the pattern generator every driver
    computes the same way."""
    state ^= (state << 13) & 0xFFFFFFFF
    state ^= state >> 17
    state ^= (state << 5) & 0xFFFFFFFF
    return state


@dataclass(frozen=True)
class Params:
    """An affine unit's constants for the vectors after it: the bits of
    sqrt(d) gamma and of beta, d of each, loaded word by word."""

    gamma: tuple[int, ...]
    beta: tuple[int, ...]

    def __post_init__(self):
        object.__setattr__(self, "gamma", tuple(int(v) for v in self.gamma))
        object.__setattr__(self, "beta", tuple(int(v) for v in self.beta))
        if len(self.gamma) != len(self.beta) or not self.gamma:
            raise ValueError(
                f"params need as many gammas as betas, at least one: got "
                f"{len(self.gamma)} and {len(self.beta)}"
            )


@dataclass(frozen=True)
class Vector:
    """A vector's element bits (d of them; a scalar unit's one q).
    ``reset_after``: when positive, its outputs are never taken and ``rst``
    pulses that many cycles after its first beat was taken. ``wait``: its
    first beat is offered only from the cycle the previous vector's last
    output beat is taken."""

    bits: tuple[int, ...]
    reset_after: int = 0
    wait: bool = False

    def __post_init__(self):
        object.__setattr__(self, "bits", tuple(int(v) for v in self.bits))
        if not self.bits:
            raise ValueError("a vector needs at least one element, got none")
        if not isinstance(self.reset_after, int) or self.reset_after < 0:
            raise ValueError(f"reset_after must be an integer >= 0, got {self.reset_after!r}")

    @property
    def d(self) -> int:
        return len(self.bits)


@dataclass(frozen=True)
class Transactions:
    """The items, in order, and the patterns: ``gaps`` and ``stalls`` are
    the probabilities (below 1) that the input is gapped and the output
    stalled on a cycle, drawn from xorshift32 seeded with ``seed``."""

    items: tuple[Params | Vector, ...]
    gaps: float = DEFAULT_GAPS
    stalls: float = DEFAULT_STALLS
    seed: int = DEFAULT_SEED
    gap_threshold: int = field(init=False)
    stall_threshold: int = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "items", tuple(self.items))
        for item in self.items:
            if not isinstance(item, (Params, Vector)):
                raise TypeError(f"an item must be a Params or a Vector, got {item!r}")
        for name in ("gaps", "stalls"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be a probability in [0, 1), got {value!r}")
            object.__setattr__(self, name[:-1] + "_threshold", round(value * ONE))
        if not isinstance(self.seed, int) or not 0 < self.seed < 1 << 32:
            raise ValueError(f"seed must be a nonzero 32-bit integer, got {self.seed!r}")

    @classmethod
    def of(cls, vectors, params=None, **patterns) -> Transactions:
        """From (d, bits) vectors (or bit arrays) and, for an affine unit, per
        vector the (sqrt(d) gamma, beta) bits loaded before it."""
        items = []
        for n, vector in enumerate(vectors):
            bits = vector[1] if isinstance(vector, tuple) else vector
            if params is not None:
                items.append(Params(*params[n]))
            items.append(bits if isinstance(bits, Vector) else Vector(bits))
        return cls(tuple(items), **patterns)

    def gapless(self) -> Transactions:
        """The same items with no gap and no stall."""
        return Transactions(self.items, gaps=0, stalls=0, seed=self.seed)

    @property
    def vectors(self) -> list[Vector]:
        return [item for item in self.items if isinstance(item, Vector)]


@dataclass(frozen=True)
class Result:
    """What the sink saw of a vector: its output bits (None when it was
    reset), the cycle its first beat was taken and its latency."""

    bits: np.ndarray | None
    first: int | None
    cycles: int | None


@dataclass(frozen=True)
class Ports:
    """How a unit's streams are laid out. ``d_bits``: the width of the first
    beat's d field (0 for a scalar unit, which takes one element a vector);
    ``last``: whether ``o`` carries a last flag above its lanes; ``params``:
    whether there is a params stream (an affine unit)."""

    lanes: int
    in_width: int
    out_width: int
    d_bits: int
    last: bool
    params: bool

    @classmethod
    def of(cls, dut) -> Ports:
        from amaranth.hdl import Value

        from ..rtl.rsqrt_unit import RsqrtUnit
        from ..rtl.sqrt_divide import SqrtDivide
        from ..rtl.sqrt_unit import SqrtUnit
        from ..rtl.unit import NormUnit

        if isinstance(dut, NormUnit):
            w = dut.fmt.width
            d_bits = len(Value.cast(dut.i.payload.d))
            return cls(dut.cfg.lanes, w, w, d_bits, True, bool(dut.cfg.affine))
        if isinstance(dut, (RsqrtUnit, SqrtDivide, SqrtUnit)):
            in_w, out_w = len(Value.cast(dut.i.payload)), len(Value.cast(dut.o.payload))
            return cls(1, in_w, out_w, 0, False, False)
        raise TypeError(f"no stream protocol for {type(dut).__name__}: {dut!r}")

    def check(self, transactions: Transactions) -> None:
        """ValueError naming the first item these ports cannot take."""
        for n, item in enumerate(transactions.items):
            if isinstance(item, Params) and not self.params:
                raise ValueError(f"item {n} loads params, but the unit has no params port")
            if isinstance(item, Vector):
                if self.d_bits == 0 and item.d != 1:
                    raise ValueError(
                        f"item {n}: a scalar unit takes one q a vector, got d={item.d}"
                    )
                if self.d_bits and not 64 <= item.d <= 1024:
                    raise ValueError(f"item {n}: d={item.d} is outside 64..1024")

    def beats(self, d: int) -> int:
        return -(-d // self.lanes)

    def vector_beat(self, vector: Vector, beat: int) -> int:
        """The input payload of a vector's beat: d, then its lanes (lanes past d zero)."""
        word = vector.d if self.d_bits else 0
        for lane in range(self.lanes):
            k = beat * self.lanes + lane
            if k < vector.d:
                word |= vector.bits[k] << (self.d_bits + lane * self.in_width)
        return word

    def params_word(self, params: Params, word: int) -> int:
        """The params payload of word ``word``: first, P gammas, P betas."""
        value, w, p = int(word == 0), self.in_width, self.lanes
        for lane in range(p):
            k = word * p + lane
            if k < len(params.gamma):
                value |= params.gamma[k] << (1 + lane * w)
                value |= params.beta[k] << (1 + (p + lane) * w)
        return value

    def out_lanes(self, payload: int) -> list[int]:
        mask = (1 << self.out_width) - 1
        return [(payload >> (lane * self.out_width)) & mask for lane in range(self.lanes)]

    def is_last(self, payload: int) -> bool:
        return not self.last or bool(payload >> (self.lanes * self.out_width) & 1)


# The stimulus file: every driver but Amaranth's reads the items from it. ------


def stimulus_text(transactions: Transactions, ports: Ports) -> str:
    """The items as text: ``params D`` then D lines ``G B``; ``vector D R W``
    (R: reset_after, W: wait) then D lines of element bits; lowercase hex."""
    ports.check(transactions)
    digits = -(-ports.in_width // 4)
    lines = []
    for item in transactions.items:
        if isinstance(item, Params):
            lines.append(f"params {len(item.gamma)}\n")
            pairs = zip(item.gamma, item.beta, strict=True)
            lines += [f"{g:0{digits}x} {b:0{digits}x}\n" for g, b in pairs]
        else:
            lines.append(f"vector {item.d} {item.reset_after} {int(item.wait)}\n")
            lines += [f"{v:0{digits}x}\n" for v in item.bits]
    return "".join(lines)


def expected_text(transactions: Transactions, outputs, width: int) -> str:
    """The expected output bits of each vector that is not reset, one a line,
    in order (``outputs``: one array per such vector)."""
    digits = -(-width // 4)
    kept = [v for v in transactions.vectors if not v.reset_after]
    outputs = list(outputs)
    if len(outputs) != len(kept):
        raise ValueError(f"{len(kept)} vectors are not reset, but {len(outputs)} outputs are given")
    return "".join(f"{int(b):0{digits}x}\n" for bits in outputs for b in bits)


# The Amaranth simulator's driver. --------------------------------------------


class _Walk:
    """The protocol's bookkeeping, shared by Python's driver: the source's
    item and beat, the sink's vector and beats, the results."""

    def __init__(self, transactions: Transactions, ports: Ports):
        self.tx, self.ports = transactions, ports
        self.items = transactions.items
        # the vector ordinal of each item (for params: of the next vector)
        self.ordinal, count = [], 0
        for item in self.items:
            self.ordinal.append(count)
            count += isinstance(item, Vector)
        self.vectors = transactions.vectors
        self.where = [n for n, item in enumerate(self.items) if isinstance(item, Vector)]
        self.source, self.beat = 0, 0
        self.sink, self.got = 0, []
        self.first = [None] * len(self.vectors)
        self.results: list[Result] = []

    def done(self) -> bool:
        return self.sink == len(self.vectors) and self.source == len(self.items)

    def reset_due(self, t: int) -> bool:
        if self.sink == len(self.vectors):
            return False
        r, t0 = self.vectors[self.sink].reset_after, self.first[self.sink]
        return bool(r) and t0 is not None and t - t0 == r

    def holding(self) -> bool:
        """The sink's vector is to be reset: its outputs are never taken."""
        return self.sink < len(self.vectors) and bool(self.vectors[self.sink].reset_after)

    def after_reset(self) -> None:
        self.results.append(Result(None, self.first[self.sink], None))
        self.source, self.beat = self.where[self.sink] + 1, 0
        self.sink, self.got = self.sink + 1, []

    def offer(self, finishing: bool):
        """(stream, payload, released) of the source this cycle; stream is
        None when every item has been taken."""
        if self.source == len(self.items):
            return None, 0, False
        item, k = self.items[self.source], self.ordinal[self.source]
        if isinstance(item, Params):
            return "params", self.ports.params_word(item, self.beat), True
        released = not item.wait or self.beat > 0 or self.sink >= k
        released = released or (self.sink == k - 1 and finishing)
        return "i", self.ports.vector_beat(item, self.beat), released

    def taken_in(self, t: int) -> None:
        item = self.items[self.source]
        if isinstance(item, Vector) and self.beat == 0:
            self.first[self.ordinal[self.source]] = t
        self.beat += 1
        d = item.d if isinstance(item, Vector) else len(item.gamma)
        if self.beat == self.ports.beats(d):
            self.source, self.beat = self.source + 1, 0

    def taken_out(self, t: int, payload: int) -> None:
        self.got += self.ports.out_lanes(payload)
        vector = self.vectors[self.sink]
        if self.ports.is_last(payload):
            bits = np.array(self.got[: vector.d], dtype=np.int64)
            t0 = self.first[self.sink]
            self.results.append(Result(bits, t0, None if t0 is None else t - t0))
            self.sink, self.got = self.sink + 1, []


def amaranth_testbench(dut, transactions: Transactions, rst, results: list, probe=None):
    """The driver as an async testbench for Amaranth's simulator: it streams
    ``transactions`` through ``dut`` (``rst``: the sync domain's reset) and
    appends a :class:`Result` per vector to ``results``. ``probe(ctx,
    vector, cycle)`` is called once a cycle from the cycle a vector's first
    beat is taken (cycle 0) to the cycle its last output beat is taken."""
    from amaranth.hdl import Value

    ports = Ports.of(dut)
    ports.check(transactions)
    streams = {"i": dut.i}
    if ports.params:
        streams["params"] = dut.params
    i_payload = {name: Value.cast(s.payload) for name, s in streams.items()}
    o_payload = Value.cast(dut.o.payload)

    async def bench(ctx):
        walk = _Walk(transactions, ports)
        state, t, progress = transactions.seed, 0, 0

        def idle():
            for s in streams.values():
                ctx.set(s.valid, 0)
            ctx.set(dut.o.ready, 0)

        idle()
        ctx.set(rst, 1)
        await ctx.tick()
        ctx.set(rst, 0)
        while not walk.done():
            state = xorshift32(state)
            gap = (state & 0xFFFF) < transactions.gap_threshold
            stall = (state >> 16) < transactions.stall_threshold
            if walk.reset_due(t):
                idle()
                ctx.set(rst, 1)
                await ctx.tick()
                ctx.set(rst, 0)
                walk.after_reset()
                t, progress = t + 1, t + 1
                continue
            ready = not stall and not walk.holding()
            ctx.set(dut.o.ready, ready)
            out = ready and bool(ctx.get(dut.o.valid))
            finishing = out and ports.is_last(ctx.get(o_payload))
            name, payload, released = walk.offer(finishing)
            for key, s in streams.items():
                ctx.set(s.valid, key == name and released and not gap)
                if key == name:
                    ctx.set(i_payload[key], payload)
            taken = name is not None and released and not gap and ctx.get(streams[name].ready)
            if taken:
                walk.taken_in(t)
            sink = walk.sink
            if probe is not None and sink < len(walk.vectors) and walk.first[sink] is not None:
                probe(ctx, sink, t - walk.first[sink])
            if out:
                walk.taken_out(t, ctx.get(o_payload))
                if walk.sink != sink:
                    progress = t
            await ctx.tick()
            t += 1
            if t - progress > PATIENCE:
                raise RuntimeError(f"no vector finished in {PATIENCE} cycles (vector {walk.sink})")
        results.extend(walk.results)

    return bench


def run_amaranth(dut, transactions: Transactions, probe=None) -> list[Result]:
    """Stream ``transactions`` through ``dut`` in Amaranth's simulator: a
    :class:`Result` per vector."""
    from amaranth.hdl import ClockDomain, Module
    from amaranth.sim import Simulator

    top = Module()
    top.domains.sync = sync = ClockDomain("sync")
    top.submodules.dut = dut
    results: list[Result] = []
    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(amaranth_testbench(dut, transactions, sync.rst, results, probe))
    sim.run()
    return results


# The CXXRTL simulation's driver. ----------------------------------------------

# The same protocol in C++ (a %-template: %(top)s is CXXRTL's class name).
# It reads the stimulus on stdin and the thresholds and seed as arguments;
# prints per vector "done N FIRST CYCLES w0 w1 ..." or "reset N FIRST".
# Payloads are packed bit by bit: they are wider than 64 bits.
_CXX_DRIVER = r"""#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include "op.h"

template <size_t N> void put(value<N> &v, size_t at, size_t width, uint64_t bits) {
  for (size_t k = 0; k < width; k++) v.set_bit(at + k, (bits >> k) & 1);
}
template <size_t N> uint64_t take(const value<N> &v, size_t at, size_t width) {
  uint64_t bits = 0;
  for (size_t k = 0; k < width; k++) bits |= uint64_t(v.bit(at + k)) << k;
  return bits;
}
static uint32_t xorshift32(uint32_t s) {
  s ^= s << 13;
  s ^= s >> 17;
  s ^= s << 5;
  return s;
}

struct Item {
  bool params;
  unsigned d, ordinal;  // ordinal: the vector's number (a params item: the next vector's)
  long reset_after;
  bool wait;
  size_t at;  // its first word; params: gamma and beta alternate
};

// --- The stimulus ---------------------------------------------------------
static bool read_stimulus(std::vector<Item> &items, std::vector<uint64_t> &words,
                          std::vector<size_t> &where) {
  char kind[16];
  while (std::scanf("%%15s", kind) == 1) {
    Item it = {false, 0, (unsigned)where.size(), 0, false, words.size()};
    unsigned long long a, b;
    if (!std::strcmp(kind, "params")) {
      it.params = true;
      if (std::scanf("%%u", &it.d) != 1) return false;
      for (unsigned k = 0; k < it.d; k++) {
        if (std::scanf("%%llx %%llx", &a, &b) != 2) return false;
        words.push_back(a);
        words.push_back(b);
      }
    } else if (!std::strcmp(kind, "vector")) {
      int wait;
      if (std::scanf("%%u %%ld %%d", &it.d, &it.reset_after, &wait) != 3) return false;
      it.wait = wait;
      where.push_back(items.size());
      for (unsigned k = 0; k < it.d; k++) {
        if (std::scanf("%%llx", &a) != 1) return false;
        words.push_back(a);
      }
    } else {
      return false;
    }
    items.push_back(it);
  }
  return true;
}

int main(int argc, char **argv) {
  if (argc != 4) return 2;
  const uint32_t gap_threshold = std::strtoul(argv[1], 0, 0);
  const uint32_t stall_threshold = std::strtoul(argv[2], 0, 0);
  uint32_t state = std::strtoul(argv[3], 0, 0);
  std::vector<Item> items;
  std::vector<uint64_t> words;
  std::vector<size_t> where;  // each vector's item
  if (!read_stimulus(items, words, where)) return 5;

  // --- The unit and its clock ----------------------------------------------
  cxxrtl_design::p_%(top)s top;
  // A second step after the rising edge: step() may stop before outputs
  // that depend on the flip-flops settle.
  auto tick = [&]() {
    top.p_clk.set<bool>(false);
    top.step();
    top.p_clk.set<bool>(true);
    top.step();
    top.step();
  };
  auto idle = [&]() {
    top.p_i____valid.set<bool>(false);
#if AFFINE
    top.p_params____valid.set<bool>(false);
#endif
    top.p_o____ready.set<bool>(false);
  };
  auto is_last = [&]() { return !HAS_LAST || top.p_o____payload.bit(LANES * OUT_WIDTH); };
  idle();
  top.p_rst.set<bool>(true);
  tick();
  top.p_rst.set<bool>(false);

  // --- The protocol, cycle by cycle ----------------------------------------
  size_t source = 0, beat = 0, sink = 0;
  std::vector<long> first(where.size(), -1);
  std::vector<uint64_t> got;
  long t = 0, progress = 0;
  while (!(sink == where.size() && source == items.size())) {
    state = xorshift32(state);
    const bool gap = (state & 0xffff) < gap_threshold, stall = (state >> 16) < stall_threshold;
    const Item *vec = sink < where.size() ? &items[where[sink]] : 0;
    if (vec && vec->reset_after > 0 && first[sink] >= 0 && t - first[sink] == vec->reset_after) {
      idle();
      top.p_rst.set<bool>(true);
      tick();
      top.p_rst.set<bool>(false);
      std::printf("reset %%zu %%ld\n", sink, first[sink]);
      source = where[sink] + 1;
      beat = 0;
      sink++;
      got.clear();
      progress = ++t;
      continue;
    }
    const bool ready = !stall && !(vec && vec->reset_after > 0);
    top.p_o____ready.set<bool>(ready);
    top.step();
    const bool out = ready && top.p_o____valid.get<bool>();
    const bool finishing = out && is_last();

    // the source: a params word or a vector's beat
    bool offering = false, on_params = false;
    if (source < items.size()) {
      const Item &it = items[source];
      on_params = it.params;
      const bool released = it.params || !it.wait || beat > 0 || sink >= it.ordinal ||
                            (sink + 1 == it.ordinal && finishing);
      offering = released && !gap;
      if (it.params) {
#if AFFINE
        put(top.p_params____payload, 0, 1, beat == 0);
        for (unsigned lane = 0; lane < LANES; lane++) {
          const size_t k = beat * LANES + lane;
          const uint64_t g = k < it.d ? words[it.at + 2 * k] : 0;
          const uint64_t b = k < it.d ? words[it.at + 2 * k + 1] : 0;
          put(top.p_params____payload, 1 + lane * IN_WIDTH, IN_WIDTH, g);
          put(top.p_params____payload, 1 + (LANES + lane) * IN_WIDTH, IN_WIDTH, b);
        }
#endif
      } else {
        put(top.p_i____payload, 0, D_BITS, it.d);
        for (unsigned lane = 0; lane < LANES; lane++) {
          const size_t k = beat * LANES + lane;
          put(top.p_i____payload, D_BITS + lane * IN_WIDTH, IN_WIDTH,
              k < it.d ? words[it.at + k] : 0);
        }
      }
    }
    top.p_i____valid.set<bool>(offering && !on_params);
#if AFFINE
    top.p_params____valid.set<bool>(offering && on_params);
#endif
    top.step();
#if AFFINE
    const bool taken = offering && (on_params ? top.p_params____ready.get<bool>()
                                              : top.p_i____ready.get<bool>());
#else
    const bool taken = offering && top.p_i____ready.get<bool>();
#endif
    if (taken) {
      const Item &it = items[source];
      if (!it.params && beat == 0) first[it.ordinal] = t;
      if (++beat == (it.d + LANES - 1) / LANES) {
        source++;
        beat = 0;
      }
    }

    // the sink
    if (out && vec) {
      for (unsigned lane = 0; lane < LANES; lane++)
        got.push_back(take(top.p_o____payload, lane * OUT_WIDTH, OUT_WIDTH));
      if (is_last()) {
        std::printf("done %%zu %%ld %%ld", sink, first[sink], t - first[sink]);
        for (unsigned k = 0; k < vec->d; k++) std::printf(" %%llx", (unsigned long long)got[k]);
        std::printf("\n");
        sink++;
        got.clear();
        progress = t;
      }
    }
    tick();
    if (++t - progress > PATIENCE) return 3;  // no vector finished
  }
  return 0;
}
"""


def cxx_driver(ports: Ports) -> str:
    """The C++ driver of a unit with these ports (a %-template: ``%(top)s``)."""
    defines = {
        "LANES": ports.lanes,
        "IN_WIDTH": ports.in_width,
        "OUT_WIDTH": ports.out_width,
        "D_BITS": ports.d_bits,
        "HAS_LAST": int(ports.last),
        "AFFINE": int(ports.params),
        "PATIENCE": PATIENCE,
    }
    head = "".join(f"#define {k} {v}\n" for k, v in defines.items())
    return head + _CXX_DRIVER


def run_cxxrtl(binary: str | Path, transactions: Transactions, ports: Ports) -> list[Result]:
    """Stream ``transactions`` through a unit compiled with :func:`cxx_driver`."""
    done = subprocess.run(
        [
            str(binary),
            str(transactions.gap_threshold),
            str(transactions.stall_threshold),
            str(transactions.seed),
        ],
        input=stimulus_text(transactions, ports),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if done.returncode:
        raise RuntimeError(f"the compiled unit failed ({done.returncode}): {done.stderr[-500:]}")
    results = []
    for line in done.stdout.splitlines():
        kind, _, first, *rest = line.split()
        if kind == "reset":
            results.append(Result(None, int(first), None))
        else:
            bits = np.array([int(w, 16) for w in rest[1:]], dtype=np.int64)
            results.append(Result(bits, int(first), int(rest[0])))
    if len(results) != len(transactions.vectors):
        raise RuntimeError(
            f"the compiled unit gave {len(results)} of {len(transactions.vectors)} vectors"
        )
    return results


# The Verilog testbench. --------------------------------------------------------

_VERILOG_HEAD = """\
// Self-checking testbench for {top}: {title}.
// Reads +inputs=FILE (default inputs.hex: the stimulus, "params D" then D
// lines "G B", "vector D R W" then D lines of element bits), +expected=FILE
// (default expected.hex: the output bits of each vector not reset, one a
// line) and +cycles=FILE (default cycles.txt: each such vector's latency).
// The input is gapped and the output stalled at random (xorshift32,
// +gaps=N +stalls=N out of 65536, +seed=S; defaults {gaps}, {stalls},
// {seed}); +gapless turns both off, and then each vector's latency must be
// cycles.txt's. Every output bit must be the expected one, NaNs included.
// Prints per failing vector (every vector with +verbose{verbose_note})
// "vector I d=D first=T cycles=C ok|FAIL ...", then "N passed, M failed".
`timescale 1ns/1ps
module tb;
"""

_VERILOG_DECLARATIONS = """\
  // The unit's streams: P lanes of IW bits in (after D_BITS of d), P of OW out.
  localparam P = {lanes}, IW = {in_width}, OW = {out_width}, D_BITS = {d_bits};
  localparam IN_BITS = D_BITS + P * IW, OUT_BITS = P * OW + {last}, PARAMS_BITS = 1 + 2 * P * IW;
  localparam MAX_ITEMS = {max_items}, MAX_WORDS = {max_words}, PATIENCE = {patience};
  // No initial values on the unit's inputs: their first assignment must be an
  // event (Icarus does not run "always @*" at time zero).
  reg clk = 0, rst, i_valid, o_ready, p_valid;
  reg [IN_BITS-1:0] i_payload;
  reg [PARAMS_BITS-1:0] p_payload;
  wire [OUT_BITS-1:0] o_payload;
  wire i_ready, o_valid, p_ready;
"""

_VERILOG_STATE = """
  // The stimulus, read whole (the source runs ahead of the sink).
  reg item_params [0:MAX_ITEMS-1];
  integer item_d [0:MAX_ITEMS-1], item_reset [0:MAX_ITEMS-1], item_wait [0:MAX_ITEMS-1];
  integer item_at [0:MAX_ITEMS-1], item_ordinal [0:MAX_ITEMS-1], vector_item [0:MAX_ITEMS-1];
  reg [IW-1:0] words [0:MAX_WORDS-1];
  integer n_items, n_vectors, n_words;
  integer first [0:MAX_ITEMS-1];
  reg [OW-1:0] got [0:1023 + P];
  reg [OW-1:0] want;

  integer fin, fexp, fcyc, status, k, lane, d, wait_flag, t, progress;
  integer source, beat, sink, out_beat, passed, failed, wrong, want_cycles, cycles;
  integer gap_threshold, stall_threshold, verbose;
  reg [31:0] state;
  reg [8*8:1] kind;
  reg [1023:0] inputs_file, expected_file, cycles_file;
  reg gap, stall, ready, out, finishing, released, offering, on_params, taken;

  function [31:0] xorshift32(input [31:0] s);
    reg [31:0] v;
    begin
      v = s ^ (s << 13);
      v = v ^ (v >> 17);
      xorshift32 = v ^ (v << 5);
    end
  endfunction

  task tick;
    begin
      #3 clk = 1;
      #5 clk = 0;
    end
  endtask

  task idle;
    begin
      i_valid = 0; p_valid = 0; o_ready = 0;
    end
  endtask
"""

_VERILOG_READ = """
  // --- The stimulus -----------------------------------------------------------
  task read_stimulus;
    begin
      n_items = 0; n_vectors = 0; n_words = 0;
      while ($fscanf(fin, "%s", kind) == 1) begin
        if (n_items == MAX_ITEMS) begin
          $display("more than %0d items in %0s", MAX_ITEMS, inputs_file);
          $finish;
        end
        item_at[n_items] = n_words;
        item_ordinal[n_items] = n_vectors;
        item_params[n_items] = kind == "params";
        item_reset[n_items] = 0; item_wait[n_items] = 0; first[n_items] = -1;
        if (kind == "params") status = $fscanf(fin, "%d\\n", item_d[n_items]);
        else if (kind == "vector") begin
          status = $fscanf(fin, "%d %d %d\\n", item_d[n_items], item_reset[n_items], wait_flag);
          item_wait[n_items] = wait_flag;
          vector_item[n_vectors] = n_items;
          n_vectors = n_vectors + 1;
        end else begin
          $display("%0s: unknown item %0s", inputs_file, kind);
          $finish;
        end
        if (n_words + 2 * item_d[n_items] > MAX_WORDS) begin
          $display("more than %0d words in %0s", MAX_WORDS, inputs_file);
          $finish;
        end
        for (k = 0; k < item_d[n_items]; k = k + 1) begin
          status = $fscanf(fin, "%h", words[n_words]);
          n_words = n_words + 1;
          if (kind == "params") begin
            status = $fscanf(fin, "%h", words[n_words]);
            n_words = n_words + 1;
          end
        end
        n_items = n_items + 1;
      end
    end
  endtask
"""

_VERILOG_SOURCE_SINK = """
  // --- The source: a params word or a vector's beat, lanes past d zero -------
  task present;
    begin
      on_params = item_params[source];
      d = item_d[source];
      if (on_params) begin
        p_payload[0] = beat == 0;
        for (lane = 0; lane < P; lane = lane + 1) begin
          k = beat * P + lane;
          p_payload[1 + lane * IW +: IW] = k < d ? words[item_at[source] + 2 * k] : 0;
          p_payload[1 + (P + lane) * IW +: IW] = k < d ? words[item_at[source] + 2 * k + 1] : 0;
        end
      end else begin
        for (k = 0; k < D_BITS; k = k + 1) i_payload[k] = d[k];
        for (lane = 0; lane < P; lane = lane + 1) begin
          k = beat * P + lane;
          i_payload[D_BITS + lane * IW +: IW] = k < d ? words[item_at[source] + k] : 0;
        end
      end
    end
  endtask

  // --- The sink: a finished vector against expected.hex and cycles.txt --------
  task check_vector;
    begin
      d = item_d[vector_item[sink]];
      cycles = t - first[sink];
      wrong = 0;
      for (k = 0; k < d; k = k + 1) begin
        if ($fscanf(fexp, "%h\\n", want) != 1) begin
          $display("the expected file ends at vector %0d", sink);
          $finish;
        end
        if (got[k] !== want) begin
          if (wrong < 3)
            $display("  vector %0d element %0d: %h, expected %h", sink, k, got[k], want);
          wrong = wrong + 1;
        end
      end
      if ($fscanf(fcyc, "%d\\n", want_cycles) != 1) begin
        $display("the cycles file ends at vector %0d", sink);
        $finish;
      end
      if (gap_threshold != 0 || stall_threshold != 0) want_cycles = cycles;  // stalled: bits only
      if (wrong == 0 && cycles == want_cycles) begin
        passed = passed + 1;
        if (verbose)
          $display("vector %0d d=%0d first=%0d cycles=%0d ok", sink, d, first[sink], cycles);
      end else begin
        failed = failed + 1;
        $display("vector %0d d=%0d first=%0d cycles=%0d FAIL (%0d wrong elements, %0d %s)",
          sink, d, first[sink], cycles, wrong, want_cycles, "cycles expected");
      end
    end
  endtask
"""

_VERILOG_MAIN = """
  // --- The protocol, cycle by cycle --------------------------------------------
  initial begin
    if (!$value$plusargs("inputs=%s", inputs_file)) inputs_file = "inputs.hex";
    if (!$value$plusargs("expected=%s", expected_file)) expected_file = "expected.hex";
    if (!$value$plusargs("cycles=%s", cycles_file)) cycles_file = "cycles.txt";
    if (!$value$plusargs("gaps=%d", gap_threshold)) gap_threshold = {gap_threshold};
    if (!$value$plusargs("stalls=%d", stall_threshold)) stall_threshold = {stall_threshold};
    if (!$value$plusargs("seed=%d", state)) state = {seed};
    if ($test$plusargs("gapless")) begin gap_threshold = 0; stall_threshold = 0; end
    verbose = {verbose} || $test$plusargs("verbose");
    fin = $fopen(inputs_file, "r");
    fexp = $fopen(expected_file, "r");
    fcyc = $fopen(cycles_file, "r");
    if (fin == 0 || fexp == 0 || fcyc == 0) begin
      $display("cannot open %0s, %0s or %0s", inputs_file, expected_file, cycles_file);
      $finish;
    end
    read_stimulus;
    passed = 0; failed = 0;
    source = 0; beat = 0; sink = 0; out_beat = 0; t = 0; progress = 0;
    idle;
    rst = 1; i_payload = 0; p_payload = 0;
    #2 tick;
    rst = 0;
    while (!(sink == n_vectors && source == n_items)) begin
      state = xorshift32(state);
      gap = state[15:0] < gap_threshold;
      stall = state[31:16] < stall_threshold;
      if (sink < n_vectors && item_reset[vector_item[sink]] > 0 && first[sink] >= 0
          && t - first[sink] == item_reset[vector_item[sink]]) begin
        idle;
        rst = 1;
        #2 tick;
        rst = 0;
        if (verbose) $display("vector %0d d=%0d first=%0d reset", sink,
          item_d[vector_item[sink]], first[sink]);
        source = vector_item[sink] + 1; beat = 0;
        sink = sink + 1; out_beat = 0;
        t = t + 1; progress = t;
      end else begin
        ready = !stall && !(sink < n_vectors && item_reset[vector_item[sink]] > 0);
        o_ready = ready;
        #1;
        out = ready && o_valid;
        finishing = out && o_last;
        offering = 0; on_params = 0;
        if (source < n_items) begin
          present;
          released = on_params || !item_wait[source] || beat > 0 || sink >= item_ordinal[source]
            || (sink + 1 == item_ordinal[source] && finishing);
          offering = released && !gap;
        end
        i_valid = offering && !on_params;
        p_valid = offering && on_params;
        #1;
        taken = offering && (on_params ? p_ready : i_ready);
        if (taken) begin
          if (!on_params && beat == 0) first[item_ordinal[source]] = t;
          beat = beat + 1;
          if (beat == (item_d[source] + P - 1) / P) begin source = source + 1; beat = 0; end
        end
        if (out && sink < n_vectors) begin
          for (lane = 0; lane < P; lane = lane + 1)
            if (out_beat * P + lane <= 1023 + P)
              got[out_beat * P + lane] = o_payload[lane * OW +: OW];
          out_beat = out_beat + 1;
          if (o_last) begin
            check_vector;
            sink = sink + 1; out_beat = 0; progress = t;
          end
        end
        tick;
        t = t + 1;
        if (t - progress > PATIENCE) begin
          $display("no vector finished in %0d cycles (vector %0d)", PATIENCE, sink);
          $finish;
        end
      end
    end
    $display("%0d passed, %0d failed", passed, failed);
    $finish;
  end
endmodule
"""


def _verilog_instance(ports: Ports, top: str) -> str:
    params = (
        ",\n    .params__payload(p_payload), .params__valid(p_valid), .params__ready(p_ready)"
        if ports.params
        else ""
    )
    last = "o_payload[P * OW]" if ports.last else "1'b1"
    return f"""  {top} dut(.clk(clk), .rst(rst),
    .i__payload(i_payload), .i__valid(i_valid), .i__ready(i_ready),
    .o__payload(o_payload), .o__valid(o_valid), .o__ready(o_ready){params});
  wire o_last = {last};  // a scalar unit's every output is a vector's last
"""


def verilog_testbench(
    ports: Ports, top: str, title: str, transactions: Transactions, *, verbose: bool = False
) -> str:
    """The self-checking testbench (module ``tb``) of ``top``, for the
    stimulus of ``transactions`` (whose patterns are its defaults) or any
    other that fits: room for at least its items and words."""
    words = sum(2 * len(x.gamma) if isinstance(x, Params) else x.d for x in transactions.items)
    fields = {
        "top": top,
        "title": title,
        "gaps": transactions.gap_threshold,
        "stalls": transactions.stall_threshold,
        "seed": transactions.seed,
        "verbose_note": ", the default here" if verbose else "",
        "lanes": ports.lanes,
        "in_width": ports.in_width,
        "out_width": ports.out_width,
        "d_bits": ports.d_bits,
        "last": int(ports.last),
        "max_items": max(len(transactions.items), 1 << 12),
        "max_words": max(words, 1 << 16),
        "patience": PATIENCE,
        "gap_threshold": transactions.gap_threshold,
        "stall_threshold": transactions.stall_threshold,
        "verbose": int(verbose),
    }
    sections = (
        _VERILOG_HEAD,
        _VERILOG_DECLARATIONS,
        _verilog_instance(ports, top),
        _VERILOG_STATE,
        _VERILOG_READ,
        _VERILOG_SOURCE_SINK,
        _VERILOG_MAIN,
    )
    return "".join(s.format(**fields) if "{" in s else s for s in sections)
