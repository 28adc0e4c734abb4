"""The normalization unit ``iterl2norm_unit``, generated from a
:class:`~iterl2norm.hw.UnitConfig`: its output bits are ``hw.reference``'s
and its latency is ``hw.simulate``'s, cycle for cycle.

This first form covers the paper's L2 normalizer: ``statistics="l2"``
(one pass for q = sum(x^2), one for the output), scalar mode, the adder tree
with at least ``add_latency`` accumulator slots, the methods ``iterl2norm``
(every start, rate and schedule) and ``fisr``, no affine part, a datapath
whose exponent field is the accumulator's (fp32, bf16 into fp32, fp16 or
bf16 alone). Other fields raise a ``ValueError`` naming them.

The datapath, as the model (:mod:`iterl2norm.hw.simulator`) issues it:

- pass 1: a beat of P elements is taken on cycle c and registered; P lane
  multipliers square it (``mul_latency``), an adder tree of log2(P) levels
  (``add_latency`` each) sums the squares, and accumulator slot c mod S adds
  the tree's result (the first S beats load their slots). The beat is also
  written to the vector buffer (``amaranth.lib.memory``, 1024/P words).
- the final sum: the S slots, zero-padded to a power of two, go through a
  pairwise tree on one adder. Each of its additions issues at the first
  cycle both operands are ready, the earlier addition first when two are:
  the model's rule, so its cycles are the model's for every d.
- the scale: q enters :class:`~.rsqrt_unit.RsqrtUnit`, which gives
  r = q^-1/2 = a * 2^-j in the datapath format after the model's cycles.
- pass 2: the buffer is read one word a cycle; P lane multipliers form
  x * r. Rows whose q is zero get zeros, rows whose q is inf or NaN get NaN.

Ports (``amaranth.lib.stream``, valid/ready):

- ``i``: payload ``{d, x}``; ``x`` holds P elements (lane 0 first), ``d`` is
  read from a vector's first beat. ceil(d/P) beats make the vector; lanes
  past d in the last beat are ignored. A first beat with d outside
  64..1024 is dropped and raises ``error`` until the next good first beat.
- ``o``: payload ``{z, last}``, one beat of P outputs a cycle; ``last``
  marks a vector's final beat, whose lanes past d carry zeros. The output
  pass stalls while ``o.ready`` is low (every pipeline register holds).
- ``error``: see ``i``.

The unit takes a new vector once the previous one has left. Latency, as the
model counts it: from the cycle the first beat is taken to the cycle the last
output beat is valid, when the input comes without gaps and ``o.ready`` stays
high.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from ..config import D_MAX, D_MIN, UnitConfig, get_preset
from .fp import FpAdd, FpFormat, FpMul, delayed
from .rsqrt_unit import RsqrtUnit

__all__ = ["NormUnit", "unsupported_fields"]


def unsupported_fields(cfg: UnitConfig) -> list[str]:
    """The fields of ``cfg`` this RTL does not build, as ``name=value``."""
    out = []
    wanted = {
        "statistics": ("l2",),
        "mode": ("scalar",),
        "method": ("iterl2norm", "fisr"),
        "reduction": ("tree",),
        "affine": (False,),
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
        self.rsqrt = RsqrtUnit(
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
        self.buffer_bits = (D_MAX // p) * p * w  # the vector buffer: 1024 elements
        super().__init__(
            {
                "i": In(stream.Signature(self.beat)),
                "o": Out(stream.Signature(self.out_beat)),
                "error": Out(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m, cfg = Module(), self.cfg
        f, acc = self.fmt, self.acc
        p, lm, la = cfg.lanes, cfg.mul_latency, cfg.add_latency
        words = D_MAX // p
        chunk_shape = range(words + 1)
        m.submodules.rsqrt = rsqrt = self.rsqrt

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

        # Pass 1: the beat, registered, lanes past d zeroed.
        x_reg = Signal(data.ArrayLayout(f.width, p))
        x_valid = Signal()
        m.d.sync += x_valid.eq(accept)
        with m.If(accept):
            for lane in range(p):
                inside = taken * p + lane < d_now
                m.d.sync += x_reg[lane].eq(Mux(inside, self.i.payload.x[lane], 0))

        # Squares into the accumulator format, then the adder tree.
        level, valid = [], x_valid
        for lane in range(p):
            sq = FpMul(acc.name, lm, inputs=(f.name, f.name))
            m.submodules[f"square{lane}"] = sq
            m.d.comb += [sq.a.eq(x_reg[lane]), sq.b.eq(x_reg[lane]), sq.valid_in.eq(x_valid)]
            level.append(sq.result)
        valid = delayed(m, x_valid, lm, "squares_valid")
        depth = 0
        while len(level) > 1:
            depth += 1
            nxt = []
            for n in range(0, len(level), 2):
                add = FpAdd(acc.name, la)
                m.submodules[f"tree{depth}_{n // 2}"] = add
                m.d.comb += [add.a.eq(level[n]), add.b.eq(level[n + 1])]
                nxt.append(add.result)
            level = nxt
            valid = delayed(m, valid, la, f"tree{depth}_valid")
        tree_out, tree_valid = level[0], valid

        vector_done = Signal()  # the last output beat leaves this cycle
        q_now, q_valid = self._accumulate(m, tree_out, tree_valid, c_now, first, busy, vector_done)

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

        # Pass 2: one buffer word a cycle from the cycle r is ready; every
        # stage holds while the output is not taken.
        advance = Signal()
        m.d.comb += advance.eq(~self.o.valid | self.o.ready)
        read = buffer.read_port(domain="sync")
        issued = Signal(chunk_shape)
        issuing = Signal()
        m.d.comb += issuing.eq((rsqrt.o.valid & ~out_pass) | (out_pass & (issued != chunks)))
        m.d.comb += [read.addr.eq(Mux(out_pass, issued, 0)), read.en.eq(advance)]
        with m.If(rsqrt.o.valid & ~out_pass):
            m.d.sync += [out_pass.eq(1), issued.eq(1)]
        with m.Elif(out_pass & advance & (issued != chunks)):
            m.d.sync += issued.eq(issued + 1)

        stage_valid, stage_last = Signal(), Signal()
        stage_count = Signal(range(p + 1))  # lanes of the beat inside d
        with m.If(advance):
            m.d.sync += [
                stage_valid.eq(issuing),
                stage_last.eq(Mux(out_pass, issued, 0) + 1 == chunks),
                stage_count.eq(
                    Mux(
                        Mux(out_pass, issued, 0) + 1 == chunks,
                        d_reg - (chunks - 1) * p,
                        p,
                    )
                ),
            ]
        products = []
        for lane in range(p):
            mul = FpMul(f.name, 0)
            m.submodules[f"scale{lane}"] = mul
            m.d.comb += [mul.a.eq(read.data[lane]), mul.b.eq(rsqrt.o.payload)]
            products.append(mul.result)
        nan = Const(f.quiet_nan(), f.width)
        for stage in range(lm):
            regs = [Signal(f.width, name=f"z{stage}_{lane}") for lane in range(p)]
            v, last = Signal(name=f"z{stage}_valid"), Signal(name=f"z{stage}_last")
            count = Signal(range(p + 1), name=f"z{stage}_count")
            with m.If(advance):
                m.d.sync += [r.eq(x) for r, x in zip(regs, products, strict=True)]
                m.d.sync += [v.eq(stage_valid), last.eq(stage_last), count.eq(stage_count)]
            products, stage_valid, stage_last, stage_count = regs, v, last, count
        for lane, z in enumerate(products):
            fixed = Mux(lane >= stage_count, 0, Mux(bad, nan, Mux(empty, 0, z)))
            m.d.comb += self.o.payload.z[lane].eq(fixed)
        m.d.comb += [
            self.o.valid.eq(stage_valid),
            self.o.payload.last.eq(stage_last),
        ]

        # The vector leaves with its last beat; the scale is released then.
        m.d.comb += vector_done.eq(self.o.valid & self.o.ready & stage_last)
        m.d.comb += rsqrt.o.ready.eq(vector_done)
        with m.If(vector_done):
            m.d.sync += [busy.eq(0), out_pass.eq(0), taken.eq(0), issued.eq(0)]
        return m

    def _accumulate(self, m, value, valid, c_now, first, busy, clear):
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

        values = [Signal(acc.width, name=f"slot{n}") for n in range(s)]
        done = [Signal(name=f"slot{n}_done") for n in range(s)]
        m.submodules.accumulator = adder = FpAdd(acc.name, la)
        tag = delayed(m, slot, la, "acc_tag")
        tag_final = delayed(m, final_now, la, "acc_final")
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
            ready_now = Signal(name=f"slot{n}_ready")
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

        m.submodules.final = final = FpAdd(acc.name, la)
        issue = Signal(range(len(ops)), name="final_issue")
        issue_any = Signal(name="final_issue_any")
        result_tag = delayed(m, issue, la, "final_tag")
        m.d.comb += final.valid_in.eq(issue_any)
        issued = [Signal(name=f"final{k}_issued") for k in range(len(ops))]
        op_done = [Signal(name=f"final{k}_done") for k in range(len(ops))]
        op_value = [Signal(acc.width, name=f"final{k}") for k in range(len(ops))]
        op_now, op_now_value = [], []
        for k in range(len(ops)):
            arrive = final.valid_out & (result_tag == k)
            ready_now = Signal(name=f"final{k}_ready")
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
            can = Signal(name=f"final{k}_can")
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
