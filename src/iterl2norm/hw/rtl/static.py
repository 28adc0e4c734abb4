"""A static schedule in hardware: the model's placed operations
(:class:`iterl2norm.hw.model.schedule.Issue`, cycles counted from a start)
as operand multiplexers on the blocks and one register per value. An
operation issued on the cycle its operand appears reads it from the
producing block's output (a bypass), later ones from the register; a value
written twice (a step's ``a``) is read in the version the last earlier
operation wrote, which the schedule must not have overwritten yet."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal

__all__ = ["StaticSchedule", "negated", "schedule_counter"]


def negated(bits, width: int):
    """A floating-point value with its sign bit flipped."""
    return Cat(bits[: width - 1], ~bits[width - 1])


def schedule_counter(m: Module, name: str, start, last: int):
    """A schedule's cycle counter: 0 while idle and on the cycle ``start`` is
    high (cycle 0), then 1, 2, ... up to ``last``, then idle again. Returns
    (the counter, ``at(c)``: high on schedule cycle c)."""
    cycle = Signal(range(last + 1), name=f"{name}_cycle")
    with m.If(cycle != 0):
        m.d.sync += cycle.eq(Mux(cycle == last, 0, cycle + 1))
    with m.Elif(start):
        m.d.sync += cycle.eq(1 if last else 0)
    return cycle, lambda c: (start & (cycle == 0)) if c == 0 else (cycle == c)


class StaticSchedule:
    """``issues`` on ``blocks``.

    Args:
        m: the module to build in.
        name: the registers' prefix.
        issues: the placed operations, in program order.
        cycle: the schedule's cycle counter: the operations issued on c
            drive their block's inputs while it is c.
        write_at: ``write_at(c)``, when a value ready on cycle c is
            registered.
        blocks: ``{block: component}`` (a ``"sub"`` runs on ``"add"``, b's
            sign flipped).
        sources: the inputs, ``{name: (ready cycle, signal)}``; a ready cycle
            of ``None`` for a value that is there throughout. An input read
            after its ready cycle is registered.
        width: the values' width, unless ``shapes`` names another.
        outputs: ``{block: {value: signal}}`` for blocks with several
            results; others give ``result``.
        ports: ``{block: input names}``; default ``("a", "b")``.
        const: ``const(value)``, the bits of a ``("const", value)`` operand.
    """

    def __init__(
        self,
        m: Module,
        name: str,
        issues,
        *,
        cycle,
        write_at,
        blocks: dict,
        sources: dict,
        width: int,
        shapes: dict | None = None,
        outputs: dict | None = None,
        ports: dict | None = None,
        const=None,
    ):
        self.m, self.issues, self.write_at = m, list(issues), write_at
        self.blocks, self.sources, self.const = blocks, dict(sources), const
        self.outputs, self.ports = outputs or {}, ports or {}
        self.registers: dict[str, Signal] = {}
        self.versions: dict[str, list] = {}
        shapes = shapes or {}
        for x in self.issues:
            for value in x.out:
                if value not in self.registers:
                    shape = shapes.get(value, width)
                    self.registers[value] = Signal(shape, name=f"{name}_{value}")
                self.versions.setdefault(value, []).append(x)
                with m.If(write_at(x.ready)):
                    m.d.sync += self.registers[value].eq(self._produced(x, value))
        # Inputs read after their ready cycle wait in a register of their own.
        late = {
            v
            for x in self.issues
            for v in x.args
            if isinstance(v, str) and v in self.sources and self._late(v, x.cycle)
        }
        for value in sorted(late):
            ready, signal = self.sources[value]
            reg = self.registers[value] = Signal(len(signal), name=f"{name}_{value}")
            with m.If(write_at(ready)):
                m.d.sync += reg.eq(signal)
        # Each block's inputs, by the cycle its operations issue.
        by_block: dict[str, list] = {}
        for position, x in enumerate(self.issues):
            by_block.setdefault(self._kind(x.block), []).append((position, x))
        for kind, issued in by_block.items():
            block, names = self.blocks[kind], self.ports.get(kind, ("a", "b"))
            with m.Switch(cycle):
                for position, x in issued:
                    with m.Case(x.cycle):
                        for port, arg in zip(names, x.args, strict=True):
                            value = self.read(arg, x.cycle, position)
                            if x.block == "sub" and port == "b":  # a - b = a + (-b)
                                value = negated(value, len(value))
                            m.d.comb += getattr(block, port).eq(value)
                        if x.block == "scale":
                            m.d.comb += block.k.eq(x.shift)

    def _kind(self, block: str) -> str:
        return "add" if block == "sub" else block

    def _block(self, block: str):
        return self.blocks[self._kind(block)]

    def _produced(self, x, value: str):
        """The output of ``x``'s block that carries ``value``."""
        source = self.outputs.get(x.block, {}).get(value)
        return self._block(x.block).result if source is None else source

    def _late(self, value: str, cycle: int) -> bool:
        ready, _ = self.sources[value]
        return ready is not None and ready < cycle

    def read(self, value, cycle: int, position: int | None = None):
        """``value`` as the operation at ``position`` of the program (None:
        after the last), issued on ``cycle``, sees it."""
        if isinstance(value, tuple):  # ("const", value)
            return self.const(value[1])
        history = self.versions.get(value, [])
        before = self.issues[:position] if position is not None else self.issues
        earlier = [x for x in history if any(x is y for y in before)]
        if not earlier and value in self.sources:  # an input (or a value's first version)
            ready, signal = self.sources[value]
            if ready is not None and ready > cycle:
                raise ValueError(f"{value!r} is read on cycle {cycle}, before it is ready")
            return self.registers[value] if self._late(value, cycle) else signal
        if not earlier:
            raise ValueError(f"{value!r} is read before any operation writes it")
        version = earlier[-1]
        # The schedule must leave it there: ready by now, not yet overwritten.
        if version.ready > cycle or any(version.ready < x.ready <= cycle for x in history):
            raise ValueError(f"{value!r} is not there on cycle {cycle}")
        return self._produced(version, value) if version.ready == cycle else self.registers[value]

    def value(self, name: str):
        """``name`` from its (last) ready cycle on, until overwritten."""
        ready = self.versions[name][-1].ready
        return Mux(self.write_at(ready), self.read(name, ready), self.registers[name])

    def strobe(self, name: str):
        """High on the cycle ``name``'s last version is ready."""
        return self.write_at(self.versions[name][-1].ready)

    def issues_on(self, kind: str, at):
        """1 on the cycles (``at(c)``) an operation issues on block ``kind``
        (sub on add): the trace's count."""
        hits = [at(x.cycle) for x in self.issues if self._kind(x.block) == kind]
        return Cat(*hits).any() if hits else Const(0, 1)
