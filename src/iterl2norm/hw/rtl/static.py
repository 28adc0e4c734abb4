"""A static schedule in hardware: the model's placed operations
(:class:`iterl2norm.hw.model.schedule.Issue`, cycles counted from a start
event) as a cycle counter, the blocks' operand multiplexers and one register
per value. An operation issued on the cycle its operand appears reads it from
the producing block's output (a bypass), later ones from the register."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal

__all__ = ["StaticSchedule", "negated"]


def negated(bits, width: int):
    """A floating-point value with its sign bit flipped."""
    return Cat(bits[: width - 1], ~bits[width - 1])


class StaticSchedule:
    """``issues`` run from the cycle ``start`` is high (cycle 0), once per
    start, on ``blocks`` (``{"mul": ..., "add": ...}`` with ``a``, ``b`` and
    ``result``; a ``"sub"`` runs on the adder with b's sign flipped).
    ``sources`` gives the inputs: ``{name: (ready cycle, signal)}``, a ready
    cycle of ``None`` for a value that is there throughout. Every value is
    single-assignment, and ``width`` bits wide.

    After construction, :meth:`value` gives a value from its ready cycle on,
    :meth:`strobe` that cycle, and :meth:`issues_on` a block's issue count
    this cycle (for the trace)."""

    def __init__(self, m: Module, name: str, issues, start, blocks: dict, sources: dict, width):
        self.m, self.issues = m, list(issues)
        last = max([x.ready for x in self.issues] + [r for r, _ in sources.values() if r])
        self.cycle = Signal(range(last + 1), name=f"{name}_cycle")
        running = Signal(name=f"{name}_running")
        with m.If(start):
            m.d.sync += [self.cycle.eq(1), running.eq(1)]
        with m.Elif(running):
            m.d.sync += self.cycle.eq(self.cycle + 1)
            with m.If(self.cycle == last):
                m.d.sync += running.eq(0)
        self._at = lambda c: start if c == 0 else running & (self.cycle == c)

        self.blocks = blocks
        self.produced = dict(sources)
        for x in self.issues:
            (out,) = x.out
            if out in self.produced:
                raise ValueError(f"{name}: {out!r} is written twice")
            self.produced[out] = (x.ready, self._block(x.block).result)
        self.registers = {}
        for value, (ready, signal) in self.produced.items():
            if ready is not None:
                reg = self.registers[value] = Signal(width, name=f"{name}_{value}")
                with m.If(self._at(ready)):
                    m.d.sync += reg.eq(signal)
        for x in self.issues:
            a, b = (self._read(v, x.cycle) for v in x.args)
            if x.block == "sub":
                b = negated(b, width)
            block = self._block(x.block)
            with m.If(self._at(x.cycle)):
                m.d.comb += [block.a.eq(a), block.b.eq(b)]

    def _block(self, kind: str):
        return self.blocks["add" if kind == "sub" else kind]

    def _read(self, value: str, cycle: int):
        ready, signal = self.produced[value]
        if ready is None:
            return signal
        if ready > cycle:
            raise ValueError(f"{value!r} is read on cycle {cycle}, before it is ready ({ready})")
        return signal if ready == cycle else self.registers[value]

    def value(self, name: str):
        """``name`` from its ready cycle on (until the next start)."""
        ready, signal = self.produced[name]
        return signal if ready is None else Mux(self._at(ready), signal, self.registers[name])

    def strobe(self, name: str):
        """High on the cycle ``name`` is ready."""
        ready, _ = self.produced[name]
        return Const(1, 1) if ready is None else self._at(ready)

    def issues_on(self, kind: str):
        """1 on the cycles an operation issues on block ``kind`` (sub on add)."""
        hits = [self._at(x.cycle) for x in self.issues if self._block(x.block) is self.blocks[kind]]
        return Cat(*hits).any() if hits else Const(0, 1)
