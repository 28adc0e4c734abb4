"""The bit-exact results are the same bits on every machine and in every build.

tests/bit_probe.py fingerprints every bit-exact output on fixed inputs. Here
it runs under each instruction-set variant of the compiled kernels this CPU
runs (ITERL2NORM_ISA) and under ATEN_CPU_CAPABILITY=default (PyTorch's own
kernels without vector instructions), in fresh processes, and every run must
match the fingerprints committed in tests/data/bit_hashes.json, so every
machine the suite runs on is compared with the one that made them. The
schedule derivation must regenerate its committed constants there too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bit_probe
from iterl2norm import _fused, layer_norm

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(bit_probe.__file__)
DERIVE = ROOT / "scripts" / "derive_schedules.py"
SUPPORTED_ISAS = _fused._kernels.supported_isas() if _fused._kernels is not None else []
# Environments the bits must not depend on: each kernel variant, and torch's
# capability-free kernels (which also change torch's own float casts).
VARIANTS = [{"ITERL2NORM_ISA": isa} for isa in SUPPORTED_ISAS] + [
    {"ATEN_CPU_CAPABILITY": "default"}
]


def _run(script: Path, env_changes: dict, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_changes}
    return subprocess.run(
        [sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=600
    )


def _label(env_changes: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in env_changes.items())


@pytest.fixture(scope="module")
def golden() -> dict[str, str]:
    return json.loads(bit_probe.GOLDEN.read_text())


def _differences(a: dict, b: dict) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def test_fingerprints_match_the_committed_ones(golden):
    assert _differences(bit_probe.probe(kernels=True), golden) == []


def test_torch_paths_give_the_kernels_bits(golden):
    assert _differences(bit_probe.probe(kernels=False), golden) == []


@pytest.mark.parametrize("env_changes", VARIANTS, ids=_label)
def test_fingerprints_do_not_depend_on_the_instruction_set(golden, env_changes):
    done = _run(PROBE, env_changes)
    assert done.returncode == 0, done.stderr
    assert _differences(json.loads(done.stdout), golden) == []


def test_every_kernel_variant_is_exercised():
    if _fused._kernels is None:
        pytest.skip("built without the compiled kernels: only the torch paths were checked")
    assert SUPPORTED_ISAS[0] == "baseline" and set(SUPPORTED_ISAS) <= set(_fused.ISA_VARIANTS)


def test_derivation_does_not_depend_on_the_capability():
    done = _run(DERIVE, {"ATEN_CPU_CAPABILITY": "default"}, "--check")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("capability", ["avx2", "avx512"])
def test_derivation_under_each_vector_capability(capability):
    done = _run(DERIVE, {"ATEN_CPU_CAPABILITY": capability}, "--check")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr


# ITERL2NORM_ISA itself ---------------------------------------------------------------


@pytest.fixture
def isa_env(monkeypatch):
    """Set ITERL2NORM_ISA for the next kernel call; afterwards the widest variant again."""
    if _fused._kernels is None:
        pytest.skip("built without the compiled kernels")

    def set_env(value: str) -> None:
        monkeypatch.setenv(_fused.ISA_ENV, value)
        monkeypatch.setattr(_fused, "_isa_applied", False)

    yield set_env
    _fused._kernels.set_isa(SUPPORTED_ISAS[-1])


@pytest.mark.parametrize("value", ["sse2", "AVX-512", "2"])
def test_unknown_isa_is_a_clear_error(isa_env, value):
    isa_env(value)
    with pytest.raises(ValueError, match=f"ITERL2NORM_ISA='{value}' is not an instruction-set"):
        layer_norm(torch.ones(2, 8), (8,))


def test_isa_the_cpu_cannot_run_is_a_clear_error(isa_env, monkeypatch):
    kernels = _fused._kernels

    class OldCpu:  # the kernel module as on a CPU without AVX-512
        def __getattr__(self, name):
            return getattr(kernels, name)

        def supported_isas(self):
            return ["baseline", "avx2"]

    monkeypatch.setattr(_fused, "_kernels", OldCpu())
    isa_env("avx512")
    with pytest.raises(
        ValueError, match="ITERL2NORM_ISA='avx512': this CPU runs only baseline, avx2"
    ):
        layer_norm(torch.ones(2, 8), (8,))


@pytest.mark.parametrize("isa", SUPPORTED_ISAS)
def test_isa_override_selects_the_variant(isa_env, isa):
    isa_env(isa.upper())
    layer_norm(torch.ones(2, 8), (8,))
    assert _fused.isa() == isa
