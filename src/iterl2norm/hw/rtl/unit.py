"""The normalization unit ``iterl2norm_unit``, generated from a
:class:`~iterl2norm.hw.UnitConfig`: its output bits are ``hw.reference``'s
and its latency is ``hw.simulate``'s, cycle for cycle.

It builds ``statistics="l2"`` (the paper's L2 normalizer: one pass for
q = sum(x^2), one for the output), ``"two-pass"`` (LayerNorm: sum(x) and
sum(x^2) in the same pass) and ``"three-pass"`` (the mean and the largest
exponent k, then sum((y 2^-k)^2) over a second read of the buffer), with or
without the affine part, with the adder tree or one accumulator per lane
and any number of accumulator slots, the methods ``iterl2norm`` (every
start, rate and schedule), ``fisr`` and ``exact`` (a square root, then a
divider per lane), on every datapath the model has (fp32; bf16 or fp16 into
fp32; fp16 or bf16 alone). :func:`unsupported_fields` names what it does
not build (vector mode; an fp64 accumulator), and why.

Its control comes from the model's schedule (:mod:`iterl2norm.hw.model.schedule`):
the scalar graphs as the model places them (:class:`~.static.StaticSchedule`),
the reduction's order, and, where operands arrive on cycles that depend on
d and the input's gaps, the model's issue rule applied at run time.

The datapath, as the model (:mod:`iterl2norm.hw.model.simulator`) issues it:

- pass 1: a beat of P elements is taken on cycle c and registered; P lane
  multipliers square it (``mul_latency``), an adder tree of log2(P) levels
  (``add_latency`` each) sums the squares (or, one accumulator per lane,
  each lane its own), and accumulator slot c mod S adds the result (the
  first S beats load their slots; with S below ``add_latency`` an arrival
  waits in a queue until its slot's previous sum is back). The beat is also
  written to the vector buffer (``amaranth.lib.memory``, 1024/P words).
  Two-pass statistics sum the elements, widened to the accumulator format,
  through a second tree and accumulator beside the first.
- the final sum: the slots (lane-major), zero-padded to a power of two, go
  through a pairwise tree on one adder. Each of its additions issues at the
  first cycle both operands are ready, the earlier addition first when two
  are: the model's rule, so its cycles are the model's for every d.
- two-pass: the statistics multiplier forms s1 s1 as s1 arrives, the mean
  s1 (1/d) the cycle after, then (s1 s1)(1/d), with 1/d (rounded once) read
  from a table of d = 64..1024; the statistics adder forms
  q = s2 - (s1 s1)(1/d): ``statistics_schedule``'s cycles.
- three-pass: pass 1 sums x (as two-pass does) and finds k, the largest
  element's exponent (a max tree over the magnitudes' bit patterns, one
  level a cycle, and a running maximum); the mean s1 (1/d) is one product.
  From the cycle it is ready the buffer is read again: y = x - mean on the
  output pass's P adders, then P multipliers form (y 2^-k)^2 with -2k added
  to the product's exponent (rounded once), into the second tree and
  accumulator: q.
- the scale: q enters :class:`~.rsqrt_unit.RsqrtUnit`, which gives
  r = q^-1/2 = a * 2^-j in the datapath format after the model's cycles
  (fp16 into fp32: a and j apart, 2^-j joining the lanes' offset);
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

from collections import defaultdict
from dataclasses import dataclass
from fractions import Fraction

import torch
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..._arith import Arithmetic
from ...formats import encode
from ..model import schedule
from ..model.config import D_MAX, D_MIN, UnitConfig, get_preset
from .fp import SUPPORTED, FpAdd, FpDiv, FpFormat, FpMul, delayed, leading_zeros, widen
from .rsqrt_unit import RsqrtUnit
from .sqrt_unit import SqrtUnit
from .static import StaticSchedule, negated, schedule_counter

__all__ = ["NormUnit", "unsupported_fields"]


def unsupported_fields(cfg: UnitConfig) -> list[str]:
    """The fields of ``cfg`` this RTL does not build, as ``name=value``, each
    with the reason (docs/HARDWARE.md, "What the RTL does not build")."""
    out = []
    if cfg.mode != "scalar":
        out.append(
            f"mode={cfg.mode!r} (vector mode reduces and updates the whole vector every "
            "step: the model's comparison, not a unit to build)"
        )
    if cfg.acc_fmt not in SUPPORTED:
        out.append(f"acc_fmt={cfg.acc_fmt!r} (the RTL's operators are {', '.join(SUPPORTED)})")
    return out


# What a beat read from the buffer carries down the output pipeline: valid (an
# output beat), square (a pass-2 beat, three-pass), the vector's last beat, the
# lanes inside d and its buffer word.
def tag_layout(lanes: int, words: int) -> data.StructLayout:
    return data.StructLayout(
        {"valid": 1, "square": 1, "last": 1, "count": range(lanes + 1), "word": range(words)}
    )


class _Pipeline:
    """The output pass's lanes, stage by stage. Every register holds while
    ``advance`` is low (the output not taken); ``trail[k]`` is the beat's tag
    after k register levels, ``now`` the lanes' values at the last one."""

    def __init__(self, m: Module, advance, lanes: list, tag):
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
            tag = Signal(prev.shape(), name=f"{name}{level}_tag")
            with m.If(self.advance):
                m.d.sync += [r.eq(v) for r, v in zip(regs, values, strict=True)]
                m.d.sync += tag.eq(prev)
            values = regs
            self.trail.append(tag)
        self.now = values


def _shift_bits(f: FpFormat) -> int:
    """Width of the pre-scale offsets -k and -2k: |k| is at most the bias
    plus the mantissa bits (the smallest subnormal's exponent)."""
    return (2 * (f.bias + f.mbits)).bit_length() + 1


@dataclass
class _Input:
    """The input side's control signals (see :meth:`NormUnit._input`)."""

    first: Signal  # the first beat of a vector, this cycle
    accept: Signal  # a beat of the vector, this cycle
    busy: Signal  # a vector is in the unit, from its first beat to its last output
    taken: Signal  # beats taken so far
    c_now: Signal  # C = ceil(d / P), from the first beat's cycle on
    d_now: Signal  # d, likewise
    chunks: Signal  # C, registered
    d_reg: Signal  # d, registered
    done: Signal  # the last output beat leaves this cycle


@dataclass
class _AccumulatorIssue:
    """The accumulator's addition this cycle: its entry (the lanes' values,
    the slot, whether it is the slot's last) and valid; with a queue, each
    slot's busy flag and the slot-returns-now signal to drive."""

    entry: Signal
    valid: Signal
    busy: list | None = None
    returning: Signal | None = None

    @property
    def slot(self):
        return self.entry.slot

    @property
    def final(self):
        return self.entry.final

    @property
    def values(self):
        return self.entry.values


class NormUnit(wiring.Component):
    """The normalization unit of ``cfg`` (a :class:`UnitConfig` or a preset name).

    ``trace=True`` adds a simulation probe: :attr:`trace`, one signal per unit
    of the model (``hw.simulate(..., trace=True)``'s names) counting the
    operations it issues each cycle, for comparing the two schedules cycle by
    cycle. It drives no port and costs no gates."""

    def __init__(self, cfg, *, trace: bool = False):
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
                cfg.fmt,
                cfg.acc_fmt,
                exp_latency=cfg.exp_latency,
                sqrt_latency=cfg.sqrt_latency,
                trace=trace,
            )
        else:
            self.scalar = RsqrtUnit(
                cfg.fmt,
                cfg.iteration,
                mul_latency=cfg.mul_latency,
                add_latency=cfg.add_latency,
                exp_latency=cfg.exp_latency,
                q_fmt=cfg.acc_fmt,
                trace=trace,
                # fp16 with fp32 sums: r = a 2^-j may lie outside fp16, so 2^-j
                # joins the lanes' exponent offset instead.
                unscaled=self.fmt.ebits != self.acc.ebits,
            )
        p, w = cfg.lanes, self.fmt.width
        self.beat = data.StructLayout({"d": range(D_MAX + 1), "x": data.ArrayLayout(w, p)})
        self.out_beat = data.StructLayout({"z": data.ArrayLayout(w, p), "last": 1})
        self.params_beat = data.StructLayout(
            {"first": 1, "gamma": data.ArrayLayout(w, p), "beta": data.ArrayLayout(w, p)}
        )
        self.buffer_bits = (D_MAX // p) * p * w  # the vector buffer: 1024 elements
        self.trace = None
        if trace:
            units = schedule.units(cfg).values()
            self.trace = {u.name: Signal(range(u.count + 1), name=f"trace_{u.name}") for u in units}
        ports = {
            "i": In(stream.Signature(self.beat)),
            "o": Out(stream.Signature(self.out_beat)),
            "error": Out(1),
        }
        if cfg.affine:
            ports["params"] = In(stream.Signature(self.params_beat))
        super().__init__(ports)

    # The whole unit ------------------------------------------------------------------

    def elaborate(self, platform) -> Module:
        m, cfg = Module(), self.cfg
        m.submodules["sqrt" if cfg.method == "exact" else "rsqrt"] = self.scalar
        self._issued = defaultdict(list)  # model unit -> this cycle's issue counts
        inp = self._input(m)
        buffer = Memory(
            shape=data.ArrayLayout(self.fmt.width, cfg.lanes), depth=D_MAX // cfg.lanes, init=[]
        )
        m.submodules.buffer = buffer
        write = buffer.write_port()
        m.d.comb += [
            write.addr.eq(inp.taken),
            write.data.eq(self.i.payload.x),
            write.en.eq(inp.accept),
        ]
        x, x_valid, x_count = self._first_pass_beat(m, inp)
        q, q_valid, mean, mean_ready, k = self._statistics(m, inp, x, x_valid, x_count)
        # Every stage of the output pipeline holds while the output is not taken.
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        tag, read_data = self._reads(m, inp, buffer, advance, mean_ready)
        pipe = _Pipeline(m, advance, [read_data[lane] for lane in range(cfg.lanes)], tag)
        if mean is not None:  # y = x - mean, rounded once to the datapath
            self._lanes_issue("lane.sub", pipe.trail[-1], advance, passes=("valid", "square"))
            sub = lambda: FpAdd(self.fmt.name, 0, inputs=(self.fmt.name, self.acc.name))  # noqa: E731
            pipe.stage("centre", sub, lambda lane: negated(mean, self.acc.width), cfg.add_latency)
        if k is not None:  # pass 2: sum((y 2^-k)^2), lanes past d as zeros
            at = pipe.trail[-1]
            inside = [Mux(lane < at.count, y, 0) for lane, y in enumerate(pipe.now)]
            q, q_valid = self._squares(m, inp, inside, at.square, at.count, -2 * k)
        empty, bad = self._scalar_unit(m, q, q_valid)
        self._output(m, inp, pipe, k, empty, bad, advance)
        self._drive_trace(m)
        return m

    def _input(self, m) -> _Input:
        """The input stream: a vector's first beat (with a d in range) starts it;
        ceil(d / P) beats make it; a bad first beat raises ``error``."""
        p = self.cfg.lanes
        chunk_shape = range(D_MAX // p + 1)
        inp = _Input(
            first=Signal(name="first"),
            accept=Signal(name="accept"),
            busy=Signal(name="busy"),
            taken=Signal(chunk_shape, name="taken"),
            c_now=Signal(chunk_shape, name="c_now"),
            d_now=Signal(range(D_MAX + 1), name="d_now"),
            chunks=Signal(chunk_shape, name="chunks"),
            d_reg=Signal(range(D_MAX + 1), name="d_reg"),
            done=Signal(name="vector_done"),
        )
        loading, error = Signal(name="loading"), Signal(name="error_flag")
        m.d.comb += self.error.eq(error)
        d_in = self.i.payload.d
        d_ok = (d_in >= D_MIN) & (d_in <= D_MAX)
        chunks_in = Signal(chunk_shape)
        m.d.comb += chunks_in.eq((d_in + (p - 1)) >> (p.bit_length() - 1))
        m.d.comb += self.i.ready.eq(~inp.busy | loading)
        beat = self.i.valid & self.i.ready
        m.d.comb += [
            inp.first.eq(beat & ~inp.busy & d_ok),
            inp.accept.eq(inp.first | (beat & inp.busy)),
            inp.c_now.eq(Mux(inp.first, chunks_in, inp.chunks)),
            inp.d_now.eq(Mux(inp.first, d_in, inp.d_reg)),
        ]
        with m.If(beat & ~inp.busy & ~d_ok):
            m.d.sync += error.eq(1)
        with m.If(inp.first):
            m.d.sync += [
                inp.busy.eq(1),
                inp.chunks.eq(chunks_in),
                inp.d_reg.eq(d_in),
                error.eq(0),
            ]
        with m.If(inp.accept):
            m.d.sync += inp.taken.eq(inp.taken + 1)
            with m.If(inp.taken + 1 == inp.c_now):
                m.d.sync += loading.eq(0)
            with m.Elif(inp.first):
                m.d.sync += loading.eq(1)
        # The vector leaves with its last beat.
        with m.If(inp.done):
            m.d.sync += [inp.busy.eq(0), inp.taken.eq(0)]
        self._issued["read"].append(inp.accept)
        return inp

    def _first_pass_beat(self, m, inp: _Input):
        """Pass 1's beat, registered, lanes past d zeroed: (lanes, valid, the
        count of lanes inside d)."""
        f, p = self.fmt, self.cfg.lanes
        x = Signal(data.ArrayLayout(f.width, p), name="x_reg")
        x_valid = Signal(name="x_valid")
        x_count = Signal(range(p + 1), name="x_count")
        m.d.sync += x_valid.eq(inp.accept)
        with m.If(inp.accept):
            for lane in range(p):
                inside = inp.taken * p + lane < inp.d_now
                m.d.sync += x[lane].eq(Mux(inside, self.i.payload.x[lane], 0))
            last = inp.taken + 1 == inp.c_now
            m.d.sync += x_count.eq(Mux(last, inp.d_now - inp.taken * p, p))
        return [x[lane] for lane in range(p)], x_valid, x_count

    # Statistics -----------------------------------------------------------------------

    def _statistics(self, m, inp, x, x_valid, x_count):
        """Pass 1's statistics and the scalar operations after them:
        (q, q valid, mean, mean ready, k); three-pass gives q = None (pass 2
        makes it) and k, the largest exponent; l2 no mean."""
        cfg, f, acc = self.cfg, self.fmt, self.acc
        s2 = s2_valid = None
        if cfg.statistics != "three-pass":  # sum(x^2), from the beat
            s2, s2_valid = self._squares(m, inp, x, x_valid, x_count, None)
        if cfg.statistics == "l2":
            return s2, s2_valid, None, None, None
        widened = [widen(m, f, acc, value, f"x{lane}") for lane, value in enumerate(x)]
        s1, s1_valid = self._reduction(m, inp, widened, x_valid, "sum")
        sources = {"s1": (0, s1), "inv_d": (None, self._inverse_d(m, inp.d_reg))}
        if s2 is not None:
            sources["s2"] = (cfg.mul_latency, s2)
        issues = schedule.statistics_schedule(cfg.statistics, cfg.mul_latency, cfg.add_latency)
        m.submodules.stats_mul = mul = FpMul(acc.name, cfg.mul_latency)
        blocks = {"mul": mul}
        if cfg.statistics == "two-pass":
            m.submodules.stats_add = blocks["add"] = FpAdd(acc.name, cfg.add_latency)
        cycle, at = schedule_counter(m, "stats", s1_valid, max(x.ready for x in issues))
        tail = StaticSchedule(
            m,
            "stats",
            issues,
            cycle=cycle,
            write_at=at,
            blocks=blocks,
            sources=sources,
            width=acc.width,
        )
        self._issued["stats.mul"].append(tail.issues_on("mul", at))
        if "add" in blocks:
            self._issued["stats.add"].append(tail.issues_on("add", at))
        mean = tail.value("mean")
        if cfg.statistics == "two-pass":  # sum(x) beside sum(x^2), from the same beats
            return tail.value("q"), tail.strobe("q"), mean, None, None
        # Three-pass: the mean and the largest exponent now, the squares in pass 2.
        return (
            None,
            None,
            mean,
            tail.strobe("mean"),
            self._largest_exponent(m, x, x_valid, inp.first),
        )

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

    def _largest_exponent(self, m, x, x_valid, first):
        """k = floor(log2 max |x|) over the vector (0 for a zero vector), from
        the elements' magnitudes: their bit patterns order them (inf and NaN
        above every finite value; those rows come out NaN whatever k is). A
        max tree of one level a cycle, then a running maximum."""
        f = self.fmt
        level = [value[: f.width - 1] for value in x]
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

    def _squares(self, m, inp, values, valid, count, shift):
        """sum(v^2) (times 2^shift, three-pass) over the beats of ``values``
        (P lanes, ``valid`` a beat of ``count`` lanes inside d): P multipliers
        into the accumulator format, then the reduction; (sum, valid)."""
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
        self._issued["lane.sq"].append(Mux(valid, count, 0))
        squares_valid = delayed(m, valid, lm, "squares_valid")
        return self._reduction(m, inp, squares, squares_valid, "sq")

    # The reduction (model.schedule's order) --------------------------------------------

    def _reduction(self, m, inp, leaves, valid, stream):
        """The sum of ``leaves`` (P values a beat, ``valid``) over the vector:
        the lane tree (``reduction="tree"``) or one accumulator per lane, the
        slots, the final tree; (sum, valid)."""
        if self.cfg.reduction == "tree":
            leaves, valid = self._lane_tree(m, leaves, valid, stream)
        return self._accumulate(m, inp, leaves, valid, stream)

    def _lane_tree(self, m, leaves, valid, stream):
        """A pairwise adder tree, one level per ``add_latency``: ([sum], valid)."""
        la, p = self.cfg.add_latency, self.cfg.lanes
        results, level_valid, at_level = [], {1: valid}, defaultdict(int)
        for left, right, level in schedule.pairwise(p):
            if level not in level_valid:
                level_valid[level] = delayed(
                    m, level_valid[level - 1], la, f"{stream}_tree{level - 1}_valid"
                )
            a, b = ((leaves if kind == "leaf" else results)[n] for kind, n in (left, right))
            add = FpAdd(self.acc.name, la)
            m.submodules[f"{stream}_tree{level}_{at_level[level]}"] = add
            at_level[level] += 1
            m.d.comb += [add.a.eq(a), add.b.eq(b)]
            results.append(add.result)
        if not results:  # one lane: no tree
            return leaves, valid
        for level in level_valid:
            self._issued[f"{stream}.tree{level}"].append(Mux(level_valid[level], p >> level, 0))
        out_valid = delayed(m, level_valid[max(level_valid)], la, f"{stream}_tree_valid")
        return [results[-1]], out_valid

    def _accumulate(self, m, inp, lanes, valid, stream):
        """Each lane's accumulator slots, then the final tree on one adder:
        (the sum, valid). Every flag holds until the vector leaves, so no
        addition issues twice."""
        cfg, acc = self.cfg, self.acc
        s, la = cfg.slots, cfg.add_latency
        arrivals = Signal(range(D_MAX + 1), name=f"{stream}_arrivals")  # beats absorbed
        slot = Signal(range(max(s, 2)), name=f"{stream}_slot")  # arrivals mod S
        with m.If(inp.first):
            m.d.sync += [arrivals.eq(0), slot.eq(0)]
        with m.If(valid):
            m.d.sync += [arrivals.eq(arrivals + 1), slot.eq(Mux(slot == s - 1, 0, slot + 1))]
        final_now = Signal(name=f"{stream}_final_now")  # this arrival is its slot's last
        m.d.comb += final_now.eq(arrivals + s >= inp.c_now)
        loading = arrivals < s  # the first S arrivals load their slots: no addition
        live = inp.busy | inp.first
        add = self._accumulator_issue(m, inp, lanes, valid & ~loading, slot, final_now, stream)
        tag = delayed(m, add.slot, la, f"{stream}_acc_tag")
        tag_final = delayed(m, add.final, la, f"{stream}_acc_final")
        returning = []  # per lane: an addition's result arrives this cycle
        leaves = []  # (ready now, value now) of each slot, lane-major
        done_flags = []
        for lane, value in enumerate(lanes):
            name = f"{stream}_acc{lane}" if len(lanes) > 1 else f"{stream}_accumulator"
            m.submodules[name] = adder = FpAdd(acc.name, la)
            m.d.comb += adder.valid_in.eq(add.valid)
            out_valid = adder.valid_out
            returning.append(out_valid)
            values = [Signal(acc.width, name=f"{name}_slot{n}") for n in range(s)]
            done = [Signal(name=f"{name}_slot{n}_done") for n in range(s)]
            held = Signal(acc.width, name=f"{name}_held")  # the slot's value as an add reads it
            m.d.comb += held.eq(values[0])
            for n in range(s):
                with m.If(add.slot == n):
                    m.d.comb += held.eq(Mux(out_valid & (tag == n), adder.result, values[n]))
            m.d.comb += [adder.a.eq(held), adder.b.eq(add.values[lane])]
            for n in range(s):
                load_now = valid & loading & (slot == n)
                add_now = out_valid & (tag == n)
                with m.If(load_now):
                    m.d.sync += values[n].eq(value)
                with m.If(add_now):
                    m.d.sync += values[n].eq(adder.result)
                ready_now = Signal(name=f"{name}_slot{n}_ready")
                empty_slot = inp.c_now <= n  # no beat lands in it: zero from the start
                m.d.comb += ready_now.eq(
                    live & (done[n] | (load_now & final_now) | (add_now & tag_final) | empty_slot)
                )
                with m.If(ready_now):
                    m.d.sync += done[n].eq(1)
                now = Mux(load_now, value, Mux(add_now, adder.result, values[n]))
                leaves.append((ready_now, Mux(empty_slot, 0, now)))
            done_flags += done
        if add.busy is not None:  # a slot's addition in flight: the next one waits
            back = returning[0]  # the lanes run in lockstep
            m.d.comb += add.returning.eq(back & (tag == add.slot))
            for n, busy in enumerate(add.busy):
                with m.If(add.valid & (add.slot == n)):
                    m.d.sync += busy.eq(1)
                with m.Elif(back & (tag == n)):
                    m.d.sync += busy.eq(0)
        self._issued[f"{stream}.acc"].append(Mux(add.valid, len(lanes), 0))
        width = schedule.padded_width(len(leaves))
        leaves += [(live, Const(0, acc.width))] * (width - len(leaves))  # zero padding
        with m.If(inp.done):
            m.d.sync += [x.eq(0) for x in done_flags]
        return self._final_tree(m, inp, leaves, done_flags, stream)

    def _accumulator_issue(self, m, inp, lanes, adding, slot, final, stream):
        """The accumulator's additions, as the model issues them: an arrival
        is added to its slot on the cycle it arrives, or, with fewer slots than
        the adder's latency, once the slot's previous addition is back: the
        arrivals wait in a queue, in order, one issued a cycle."""
        cfg, acc = self.cfg, self.acc
        entry = data.StructLayout(
            {
                "values": data.ArrayLayout(acc.width, len(lanes)),
                "slot": range(max(cfg.slots, 2)),
                "final": 1,
            }
        )
        arriving = Signal(entry, name=f"{stream}_arriving")
        m.d.comb += [arriving.slot.eq(slot), arriving.final.eq(final)]
        m.d.comb += [arriving.values[lane].eq(value) for lane, value in enumerate(lanes)]
        issue = _AccumulatorIssue(
            Signal(entry, name=f"{stream}_add"), Signal(name=f"{stream}_add_valid")
        )
        if cfg.slots >= cfg.add_latency:  # every slot is free again by its next arrival
            m.d.comb += [issue.entry.eq(arriving), issue.valid.eq(adding)]
            return issue
        depth = D_MAX // cfg.lanes  # no more than a vector's beats wait
        m.submodules[f"{stream}_queue"] = queue = Memory(shape=entry, depth=depth, init=[])
        write, read = queue.write_port(), queue.read_port(domain="comb")
        head, tail = (Signal(range(depth), name=f"{stream}_queue_{n}") for n in ("head", "tail"))
        count = Signal(range(depth + 1), name=f"{stream}_queue_count")
        issue.busy = [Signal(name=f"{stream}_slot{n}_busy") for n in range(cfg.slots)]
        waiting = count != 0
        m.d.comb += [read.addr.eq(head), issue.entry.eq(Mux(waiting, read.data, arriving))]
        free = Signal(name=f"{stream}_slot_free")
        m.d.comb += free.eq(~Cat(*issue.busy).bit_select(issue.entry.slot, 1))
        # An addition whose slot's result returns this cycle reads it through the
        # adder's bypass (``held``): the slot is free on that cycle.
        returning = Signal(name=f"{stream}_slot_back")
        m.d.comb += issue.valid.eq((waiting | adding) & (free | returning))
        issue.returning = returning
        push = adding & (waiting | ~issue.valid)
        pop = waiting & issue.valid
        m.d.comb += [write.addr.eq(tail), write.data.eq(arriving), write.en.eq(push)]
        step = lambda ptr: Mux(ptr == depth - 1, 0, ptr + 1)  # noqa: E731
        with m.If(push):
            m.d.sync += tail.eq(step(tail))
        with m.If(pop):
            m.d.sync += head.eq(step(head))
        m.d.sync += count.eq(count + push - pop)
        with m.If(inp.first):
            m.d.sync += [head.eq(0), tail.eq(0), count.eq(0)]
        return issue

    def _final_tree(self, m, inp, leaves, done_flags, stream):
        """The pairwise tree over the slots (:func:`~..model.schedule.pairwise`)
        on one adder, each addition issued as the model's rule says: at the
        first cycle both its operands are ready, the earlier addition in
        program order first when two are. The operands' ready cycles depend
        on d and on the input's gaps, so the rule runs here, on flags."""
        acc, la = self.acc, self.cfg.add_latency
        ops = schedule.pairwise(len(leaves))
        if not ops:  # one slot: the sum is the slot
            ready, value = leaves[0]
            q_valid = Signal(name=f"{stream}_sum_valid")
            m.d.comb += q_valid.eq(ready & ~done_flags[0])
            return value, q_valid
        m.submodules[f"{stream}_final"] = final = FpAdd(acc.name, la)
        issue = Signal(range(len(ops)), name=f"{stream}_final_issue")
        issue_any = Signal(name=f"{stream}_final_issue_any")
        result_tag = delayed(m, issue, la, f"{stream}_final_tag")
        m.d.comb += final.valid_in.eq(issue_any)
        issued = [Signal(name=f"{stream}_final{k}_issued") for k in range(len(ops))]
        op_done = [Signal(name=f"{stream}_final{k}_done") for k in range(len(ops))]
        op_value = [Signal(acc.width, name=f"{stream}_final{k}") for k in range(len(ops))]
        results = []  # (ready now, value now) of each addition's result
        for k in range(len(ops)):
            arrive = final.valid_out & (result_tag == k)
            ready_now = Signal(name=f"{stream}_final{k}_ready")
            m.d.comb += ready_now.eq(op_done[k] | arrive)
            with m.If(arrive):
                m.d.sync += [op_done[k].eq(1), op_value[k].eq(final.result)]
            results.append((ready_now, Mux(arrive, final.result, op_value[k])))
        taken = Const(0, 1)
        for k, (left, right, _level) in enumerate(ops):
            (ready_a, value_a), (ready_b, value_b) = (
                (leaves if kind == "leaf" else results)[n] for kind, n in (left, right)
            )
            can = Signal(name=f"{stream}_final{k}_can")
            m.d.comb += can.eq(~issued[k] & ready_a & ready_b & ~taken)
            with m.If(can):
                m.d.comb += [issue.eq(k), issue_any.eq(1), final.a.eq(value_a), final.b.eq(value_b)]
                m.d.sync += issued[k].eq(1)
            taken = taken | can
        self._issued[f"{stream}.final"].append(issue_any)
        q_valid = Signal(name=f"{stream}_sum_valid")
        m.d.comb += q_valid.eq(final.valid_out & (result_tag == len(ops) - 1))
        with m.If(inp.done):
            m.d.sync += [x.eq(0) for x in issued + op_done]
        return final.result, q_valid

    # The buffer's reads and the output pass ----------------------------------------------

    def _reads(self, m, inp, buffer, advance, mean_ready):
        """The buffer read one word a cycle: pass 2 (three-pass) from the cycle
        the mean is ready, the output pass from the cycle the scale is.
        Returns the tag of the beat being read (registered with its data) and
        the read port's data."""
        p, words = self.cfg.lanes, D_MAX // self.cfg.lanes
        read = buffer.read_port(domain="sync")
        scale_ready = self.scalar.o.valid
        issued = Signal(range(words + 1), name="read_issued")  # words read in this pass
        reading, squaring = Signal(name="reading"), Signal(name="squaring")
        address = Signal(range(words), name="read_address")
        more = issued != inp.chunks
        # The FSM holds the pass; what it drives each cycle is decoded from its
        # state outside it (a plain expression, defined from time zero in a
        # 4-state simulator too).
        with m.FSM(name="reads") as fsm:
            with m.State("idle"):  # word 0 is read on the cycle a pass starts
                if mean_ready is not None:
                    with m.If(mean_ready):
                        m.d.sync += issued.eq(1)
                        m.next = "square"
                with m.If(scale_ready):
                    m.d.sync += issued.eq(1)
                    m.next = "output"
            if mean_ready is not None:
                with m.State("square"):  # pass 2: the squares of y
                    with m.If(more):
                        m.d.sync += issued.eq(issued + 1)
                    with m.Else():
                        m.next = "idle"
            with m.State("output"):
                with m.If(advance & more):
                    m.d.sync += issued.eq(issued + 1)
                with m.If(inp.done):
                    m.d.sync += issued.eq(0)
                    m.next = "idle"
        idle = fsm.ongoing("idle")
        in_square = fsm.ongoing("square") if mean_ready is not None else Const(0, 1)
        starting_square = idle & mean_ready if mean_ready is not None else Const(0, 1)
        m.d.comb += [
            squaring.eq(starting_square | (in_square & more)),
            reading.eq((idle & scale_ready) | (fsm.ongoing("output") & more)),
            address.eq(Mux(idle, 0, issued)),
        ]
        m.d.comb += [read.addr.eq(address), read.en.eq(advance)]
        self._issued["read"].append((reading | squaring) & advance)
        last_now = address + 1 == inp.chunks
        tag = Signal(tag_layout(p, words), name="read_tag")
        with m.If(advance):
            m.d.sync += [
                tag.valid.eq(reading),
                tag.square.eq(squaring),
                tag.last.eq(last_now),
                tag.count.eq(Mux(last_now, inp.d_reg - (inp.chunks - 1) * p, p)),
                tag.word.eq(address),
            ]
        return tag, read.data

    def _scalar_unit(self, m, q, q_valid):
        """q into the scalar unit, and the row's class: (q <= 0, q inf or NaN)."""
        acc = self.acc
        m.d.comb += [self.scalar.i.payload.eq(q), self.scalar.i.valid.eq(q_valid)]
        empty, bad = Signal(name="row_empty"), Signal(name="row_bad")
        with m.If(q_valid):
            all_ones = q[acc.mbits : acc.mbits + acc.ebits] == (1 << acc.ebits) - 1
            zero = q[: acc.width - 1] == 0
            m.d.sync += [empty.eq(zero | q[acc.width - 1]), bad.eq(all_ones)]  # NaN wins
        return empty, bad

    def _output(self, m, inp, pipe, k, empty, bad, advance):
        """The output pass: y r 2^-j (times 2^-k, three-pass) rounded once, or
        (exact) y 2^-(k + j) / sqrt(qn); the fixed rows; the affine part; the
        output stream. The scale is released as the vector's last beat leaves."""
        cfg, f, acc = self.cfg, self.fmt, self.acc
        scalar = self.scalar
        # The lanes' exponent offset: -(k + j) where j comes apart from the scale
        # (the exact method, fp16 into fp32), -k (three-pass) or none.
        if cfg.method == "exact" or scalar.unscaled:
            j = scalar.o.payload.j
            offset = -j if k is None else -(k + j)
            bits = max(_shift_bits(f), acc.exp_shape.width) + 1
        else:
            offset, bits = (None, None) if k is None else (-k, _shift_bits(f))

        def offset_by(op):
            if offset is not None:
                m.d.comb += op.shift.eq(offset)
            return op

        if cfg.method == "exact":  # y 2^-(k + j) / sqrt(qn)
            self._lanes_issue("lane.div", pipe.trail[-1], advance)
            divide = lambda: offset_by(FpDiv(f.name, 0, shift_bits=bits))  # noqa: E731
            pipe.stage("divide", divide, lambda lane: scalar.o.payload.root, cfg.div_latency)
        else:  # y r (2^-k), or y a 2^-(k + j), rounded once
            factor = scalar.o.payload.a if scalar.unscaled else scalar.o.payload
            self._lanes_issue("lane.mul", pipe.trail[-1], advance)
            scale = lambda: offset_by(FpMul(f.name, 0, shift_bits=bits))  # noqa: E731
            pipe.stage("scale", scale, lambda lane: factor, cfg.mul_latency)
        # The rows with no direction get zeros, the non-finite rows NaN (then
        # the affine part, as the model has it).
        nan = Const(f.quiet_nan(), f.width)
        pipe.now = [Mux(bad, nan, Mux(empty, 0, z)) for z in pipe.now]
        if cfg.affine:
            gamma, beta = self._params(m, inp.busy)
            for name, memory, operator, latency in (
                ("gamma", gamma, FpMul, cfg.mul_latency),
                ("beta", beta, FpAdd, cfg.add_latency),
            ):
                port = memory.read_port(domain="sync")
                # A word's constants are read as the beat enters the stage
                # before theirs, so they arrive with it.
                m.d.comb += [port.addr.eq(pipe.trail[-2].word), port.en.eq(advance)]
                self._lanes_issue(
                    f"affine.{'mul' if name == 'gamma' else 'add'}", pipe.trail[-1], advance
                )
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
        m.d.comb += inp.done.eq(self.o.valid & self.o.ready & end.last)
        m.d.comb += scalar.o.ready.eq(inp.done)

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

    # The trace probe --------------------------------------------------------------------

    def _lanes_issue(self, unit: str, tag, advance, passes=("valid",)) -> None:
        """A lane stage issues its beat's lanes inside d as the beat enters it."""
        entering = Cat(*(getattr(tag, name) for name in passes)).any() & advance
        self._issued[unit].append(Mux(entering, tag.count, 0))

    def _drive_trace(self, m) -> None:
        """The trace probe: each model unit's issue counts this cycle, summed."""
        if self.trace is None:
            return
        for unit, counts in getattr(self.scalar, "trace", {}).items():
            self._issued[unit].append(counts)
        unknown = set(self._issued) - set(self.trace)
        if unknown:
            raise AssertionError(f"the RTL issues on units the model lacks: {sorted(unknown)}")
        for unit, signal in self.trace.items():
            counts = self._issued.get(unit, [])
            m.d.comb += signal.eq(sum(counts) if counts else 0)
