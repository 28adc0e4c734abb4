"""The normalization unit's area by block: the unit's Verilog through the
hierarchical flow of :func:`~.synth.synthesize_modules`, each of the top
module's instances assigned to a block by its name in
:class:`~iterl2norm.hw.rtl.unit.NormUnit`, and the memories' bits counted apart.

The blocks:

- ``lanes``: the statistics pass's P lane multipliers (``square0`` ...);
- ``reduction``: the adder trees, the accumulators, the final sums, and the
  statistics' multiplier and adder (two- and three-pass);
- ``scalar unit``: the reciprocal square root (``rsqrt``), or the square root
  of the exact method (``sqrt``);
- ``output``: the output pass's P lanes: centring adders, multipliers or
  dividers, and the affine multipliers and adders;
- ``control``: the top module's own logic: the sequencing, the buffer's
  addresses, the beats' pipeline registers and tags, the max tree
  (three-pass) and the output multiplexers.
"""

from __future__ import annotations

import re
from pathlib import Path

from .synth import synthesize_modules

__all__ = ["BLOCKS", "block_of", "memory_bits", "unit_synthesis"]

BLOCKS = {
    "lanes": re.compile(r"square\d+"),
    "reduction": re.compile(r"(sq|sum)_(tree\d+_\d+|accumulator|acc\d+|final)|stats_(mul|add)"),
    "scalar unit": re.compile(r"rsqrt|sqrt"),
    "output": re.compile(r"(centre|scale|divide|gamma|beta)\d+"),
}
CONTROL = "control"
_INSTANCE_RE = re.compile(r"^  \\(\S+)\s+\\?(\S+)\s+\(", re.M)
_MEMORY_RE = re.compile(r"^  reg \[(\d+):(\d+)\] \\?(\w+) \[(\d+):(\d+)\];", re.M)


def block_of(instance: str) -> str:
    """The block of an instance of the unit's top module, by its name."""
    for block, pattern in BLOCKS.items():
        if pattern.fullmatch(instance):
            return block
    raise ValueError(f"no block of the unit holds an instance named {instance!r}")


def _top_module(text: str, top: str) -> str:
    start = re.search(rf"^module {re.escape(top)}\(", text, re.M)
    if start is None:
        raise ValueError(f"no module {top!r} in the Verilog")
    return text[start.start() : text.index("endmodule", start.start())]


def memory_bits(text: str, top: str) -> dict[str, int]:
    """The bits of each memory of the top module: {name: words x width}."""
    return {
        name: (abs(int(hi) - int(lo)) + 1) * (abs(int(a) - int(b)) + 1)
        for hi, lo, name, a, b in _MEMORY_RE.findall(_top_module(text, top))
    }


def unit_synthesis(verilog: str | Path, top: str = "iterl2norm_unit") -> dict:
    """The unit of ``verilog`` mapped to CMOS gates, module by module: the
    totals of :func:`~.synth.synthesize_modules`, ``blocks`` (per block its
    transistors, NAND2 equivalents, flip-flops and instances) and
    ``memory_bits`` (per memory; not in the transistor count)."""
    verilog = Path(verilog)
    text = verilog.read_text()
    instances = _INSTANCE_RE.findall(_top_module(text, top))
    blocks = {name: block_of(name) for _, name in instances}  # every name claimed, or an error
    result = synthesize_modules(verilog, top)
    modules, merged = result["modules"], result["merged"]
    totals = {b: {"transistors": 0, "flip_flops": 0, "instances": 0} for b in [*BLOCKS, CONTROL]}
    for kind, name in instances:
        module = modules[merged.get(kind, kind)]
        total = totals[blocks[name]]
        total["transistors"] += module["transistors"]
        total["flip_flops"] += module["flip_flops"]
        total["instances"] += 1
    own = modules[top]
    totals[CONTROL]["transistors"] = own["transistors"] - sum(
        t["transistors"] for t in totals.values()
    )
    totals[CONTROL]["flip_flops"] = own["own_flip_flops"]
    for total in totals.values():
        total["nand2_equivalents"] = total["transistors"] / 4
    return {**result, "blocks": totals, "memory_bits": memory_bits(text, top)}
