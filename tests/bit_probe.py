"""Fingerprints of every bit-exact output, for comparing machines and builds.

    python tests/bit_probe.py             # {case: sha256 of the output bytes} as JSON
    python tests/bit_probe.py --check     # compare with tests/data/bit_hashes.json

Each case runs one bit-exact path (every format, method, start, schedule and
mode; LayerNorm and RMSNorm with affine parameters; the compiled kernels and
the torch emulation; the hardware model; the study's correctly rounded
targets) on fixed inputs built from integers alone, so neither torch's random
generator (whose draws depend on the CPU capability) nor any library math
function decides a bit. tests/test_machine_independence.py runs this script
under every instruction-set variant of the kernels and under
``ATEN_CPU_CAPABILITY=default``, and asserts the same fingerprints.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import torch

from iterl2norm import (
    FORMATS,
    _fused,
    exact_normalize,
    fisr_normalize,
    hw,
    invsqrt2_normalize,
    iter_rsqrt,
    iterl2norm,
    layer_norm,
    rms_norm,
    sqrt23_normalize,
)
from iterl2norm.formats import round_to_format, sqrt_rn
from iterl2norm.schedules import SCHEDULES
from iterl2norm.study.convergence import correctly_rounded_rsqrt, every_q

GOLDEN = Path(__file__).parent / "data" / "bit_hashes.json"
EMULATED = ("fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "fp64")


def _values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Roughly Gaussian float64 values, exactly sums of integers times 2**-21."""
    ints = rng.integers(-(1 << 20), 1 << 20, size=(4, *shape), dtype=np.int64).sum(axis=0)
    return np.ldexp(ints.astype(np.float64), -21)


def rows(d: int, seed: int) -> torch.Tensor:
    """(12, d) rows: ordinary, outliers, scaled up and down, zero, constant, NaN, Inf."""
    rng = np.random.Generator(np.random.PCG64(seed))
    x = _values(rng, (12, d))
    x[1, 3] *= 64.0  # outlier
    x[2] = np.ldexp(x[2], 13)  # near fp16's largest values
    x[3] = np.ldexp(x[3], -20)  # near fp16's subnormals
    x[4] = np.ldexp(x[4], 100)
    x[5] = np.ldexp(x[5], -100)
    x[6] = 0.0
    x[7] = 0.75
    x[8, 5] = np.nan
    x[9, 0] = np.inf
    x[10] = np.ldexp(np.abs(x[10]), 2)  # one-signed
    return torch.from_numpy(x).float()


def affine_params(d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.Generator(np.random.PCG64(seed))
    w = 1.0 + np.ldexp(rng.integers(-512, 512, size=d).astype(np.float64), -10)
    b = np.ldexp(rng.integers(-512, 512, size=d).astype(np.float64), -11)
    return torch.from_numpy(w).float(), torch.from_numpy(b).float()


def _timing(cfg) -> torch.Tensor:
    """The simulated latency, stage by stage, and the operation counts at several d."""
    timing = []
    for d in (64, 100, 1024):
        result = hw.simulate(rows(d, 6)[:1], cfg)
        timing.append([result.cycles, result.stages, result.ops])
    text = json.dumps(timing, sort_keys=True).encode()
    return torch.frombuffer(bytearray(text), dtype=torch.uint8)


def cases() -> Iterator[tuple[str, Callable[[], torch.Tensor]]]:
    x, x64 = rows(96, 1), rows(96, 1).double()
    w, b = affine_params(96, 2)
    for fmt in EMULATED:
        for steps in (0, 1, 3, 5):
            yield f"iterl2norm {fmt} steps={steps}", partial(iterl2norm, x, steps=steps, fmt=fmt)
        for init in ("exponent+mantissa", "magic"):
            yield f"iterl2norm {fmt} init={init}", partial(iterl2norm, x, init=init, fmt=fmt)
        rates = [0.75, 0.5, 0.375]
        yield f"iterl2norm {fmt} rates", partial(iterl2norm, x, steps=3, update_rate=rates, fmt=fmt)
        yield f"iterl2norm {fmt} vector", partial(iterl2norm, x, mode="vector", fmt=fmt)
        for name in SCHEDULES:
            run = partial(iterl2norm, x, steps=2, schedule=name, fmt=fmt)
            yield f"iterl2norm {fmt} schedule={name}", run
        yield f"exact {fmt}", partial(exact_normalize, x, fmt=fmt)
        yield f"fisr {fmt}", partial(fisr_normalize, x, steps=2, fmt=fmt)
        yield f"invsqrt2 {fmt}", partial(invsqrt2_normalize, x, fmt=fmt)
        yield f"sqrt23 {fmt}", partial(sqrt23_normalize, x, fmt=fmt)
        yield f"layer_norm {fmt}", partial(layer_norm, x, (96,), w, b, fmt=fmt)
        run = partial(layer_norm, x, (96,), w, b, steps=1, schedule="table", fmt=fmt)
        yield f"layer_norm {fmt} table", run
        yield f"rms_norm {fmt}", partial(rms_norm, x, (96,), w, eps=1e-6, fmt=fmt)
        yield f"iter_rsqrt {fmt}", partial(iter_rsqrt, x.abs().flatten(), steps=3, fmt=fmt)
    # 16-bit inputs (the compiled kernels read them directly), float64 inputs.
    for dtype in (torch.bfloat16, torch.float16):
        for fmt in ("bf16", "fp16"):
            yield (
                f"layer_norm {dtype} {fmt}",
                partial(layer_norm, x.to(dtype), (96,), w, b, fmt=fmt),
            )
    yield "iterl2norm float64 fp32", partial(iterl2norm, x64, fmt="fp32")
    yield "exact float64 fp64", partial(exact_normalize, x64, fmt="fp64")
    run = partial(exact_normalize, x64[:, :64], fmt="fp16", acc_fmt="fp16")
    yield "exact float64 fp16 acc fp16", run
    # The hardware model.
    for name, cfg in hw.PRESETS.items():
        for d in (64, 100):
            xd, (gamma, beta) = rows(d, 3)[[0, 1, 2, 5, 6, 7, 8]], affine_params(d, 4)
            yield f"hw.reference {name} d={d}", partial(hw.reference, xd, cfg, gamma, beta)
        yield f"hw.simulate {name}", lambda cfg=cfg: hw.simulate(rows(64, 5)[:3], cfg).out
        yield f"hw.simulate {name} cycles", partial(_timing, cfg)
    # The study's targets and the correctly rounded square root.
    for fmt in ("fp16", "bf16"):
        yield f"correctly_rounded_rsqrt {fmt}", partial(correctly_rounded_rsqrt, every_q(fmt), fmt)
    run = partial(correctly_rounded_rsqrt, every_q("fp32", 61), "fp32")
    yield "correctly_rounded_rsqrt fp32", run
    yield "sqrt_rn float32", partial(sqrt_rn, every_q("fp32", 7).float())
    yield "sqrt_rn float64", partial(sqrt_rn, x64.abs().flatten() * 3.0)
    for name in FORMATS:
        yield f"round_to_format {name}", partial(round_to_format, x64 * 7.0, name)


def fingerprint(t: torch.Tensor) -> str:
    """sha256 of dtype, shape and bytes, every NaN as one NaN: a NaN row's sign and
    payload are not part of the definition (the kernels and torch differ there)."""
    t = t.detach()
    if t.is_floating_point():
        t = torch.where(t.isnan(), torch.full_like(t, float("nan")), t)
    t = t.contiguous()
    header = f"{t.dtype} {tuple(t.shape)}".encode()
    return hashlib.sha256(header + t.view(torch.uint8).numpy().tobytes()).hexdigest()


def probe(kernels: bool = True) -> dict[str, str]:
    with _fused.disabled(off=not kernels):
        return {name: fingerprint(run()) for name, run in cases()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help=f"compare with {GOLDEN.name}")
    parser.add_argument("--no-kernels", action="store_true", help="the torch paths only")
    parser.add_argument("--write", action="store_true", help=f"write {GOLDEN.name}")
    args = parser.parse_args(argv)
    hashes = probe(kernels=not args.no_kernels)
    if args.write:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(hashes, indent=1, sort_keys=True) + "\n")
    if args.check:
        golden = json.loads(GOLDEN.read_text())
        differ = sorted(k for k in golden.keys() | hashes.keys() if golden.get(k) != hashes.get(k))
        for k in differ:
            print(f"differs: {k}")
        print(f"{len(hashes) - len(differ)} same, {len(differ)} different")
        return 1 if differ else 0
    json.dump(hashes, sys.stdout, indent=1, sort_keys=True)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
