"""Fingerprints of the hardware model's behaviour and of every bundle's
expected results, to show that a change to the model, the RTL or the flows
left them as they were.

    .venv/bin/python scripts/hw_fingerprints.py --out docs/hw_fingerprints.json
    .venv/bin/python scripts/hw_fingerprints.py --check docs/hw_fingerprints.json

``model``: per configuration (every preset and a seeded set of random ones,
every field the model accepts) and per d, the cycles, the stages, the
operations issued and a SHA-256 of the per-cycle issue trace, and a SHA-256
of ``hw.reference``'s output bits on the test rows. ``bundles``: the SHA-256
of the expected result words each ``iterl2norm rtl`` bundle writes in
``expected.hex`` (without synthesis), whatever the file's layout, and of
a unit bundle's cycles. ``--model-only`` skips the bundles (seconds, not
minutes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from iterl2norm.formats import encode, round_to_format
from iterl2norm.hw import PRESETS, UnitConfig, reference, simulate
from iterl2norm.hw.flows.vectors import unit_params, unit_rows

DIMS = (64, 100, 128, 768, 1000, 1024)
RANDOM_CONFIGS = 24
FORMAT_PAIRS = (
    ("fp32", "fp32"),
    ("bf16", "fp32"),
    ("bf16", "bf16"),
    ("fp16", "fp16"),
    ("fp16", "fp32"),
)


def random_configs(count: int, seed: int = 0) -> list[UnitConfig]:
    """Seeded random configurations over every field the model accepts."""
    g = torch.Generator().manual_seed(seed)

    def pick(choices):
        return choices[int(torch.randint(0, len(choices), (1,), generator=g))]

    out = []
    while len(out) < count:
        fmt, acc = pick(
            (
                ("fp32", "fp32"),
                ("bf16", "fp32"),
                ("bf16", "bf16"),
                ("fp16", "fp16"),
                ("fp16", "fp32"),
            )
        )
        method = pick(("iterl2norm", "iterl2norm", "fisr", "exact"))
        mode = (
            pick(("scalar", "scalar", "scalar", "vector")) if method == "iterl2norm" else "scalar"
        )
        schedule = None
        if method == "iterl2norm" and mode == "scalar":
            schedule = pick((None, None, "table", "minimax"))
        fields = dict(
            name=f"random-{len(out)}",
            lanes=pick((1, 2, 4, 8, 16, 32, 64)),
            mul_latency=pick((1, 2, 3, 4)),
            add_latency=pick((1, 2, 3, 4)),
            exp_latency=pick((1, 2)),
            reduction=pick(("tree", "accumulators")),
            acc_slots=pick((None, 1, 2, 5)),
            fmt=fmt,
            acc_fmt=acc,
            statistics=pick(("l2", "two-pass", "three-pass")),
            mode=mode,
            method=method,
            steps=pick((0, 1, 2, 3, 5)),
            init=pick(("exponent", "exponent+mantissa", "magic")),
            schedule=schedule,
            affine=pick((False, True)),
        )
        try:
            out.append(UnitConfig(**fields))
        except ValueError:
            continue
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def model_configs() -> list[UnitConfig]:
    return list(PRESETS.values()) + random_configs(RANDOM_CONFIGS)


def model_fingerprints(configs=None) -> dict:
    out = {}
    for cfg in model_configs() if configs is None else configs:
        entry = {"config": {k: v for k, v in cfg.summary().items() if k != "description"}}
        for d in DIMS:
            rows = round_to_format(unit_rows(d, cfg.fmt, 8, seed=d), cfg.fmt)
            gamma, beta, _ = unit_params(cfg, d, seed=d) if cfg.affine else (None, None, None)
            sim = simulate(rows[:1], cfg, gamma, beta, trace=True)
            want = encode(reference(rows, cfg, gamma, beta), cfg.fmt)
            entry[str(d)] = {
                "cycles": sim.cycles,
                "stages": sim.stages,
                "ops": dict(sorted(sim.ops.items())),
                "trace": _sha(json.dumps([sorted(c.items()) for c in sim.trace]).encode()),
                "reference": _sha(want.numpy().tobytes()),
            }
        out[cfg.name] = entry
    return out


BUNDLES = {
    "op-mul-fp32": ["op", "--op", "mul", "--fmt", "fp32", "--latency", "3"],
    "op-add-bf16-fp32": [
        "op",
        "--op",
        "add",
        "--fmt",
        "bf16",
        "--acc-fmt",
        "fp32",
        "--vectors",
        "2000",
    ],
    "op-mul-fp16": ["op", "--op", "mul", "--fmt", "fp16"],
    "rsqrt-fp32": ["rsqrt", "--fmt", "fp32", "--vectors", "1024"],
    "rsqrt-bf16-table": ["rsqrt", "--fmt", "bf16", "--schedule", "table", "--steps", "0"],
    "rsqrt-fp16-magic": ["rsqrt", "--fmt", "fp16", "--init", "magic", "--steps", "2"],
    "sqrt-divide-fp32": ["sqrt-divide", "--fmt", "fp32", "--vectors", "1024"],
    **{f"unit-{name}": ["unit", "--preset", name, "--vectors", "2"] for name in PRESETS},
}


def expected_words(bundle: Path) -> list[str]:
    """The expected result words of a bundle, whatever the layout of its
    expected.hex: unit bundles of an earlier layout put each vector's d on a
    line of its own (decimal) before its words, as their inputs.hex did."""
    words = (bundle / "expected.hex").read_text().split()
    inputs = (bundle / "inputs.hex").read_text().split("\n", 1)[0]
    if not (bundle.name.startswith("unit-") and inputs.strip().isdecimal()):
        return words
    out, at = [], 0
    while at < len(words):  # d, then d words
        d = int(words[at])
        out += words[at + 1 : at + 1 + d]
        at += 1 + d
    return out


def _cycles(bundle: Path) -> str | None:
    path = bundle / "cycles.txt"
    return _sha(" ".join(path.read_text().split()).encode()) if path.exists() else None


def bundle_fingerprints() -> dict:
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in BUNDLES.items():
            where = Path(tmp) / name
            cmd = [sys.executable, "-m", "iterl2norm.cli", "rtl", *argv, "--out", str(where)]
            subprocess.run([*cmd, "--no-synthesis"], check=True, capture_output=True)
            out[name] = {"expected": _sha(" ".join(expected_words(where)).encode())}
            if name.startswith("unit-"):
                out[name]["cycles"] = _cycles(where)
            print(name, out[name], flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the fingerprints to this JSON file")
    parser.add_argument("--check", help="compare with this JSON file; non-zero exit if they differ")
    parser.add_argument("--model-only", action="store_true", help="skip the bundles")
    args = parser.parse_args(argv)
    got = {"model": model_fingerprints()}
    if not args.model_only:
        got["bundles"] = bundle_fingerprints()
    if args.out:
        Path(args.out).write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    if args.check:
        want = json.loads(Path(args.check).read_text())
        differ = [
            f"{part}/{name}"
            for part in got
            for name in sorted(set(got[part]) | set(want.get(part, {})))
            if got[part].get(name) != want.get(part, {}).get(name)
        ]
        for name in differ:
            print(f"differs: {name}")
        print(f"{len(differ)} of {sum(len(v) for v in got.values())} fingerprints differ")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
