"""The operators with valid/ready streams (``amaranth.lib.stream``), for use
outside a statically scheduled datapath: ``i`` carries the operand pair,
``o`` the result, ``latency`` cycles later when nothing stalls, one pair a
cycle. The pipeline registers all hold while the output is not taken (a
global stall: simple, and what an operator inside a unit needs)."""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .fp import operator

__all__ = ["StreamOperator"]


class StreamOperator(wiring.Component):
    """``op`` (``"mul"`` or ``"add"``) in ``fmt`` (operand formats as
    :func:`~iterl2norm.hw.rtl.export.operand_formats` with ``acc_fmt``)."""

    def __init__(self, op: str, fmt, latency: int = 1, acc_fmt=None):
        if not isinstance(latency, int) or isinstance(latency, bool) or latency < 1:
            raise ValueError(f"latency must be an integer >= 1, got {latency!r}")
        self.core = operator(op, fmt, 0, acc_fmt)
        self.latency = latency
        fa, fb = self.core.inputs
        pair = data.StructLayout({"a": fa.width, "b": fb.width})
        super().__init__(
            {"i": In(stream.Signature(pair)), "o": Out(stream.Signature(self.core.fmt.width))}
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.core = core = self.core
        m.d.comb += [core.a.eq(self.i.payload.a), core.b.eq(self.i.payload.b)]
        advance = Signal(name="advance")
        m.d.comb += [advance.eq(~self.o.valid | self.o.ready), self.i.ready.eq(advance)]
        value, valid = core.result, self.i.valid
        for stage in range(self.latency):
            reg, reg_valid = Signal(len(value), name=f"stage{stage}"), Signal(name=f"v{stage}")
            with m.If(advance):
                m.d.sync += [reg.eq(value), reg_valid.eq(valid)]
            value, valid = reg, reg_valid
        m.d.comb += [self.o.payload.eq(value), self.o.valid.eq(valid)]
        return m
