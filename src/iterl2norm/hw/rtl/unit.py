"""The normalization unit ``iterl2norm_unit``, generated from a
:class:`~iterl2norm.hw.UnitConfig`: its output bits are ``hw.reference``'s
and its latency is ``hw.simulate``'s, cycle for cycle.

It builds ``statistics="l2"`` (the paper's L2 normalizer: one pass for
q = sum(x^2), one for the output), ``"two-pass"`` (LayerNorm: sum(x) and
sum(x^2) in the same pass) and ``"three-pass"`` (the mean and the largest
exponent k, then sum((y 2^-k)^2) over a second read of the buffer), with or
without the affine part, in scalar mode,
with the adder tree and at least ``add_latency`` accumulator slots, the
methods ``iterl2norm`` (every start, rate and schedule), ``fisr`` and
``exact`` (a square root, then a divider per lane), on a
datapath whose exponent field is the accumulator's (fp32, bf16 into fp32,
fp16 or bf16 alone). Other fields raise a ``ValueError`` naming them.

The datapath, as the model (:mod:`iterl2norm.hw.simulator`) issues it:

- pass 1: a beat of P elements is taken on cycle c and registered; P lane
  multipliers square it (``mul_latency``), an adder tree of log2(P) levels
  (``add_latency`` each) sums the squares, and accumulator slot c mod S adds
  the tree's result (the first S beats load their slots). The beat is also
  written to the vector buffer (``amaranth.lib.memory``, 1024/P words).
  Two-pass statistics sum the elements, widened to the accumulator format,
  through a second tree and accumulator beside the first.
- the final sum: the S slots, zero-padded to a power of two, go through a
  pairwise tree on one adder. Each of its additions issues at the first
  cycle both operands are ready, the earlier addition first when two are:
  the model's rule, so its cycles are the model's for every d.
- two-pass: one multiplier forms s1 s1 as s1 arrives, then (s1 s1)(1/d) and
  the mean s1 (1/d), with 1/d (rounded once) read from a table of
  d = 64..1024; one adder forms q = s2 - (s1 s1)(1/d) once both are there.
- three-pass: pass 1 sums x (as two-pass does) and finds k, the largest
  element's exponent (a max tree over the magnitudes' bit patterns, one
  level a cycle, and a running maximum); the mean s1 (1/d) is one product.
  From the cycle it is ready the buffer is read again: y = x - mean on the
  output pass's P adders, then P multipliers form (y 2^-k)^2 with -2k added
  to the product's exponent (rounded once), into the second tree and
  accumulator: q.
- the scale: q enters :class:`~.rsqrt_unit.RsqrtUnit`, which gives
  r = q^-1/2 = a * 2^-j in the datapath format after the model's cycles;
  for the exact method :class:`~.sqrt_unit.SqrtUnit` gives rnd(sqrt(qn))
  and j after ``exp_latency + sqrt_latency``.
- the output pass: the buffer is read one word a cycle; centring units
  first form y = x - mean on P adders (rounded once to the datapath
  format), then P lane multipliers form y * r (times 2^-k, three-pass: an
  exponent addend), or, exact method, P dividers y 2^-(k + j) / sqrt(qn)
  (``div_latency``), each rounded once. Rows whose q is zero get zeros, rows whose q is inf or
  NaN get NaN. An affine unit then multiplies by sqrt(d) gamma and
  adds beta, read from their memories word by word beside the beat.

Ports (``amaranth.lib.stream``, valid/ready):

- ``i``: payload ``{d, x}``; ``x`` holds P elements (lane 0 first), ``d`` is
  read from a vector's first beat. ceil(d/P) beats make the vector; lanes
  past d in the last beat are ignored. A first beat with d outside
  64..1024 is dropped and raises ``error`` until the next good first beat.
- ``o``: payload ``{z, last}``, one beat of P outputs a cycle; ``last``
  marks a vector's final beat, whose lanes past d carry zeros. The output
  pass stalls while ``o.ready`` is low (every pipeline register holds).
- ``error``: see ``i``.
- ``params`` (affine units): payload ``{first, gamma, beta}``, P values of
  sqrt(d) gamma and P of beta in the datapath format; ``first`` marks word
  0, each later word goes to the next address. Taken while no vector is in
  the unit (``ready`` is low from a vector's first beat to its last output);
  the constants stay until loaded again.

The unit takes a new vector once the previous one has left. Latency, as the
model counts it: from the cycle the first beat is taken to the cycle the last
output beat is valid, when the input comes without gaps and ``o.ready`` stays
high.
"""

from __future__ import annotations

from fractions import Fraction

import torch
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..._arith import Arithmetic
from ...formats import encode
from ..model.config import D_MAX, D_MIN, UnitConfig, get_preset
from .fp import FpAdd, FpDiv, FpFormat, FpMul, delayed, leading_zeros, widen
from .rsqrt_unit import RsqrtUnit
from .sqrt_unit import SqrtUnit

__all__ = ["NormUnit", "unsupported_fields"]


def unsupported_fields(cfg: UnitConfig) -> list[str]:
    """The fields of ``cfg`` this RTL does not build, as ``name=value``."""
    out = []
    wanted = {
        "statistics": ("l2", "two-pass", "three-pass"),
        "mode": ("scalar",),
        "method": ("iterl2norm", "fisr", "exact"),
        "reduction": ("tree",),
    }
    for name, allowed in wanted.items():
        if getattr(cfg, name) not in allowed:
            out.append(f"{name}={getattr(cfg, name)!r}")
    if cfg.slots < cfg.add_latency:
        out.append(f"acc_slots={cfg.acc_slots!r} (fewer than add_latency={cfg.add_latency})")
    if (cfg.fmt, cfg.acc_fmt) not in (
        ("fp32", "fp32"),
        ("bf16", "fp32"),
        ("bf16", "bf16"),
        ("fp16", "fp16"),
    ):
        out.append(f"fmt={cfg.fmt!r} with acc_fmt={cfg.acc_fmt!r}")
    return out


def negated(bits, width: int):
    """A floating-point value with its sign bit flipped."""
    return Cat(bits[: width - 1], ~bits[width - 1])


class _Tag:
    """What a beat read from the buffer carries: valid (an output beat),
    square (a pass-2 beat, three-pass), the vector's last beat, the lanes
    inside d and its buffer word."""

    KEYS = ("valid", "square", "last", "count", "word")

    def __init__(self, lanes: int, words: int, name: str = "out"):
        self.valid = Signal(name=f"{name}_valid")
        self.square = Signal(name=f"{name}_square")
        self.last = Signal(name=f"{name}_last")
        self.count = Signal(range(lanes + 1), name=f"{name}_count")
        self.word = Signal(range(words), name=f"{name}_word")

    def fields(self):
        return tuple(getattr(self, key) for key in self.KEYS)

    def like(self, name: str) -> _Tag:
        """A tag of the same shapes (the next register level's)."""
        tag = object.__new__(_Tag)
        for key, signal in zip(self.KEYS, self.fields(), strict=True):
            setattr(tag, key, Signal.like(signal, name=f"{name}_{key}"))
        return tag


class _Pipeline:
    """The output pass's lanes, stage by stage. Every register holds while
    ``advance`` is low (the output not taken); ``trail[k]`` is the beat's tag
    after k register levels, ``now`` the lanes' values at the last one."""

    def __init__(self, m: Module, advance, lanes: list, tag: _Tag):
        self.m, self.advance = m, advance
        self.now, self.trail = list(lanes), [tag]

    def stage(self, name: str, make, operand, levels: int) -> None:
        """Each lane's value through an operator (``make()``, combinational)
        with ``operand(lane)``, then ``levels`` register levels."""
        m, values = self.m, []
        for lane, value in enumerate(self.now):
            m.submodules[f"{name}{lane}"] = op = make()
            m.d.comb += [op.a.eq(value), op.b.eq(operand(lane))]
            values.append(op.result)
        for level in range(levels):
            regs = [Signal(len(v), name=f"{name}{level}_{n}") for n, v in enumerate(values)]
            prev = self.trail[-1]
            tag = prev.like(f"{name}{level}")
            with m.If(self.advance):
                m.d.sync += [r.eq(v) for r, v in zip(regs, values, strict=True)]
                m.d.sync += [a.eq(b) for a, b in zip(tag.fields(), prev.fields(), strict=True)]
            values = regs
            self.trail.append(tag)
        self.now = values


def _shift_bits(f: FpFormat) -> int:
    """Width of the pre-scale offsets -k and -2k: |k| is at most the bias
    plus the mantissa bits (the smallest subnormal's exponent)."""
    return (2 * (f.bias + f.mbits)).bit_length() + 1


def _final_tree(width: int) -> list[tuple[tuple[str, int], tuple[str, int]]]:
    """The pairwise tree over ``width`` leaves, as (left, right) operands in
    program order; an operand is ("leaf", s) or ("op", k)."""
    level = [("leaf", s) for s in range(width)]
    ops = []
    while len(level) > 1:
        nxt = []
        for i in range(0, len(level), 2):
            ops.append((level[i], level[i + 1]))
            nxt.append(("op", len(ops) - 1))
        level = nxt
    return ops


class NormUnit(wiring.Component):
    """The normalization unit of ``cfg`` (a :class:`UnitConfig` or a preset name)."""

    def __init__(self, cfg):
        try:
            cfg = get_preset(cfg)
            bad = unsupported_fields(cfg)
            if bad:
                raise ValueError(
                    f"the unit RTL does not build {', '.join(bad)} (configuration {cfg.name!r})"
                )
        except ValueError:
            self._MustUse__silence = True
            raise
        self.cfg = cfg
        self.fmt, self.acc = FpFormat.of(cfg.fmt), FpFormat.of(cfg.acc_fmt)
        if cfg.method == "exact":
            self.scalar = SqrtUnit(
                cfg.fmt, cfg.acc_fmt, exp_latency=cfg.exp_latency, sqrt_latency=cfg.sqrt_latency
            )
        else:
            self.scalar = RsqrtUnit(
                cfg.fmt,
                cfg.iteration,
                mul_latency=cfg.mul_latency,
                add_latency=cfg.add_latency,
                exp_latency=cfg.exp_latency,
                q_fmt=cfg.acc_fmt,
            )
        p, w = cfg.lanes, self.fmt.width
        self.beat = data.StructLayout({"d": range(D_MAX + 1), "x": data.ArrayLayout(w, p)})
        self.out_beat = data.StructLayout({"z": data.ArrayLayout(w, p), "last": 1})
        self.params_beat = data.StructLayout(
            {"first": 1, "gamma": data.ArrayLayout(w, p), "beta": data.ArrayLayout(w, p)}
        )
        self.buffer_bits = (D_MAX // p) * p * w  # the vector buffer: 1024 elements
        ports = {
            "i": In(stream.Signature(self.beat)),
            "o": Out(stream.Signature(self.out_beat)),
            "error": Out(1),
        }
        if cfg.affine:
            ports["params"] = In(stream.Signature(self.params_beat))
        super().__init__(ports)

    def elaborate(self, platform) -> Module:
        m, cfg = Module(), self.cfg
        f, acc = self.fmt, self.acc
        p, lm, la = cfg.lanes, cfg.mul_latency, cfg.add_latency
        words = D_MAX // p
        chunk_shape = range(words + 1)
        # The scalar unit: r = q^-1/2, or (exact) sqrt(qn) and j.
        rsqrt = self.scalar
        m.submodules["sqrt" if cfg.method == "exact" else "rsqrt"] = rsqrt

        # Control. loading: pass 1 (beats still to come); busy: a vector is in
        # the unit, from its first beat to its last output.
        busy, loading, out_pass = Signal(), Signal(), Signal()
        chunks = Signal(chunk_shape)  # C = ceil(d / P) of the vector in the unit
        d_reg = Signal(range(D_MAX + 1))
        taken = Signal(chunk_shape)  # beats taken so far
        error = Signal()
        m.d.comb += self.error.eq(error)

        d_in = self.i.payload.d
        d_ok = (d_in >= D_MIN) & (d_in <= D_MAX)
        chunks_in = Signal(chunk_shape)
        m.d.comb += chunks_in.eq((d_in + (p - 1)) >> (p.bit_length() - 1))
        m.d.comb += self.i.ready.eq(~busy | loading)
        beat = self.i.valid & self.i.ready
        first = Signal()  # the first beat of a vector, this cycle
        m.d.comb += first.eq(beat & ~busy & d_ok)
        with m.If(beat & ~busy & ~d_ok):
            m.d.sync += error.eq(1)
        c_now = Signal(chunk_shape)  # C, valid from the first beat's cycle on
        d_now = Signal(range(D_MAX + 1))
        m.d.comb += [
            c_now.eq(Mux(first, chunks_in, chunks)),
            d_now.eq(Mux(first, d_in, d_reg)),
        ]
        accept = Signal()  # a beat of the vector, this cycle
        m.d.comb += accept.eq(first | (beat & busy))
        with m.If(first):
            m.d.sync += [busy.eq(1), chunks.eq(chunks_in), d_reg.eq(d_in), error.eq(0)]
        with m.If(accept):
            m.d.sync += taken.eq(taken + 1)
            with m.If(taken + 1 == c_now):
                m.d.sync += loading.eq(0)
            with m.Elif(first):
                m.d.sync += loading.eq(1)

        # The buffer: beat c at word c.
        m.submodules.buffer = buffer = Memory(
            shape=data.ArrayLayout(f.width, p), depth=words, init=[]
        )
        write = buffer.write_port()
        m.d.comb += [
            write.addr.eq(taken),
            write.data.eq(self.i.payload.x),
            write.en.eq(accept),
        ]
        if cfg.affine:
            gamma, beta = self._params(m, busy)

        # Pass 1: the beat, registered, lanes past d zeroed.
        x_reg = Signal(data.ArrayLayout(f.width, p))
        x_valid = Signal()
        m.d.sync += x_valid.eq(accept)
        with m.If(accept):
            for lane in range(p):
                inside = taken * p + lane < d_now
                m.d.sync += x_reg[lane].eq(Mux(inside, self.i.payload.x[lane], 0))

        # Pass 1's statistics: sum(x^2) (l2, two-pass) and sum(x) (two-pass,
        # three-pass), each through its adder tree and accumulator.
        vector_done = Signal()  # the last output beat leaves this cycle
        sums = (c_now, first, busy, vector_done)
        if cfg.statistics != "three-pass":
            s2, s2_valid = self._squares(m, [x_reg[n] for n in range(p)], x_valid, None, sums)
        if cfg.statistics != "l2":
            widened = [widen(m, f, acc, x_reg[lane], f"x{lane}") for lane in range(p)]
            s1, s1_valid = self._accumulate(
                m, *self._tree(m, widened, x_valid, "sum"), *sums, "sum"
            )
        k = None
        if cfg.statistics == "l2":
            q_now, q_valid, mean = s2, s2_valid, None
        elif cfg.statistics == "two-pass":  # sum(x) beside sum(x^2), from the same beats
            q_now, q_valid, mean = self._two_pass(m, s1, s1_valid, s2, s2_valid, d_reg, vector_done)
        else:  # three-pass: the mean and the largest exponent now, the squares in pass 2
            mean, mean_ready = self._mean(m, s1, s1_valid, d_reg)
            k = self._largest_exponent(m, x_reg, x_valid, first)

        # The buffer's reads, one word a cycle: pass 2 (three-pass) from the
        # cycle the mean is ready, the output pass from the cycle r is.
        # Every stage holds while the output is not taken.
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        read = buffer.read_port(domain="sync")
        issued = Signal(chunk_shape)
        issuing, squaring, second = Signal(), Signal(), Signal()
        m.d.comb += issuing.eq((rsqrt.o.valid & ~out_pass) | (out_pass & (issued != chunks)))
        address = Signal(range(words))
        m.d.comb += [
            address.eq(Mux(out_pass | second, issued, 0)),
            read.addr.eq(address),
            read.en.eq(advance),
        ]
        with m.If(rsqrt.o.valid & ~out_pass):
            m.d.sync += [out_pass.eq(1), issued.eq(1)]
        with m.Elif(out_pass & advance & (issued != chunks)):
            m.d.sync += issued.eq(issued + 1)
        if k is not None:
            m.d.comb += squaring.eq(mean_ready | (second & (issued != chunks)))
            with m.If(mean_ready):
                m.d.sync += [second.eq(1), issued.eq(1)]
            with m.Elif(second & (issued != chunks)):
                m.d.sync += issued.eq(issued + 1)
            with m.Elif(second):
                m.d.sync += second.eq(0)

        # The stages: each beat carries (valid, last, the lanes inside d, its
        # buffer word, a pass-2 beat) along; ``trail[k]`` is that after k
        # register levels past the buffer's read.
        last_now = address + 1 == chunks
        tag = _Tag(p, words)
        with m.If(advance):
            m.d.sync += [
                tag.valid.eq(issuing),
                tag.square.eq(squaring),
                tag.last.eq(last_now),
                tag.count.eq(Mux(last_now, d_reg - (chunks - 1) * p, p)),
                tag.word.eq(address),
            ]
        pipe = _Pipeline(m, advance, [read.data[lane] for lane in range(p)], tag)
        if mean is not None:  # y = x - mean, rounded once to the datapath
            sub = lambda: FpAdd(f.name, 0, inputs=(f.name, acc.name))  # noqa: E731
            pipe.stage("centre", sub, lambda lane: negated(mean, acc.width), la)
        if k is not None:  # pass 2: sum((y 2^-k)^2), lanes past d as zeros
            centred, at = pipe.now, pipe.trail[-1]
            inside = [Mux(lane < at.count, y, 0) for lane, y in enumerate(centred)]
            q_now, q_valid = self._squares(m, inside, at.square, -2 * k, sums)

        # The scale, and the row's class: zero q (no direction) or inf/NaN q.
        m.d.comb += [rsqrt.i.payload.eq(q_now), rsqrt.i.valid.eq(q_valid)]
        empty, bad = Signal(), Signal()
        with m.If(q_valid):
            all_ones = q_now[acc.mbits : acc.mbits + acc.ebits] == (1 << acc.ebits) - 1
            zero = q_now[: acc.width - 1] == 0
            m.d.sync += [  # q <= 0, and q inf or NaN (which wins)
                empty.eq(zero | q_now[acc.width - 1]),
                bad.eq(all_ones),
            ]

        # The output: y r 2^-j (times 2^-k, three-pass) rounded once, or
        # (exact) y 2^-(k + j) / sqrt(qn).
        if cfg.method == "exact":
            offset = -rsqrt.o.payload.j if k is None else -(k + rsqrt.o.payload.j)
            bits = max(_shift_bits(f), acc.exp_shape.width) + 1

            def divide():
                div = FpDiv(f.name, 0, shift_bits=bits)
                m.d.comb += div.shift.eq(offset)
                return div

            pipe.stage("divide", divide, lambda lane: rsqrt.o.payload.root, cfg.div_latency)
        else:
            if k is None:
                scale = lambda: FpMul(f.name, 0)  # noqa: E731
            else:

                def scale():
                    mul = FpMul(f.name, 0, shift_bits=_shift_bits(f))
                    m.d.comb += mul.shift.eq(-k)
                    return mul

            pipe.stage("scale", scale, lambda lane: rsqrt.o.payload, lm)
        # The rows with no direction get zeros, the non-finite rows NaN (then
        # the affine part, as the model has it).
        nan = Const(f.quiet_nan(), f.width)
        pipe.now = [Mux(bad, nan, Mux(empty, 0, z)) for z in pipe.now]
        if cfg.affine:
            for name, memory, operator, latency in (
                ("gamma", gamma, FpMul, lm),
                ("beta", beta, FpAdd, la),
            ):
                port = memory.read_port(domain="sync")
                # A word's constants are read as the beat enters the stage
                # before theirs, so they arrive with it.
                m.d.comb += [port.addr.eq(pipe.trail[-2].word), port.en.eq(advance)]
                pipe.stage(
                    name,
                    lambda operator=operator: operator(f.name, 0),
                    lambda lane, port=port: port.data[lane],
                    latency,
                )
        end = pipe.trail[-1]
        for lane, z in enumerate(pipe.now):
            m.d.comb += self.o.payload.z[lane].eq(Mux(lane >= end.count, 0, z))
        m.d.comb += [self.o.valid.eq(end.valid), self.o.payload.last.eq(end.last)]

        # The vector leaves with its last beat; the scale is released then.
        m.d.comb += vector_done.eq(self.o.valid & self.o.ready & end.last)
        m.d.comb += rsqrt.o.ready.eq(vector_done)
        with m.If(vector_done):
            m.d.sync += [busy.eq(0), out_pass.eq(0), taken.eq(0), issued.eq(0)]
        return m

    def _params(self, m, busy):
        """The affine constants' memories, sqrt(d) gamma and beta, loaded
        word by word through ``params`` while no vector is in the unit."""
        f, p = self.fmt, self.cfg.lanes
        words = D_MAX // p
        m.d.comb += self.params.ready.eq(~busy)
        load = self.params.valid & self.params.ready
        word = Signal(range(words))
        at = Mux(self.params.payload.first, 0, word)
        with m.If(load):
            m.d.sync += word.eq(at + 1)
        memories = []
        for name in ("gamma", "beta"):
            m.submodules[name] = memory = Memory(
                shape=data.ArrayLayout(f.width, p), depth=words, init=[]
            )
            port = memory.write_port()
            m.d.comb += [
                port.addr.eq(at),
                port.data.eq(getattr(self.params.payload, name)),
                port.en.eq(load),
            ]
            memories.append(memory)
        return memories

    def _tree(self, m, leaves, valid, name):
        """A pairwise adder tree, one level per ``add_latency``: (sum, valid)."""
        level, depth = list(leaves), 0
        while len(level) > 1:
            depth += 1
            nxt = []
            for n in range(0, len(level), 2):
                add = FpAdd(self.acc.name, self.cfg.add_latency)
                m.submodules[f"{name}_tree{depth}_{n // 2}"] = add
                m.d.comb += [add.a.eq(level[n]), add.b.eq(level[n + 1])]
                nxt.append(add.result)
            level = nxt
            valid = delayed(m, valid, self.cfg.add_latency, f"{name}_tree{depth}_valid")
        return level[0], valid

    def _inverse_d(self, m, d_reg):
        """1/d in the accumulator format (rounded once), from a table of
        d = 64..1024, read from the vector's d: its data the cycle after."""
        ar = Arithmetic.resolve(torch.float32, self.cfg.fmt, self.cfg.acc_fmt)
        inverse = encode(
            torch.tensor([ar.const_acc(Fraction(1, d)) for d in range(D_MIN, D_MAX + 1)]),
            self.cfg.acc_fmt,
        ).tolist()
        m.submodules.inverse_d = table = Memory(
            shape=self.acc.width, depth=len(inverse), init=inverse
        )
        port = table.read_port(domain="sync")
        m.d.comb += [port.addr.eq(d_reg - D_MIN), port.en.eq(1)]
        return port.data

    def _mean(self, m, s1, s1_valid, d_reg):
        """The mean s1 (1/d) as s1 arrives, on the statistics multiplier:
        (the mean, held; the cycle it is ready)."""
        m.submodules.stats_mul = mul = FpMul(self.acc.name, self.cfg.mul_latency)
        m.d.comb += [mul.a.eq(s1), mul.b.eq(self._inverse_d(m, d_reg)), mul.valid_in.eq(s1_valid)]
        mean = Signal(self.acc.width, name="mean")
        with m.If(mul.valid_out):
            m.d.sync += mean.eq(mul.result)
        return mean, mul.valid_out

    def _largest_exponent(self, m, x_reg, x_valid, first):
        """k = floor(log2 max |x|) over the vector (0 for a zero vector), from
        the elements' magnitudes: their bit patterns order them (inf and NaN
        above every finite value; those rows come out NaN whatever k is). A
        max tree of one level a cycle, then a running maximum."""
        f, p = self.fmt, self.cfg.lanes
        level = [x_reg[lane][: f.width - 1] for lane in range(p)]
        valid = x_valid
        depth = 0
        while len(level) > 1:
            depth += 1
            nxt = []
            for n in range(0, len(level), 2):
                larger = Signal(f.width - 1, name=f"max{depth}_{n // 2}")
                a, b = level[n], level[n + 1]
                m.d.sync += larger.eq(Mux(a > b, a, b))
                nxt.append(larger)
            level = nxt
            valid = delayed(m, valid, 1, f"max{depth}_valid")
        top = Signal(f.width - 1, name="max_magnitude")
        with m.If(first):
            m.d.sync += top.eq(0)
        with m.Elif(valid):
            m.d.sync += top.eq(Mux(top > level[0], top, level[0]))
        e_field, frac = top[f.mbits :], top[: f.mbits]
        k = Signal(signed(_shift_bits(f)), name="k")
        lz = leading_zeros(m, frac, "max_lz")
        m.d.comb += k.eq(Mux(top == 0, 0, Mux(e_field != 0, e_field - f.bias, f.emin - 1 - lz)))
        return k

    def _squares(self, m, values, valid, shift, sums):
        """sum(v^2) (times 2^shift, three-pass) over the beats of ``values``
        (P lanes, ``valid`` a beat): P multipliers into the accumulator
        format, the tree, the accumulator; (sum, valid)."""
        f, acc, lm = self.fmt, self.acc, self.cfg.mul_latency
        squares = []
        for lane, v in enumerate(values):
            bits = None if shift is None else _shift_bits(f)
            sq = FpMul(acc.name, lm, inputs=(f.name, f.name), shift_bits=bits)
            m.submodules[f"square{lane}"] = sq
            m.d.comb += [sq.a.eq(v), sq.b.eq(v), sq.valid_in.eq(valid)]
            if shift is not None:
                m.d.comb += sq.shift.eq(shift)
            squares.append(sq.result)
        squares_valid = delayed(m, valid, lm, "squares_valid")
        return self._accumulate(m, *self._tree(m, squares, squares_valid, "sq"), *sums, "sq")

    def _two_pass(self, m, s1, s1_valid, s2, s2_valid, d_reg, clear):
        """q = s2 - (s1 s1)(1/d) and the mean s1 (1/d), in the accumulator
        format, on one multiplier and one adder; 1/d, rounded once, from a
        table. The products issue as the model has them: s1 s1 as s1 arrives,
        its product with 1/d as that arrives, the mean the cycle after; the
        difference as both of its operands are there."""
        cfg, acc = self.cfg, self.acc
        lm, la = cfg.mul_latency, cfg.add_latency
        inverse = self._inverse_d(m, d_reg)

        m.submodules.stats_mul = mul = FpMul(acc.name, lm)
        m.submodules.stats_add = add = FpAdd(acc.name, la)
        s1_reg, s2_reg, mean, p = (Signal(acc.width, name=n) for n in ("s1", "s2", "mean", "p"))
        # Cycles since s1 arrived: s1 s1 issues on 0, (s1 s1)(1/d) on lm, the
        # mean on lm + 1; their results arrive on lm, 2 lm and 2 lm + 1.
        since = Signal(range(2 * lm + 2), name="since_s1")
        counting = Signal(name="counting")
        at = lambda k: counting & (since == k)  # noqa: E731
        with m.If(s1_valid):
            m.d.sync += [s1_reg.eq(s1), since.eq(1), counting.eq(1)]
            m.d.comb += [mul.a.eq(s1), mul.b.eq(s1), mul.valid_in.eq(1)]
        with m.Elif(counting):
            m.d.sync += since.eq(since + 1)
            with m.If(since == 2 * lm + 1):
                m.d.sync += counting.eq(0)
        with m.If(at(lm)):
            m.d.comb += [mul.a.eq(mul.result), mul.b.eq(inverse), mul.valid_in.eq(1)]
        with m.If(at(lm + 1)):
            m.d.comb += [mul.a.eq(s1_reg), mul.b.eq(inverse), mul.valid_in.eq(1)]
        p_arrives = at(2 * lm)
        s2_here, p_here, subtracted = (Signal(name=n) for n in ("s2_here", "p_here", "q_issued"))
        with m.If(p_arrives):
            m.d.sync += [p.eq(mul.result), p_here.eq(1)]
        with m.If(at(2 * lm + 1)):
            m.d.sync += mean.eq(mul.result)
        with m.If(s2_valid):
            m.d.sync += [s2_reg.eq(s2), s2_here.eq(1)]
        # s2 - p as soon as both are there (each read from its source on arrival).
        p_ready, s2_ready = p_here | p_arrives, s2_here | s2_valid
        with m.If(p_ready & s2_ready & ~subtracted):
            m.d.sync += subtracted.eq(1)
            m.d.comb += [
                add.a.eq(Mux(s2_valid, s2, s2_reg)),
                add.b.eq(negated(Mux(p_arrives, mul.result, p), acc.width)),
                add.valid_in.eq(1),
            ]
        with m.If(clear):
            m.d.sync += [x.eq(0) for x in (s2_here, p_here, subtracted)]
        return add.result, add.valid_out, mean

    def _accumulate(self, m, value, valid, c_now, first, busy, clear, name):
        """Accumulator slots and the final tree on one adder: (q, q valid).
        Every flag holds until ``clear`` (the vector leaves), so no addition
        issues twice."""
        cfg, acc = self.cfg, self.acc
        s, la = cfg.slots, cfg.add_latency
        slot_shape = range(max(s, 2))
        arrivals = Signal(range(D_MAX + 1))  # tree results absorbed so far
        slot = Signal(slot_shape)  # arrivals mod S
        with m.If(first):
            m.d.sync += [arrivals.eq(0), slot.eq(0)]
        with m.If(valid):
            m.d.sync += [arrivals.eq(arrivals + 1), slot.eq(Mux(slot == s - 1, 0, slot + 1))]
        final_now = Signal()  # this arrival is its slot's last
        m.d.comb += final_now.eq(arrivals + s >= c_now)
        loading = arrivals < s

        values = [Signal(acc.width, name=f"{name}_slot{n}") for n in range(s)]
        done = [Signal(name=f"{name}_slot{n}_done") for n in range(s)]
        m.submodules[f"{name}_accumulator"] = adder = FpAdd(acc.name, la)
        tag = delayed(m, slot, la, f"{name}_acc_tag")
        tag_final = delayed(m, final_now, la, f"{name}_acc_final")
        m.d.comb += adder.valid_in.eq(valid & ~loading)
        out_valid = adder.valid_out
        held = Signal(acc.width)  # slot's value as an add issued now reads it
        m.d.comb += held.eq(values[0])
        for n in range(s):
            with m.If(slot == n):
                m.d.comb += held.eq(Mux(out_valid & (tag == n), adder.result, values[n]))
        m.d.comb += [adder.a.eq(held), adder.b.eq(value)]

        # Each slot's value and its ready-now flag.
        leaf_now, leaf_value = [], []
        for n in range(s):
            load_now = valid & loading & (slot == n)
            add_now = out_valid & (tag == n)
            with m.If(load_now):
                m.d.sync += values[n].eq(value)
            with m.If(add_now):
                m.d.sync += values[n].eq(adder.result)
            ready_now = Signal(name=f"{name}_slot{n}_ready")
            empty_slot = c_now <= n  # no beat lands in it: zero from the start
            m.d.comb += ready_now.eq(
                (busy | first)
                & (done[n] | (load_now & final_now) | (add_now & tag_final) | empty_slot)
            )
            with m.If(ready_now):
                m.d.sync += done[n].eq(1)
            now = Mux(load_now, value, Mux(add_now, adder.result, values[n]))
            leaf_value.append(Mux(empty_slot, 0, now))
            leaf_now.append(ready_now)
        width = 1 << (s - 1).bit_length()
        for _ in range(s, width):  # zero padding
            leaf_now.append(busy | first)
            leaf_value.append(Const(0, acc.width))

        ops = _final_tree(width)
        if not ops:
            q_valid = Signal()
            m.d.comb += q_valid.eq(leaf_now[0] & ~done[0])
            with m.If(clear):
                m.d.sync += [x.eq(0) for x in done]
            return leaf_value[0], q_valid

        m.submodules[f"{name}_final"] = final = FpAdd(acc.name, la)
        issue = Signal(range(len(ops)), name=f"{name}_final_issue")
        issue_any = Signal(name=f"{name}_final_issue_any")
        result_tag = delayed(m, issue, la, f"{name}_final_tag")
        m.d.comb += final.valid_in.eq(issue_any)
        issued = [Signal(name=f"{name}_final{k}_issued") for k in range(len(ops))]
        op_done = [Signal(name=f"{name}_final{k}_done") for k in range(len(ops))]
        op_value = [Signal(acc.width, name=f"{name}_final{k}") for k in range(len(ops))]
        op_now, op_now_value = [], []
        for k in range(len(ops)):
            arrive = final.valid_out & (result_tag == k)
            ready_now = Signal(name=f"{name}_final{k}_ready")
            m.d.comb += ready_now.eq(op_done[k] | arrive)
            with m.If(arrive):
                m.d.sync += [op_done[k].eq(1), op_value[k].eq(final.result)]
            op_now.append(ready_now)
            op_now_value.append(Mux(arrive, final.result, op_value[k]))

        def operand(ref):
            kind, n = ref
            return (leaf_now[n], leaf_value[n]) if kind == "leaf" else (op_now[n], op_now_value[n])

        # The earliest ready addition in program order issues.
        taken = Const(0, 1)
        for k, (left, right) in enumerate(ops):
            (ready_a, value_a), (ready_b, value_b) = operand(left), operand(right)
            can = Signal(name=f"{name}_final{k}_can")
            m.d.comb += can.eq(~issued[k] & ready_a & ready_b & ~taken)
            with m.If(can):
                m.d.comb += [
                    issue.eq(k),
                    issue_any.eq(1),
                    final.a.eq(value_a),
                    final.b.eq(value_b),
                ]
                m.d.sync += issued[k].eq(1)
            taken = taken | can
        root = len(ops) - 1
        q_valid = Signal()
        m.d.comb += q_valid.eq(final.valid_out & (result_tag == root))
        with m.If(clear):
            m.d.sync += [x.eq(0) for x in done + issued + op_done]
        return final.result, q_valid
