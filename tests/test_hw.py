"""The hardware unit model: simulator against its golden model, cycles, errors."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from iterl2norm import iterl2norm
from iterl2norm.formats import FORMATS
from iterl2norm.hw import PAPER_CYCLES, PRESETS, UnitConfig, reference, simulate
from iterl2norm.hw.model.config import closed_form_cycles


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    nan = a.isnan()
    return torch.equal(nan, b.isnan()) and torch.equal(a[~nan], b[~nan])


def edge_rows(fmt: str, d: int, seed: int = 0) -> torch.Tensor:
    """Gaussian, scaled, outlier, constant, zero, huge, tiny and NaN rows."""
    f = FORMATS[fmt]
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(4, d, generator=gen, dtype=torch.float64)
    rows = [
        g[0],
        g[1] * 1e3,
        g[2] + 50.0,
        g[3].clone(),
        torch.full((d,), 3.7),
        torch.zeros(d),
        g[0] * (f.max / 16),
        g[1] * f.smallest_normal * 8,
        torch.where(torch.arange(d) == 5, float("nan"), g[2]),
    ]
    rows[3][7] = 400.0  # one outlier channel
    return torch.stack(rows)


AFFINE = {
    "gamma": 1 + 0.1 * torch.randn(100, generator=torch.Generator().manual_seed(3)),
    "beta": 0.1 * torch.randn(100, generator=torch.Generator().manual_seed(4)),
}


@pytest.mark.parametrize("name", list(PRESETS))
@pytest.mark.parametrize("d", [64, 100])
def test_presets_are_bit_identical_to_the_golden_model(name, d):
    cfg = PRESETS[name]
    x = edge_rows(cfg.fmt, d)
    gamma, beta = AFFINE["gamma"][:d], AFFINE["beta"][:d]
    assert same_bits(simulate(x, cfg, gamma, beta).out, reference(x, cfg, gamma, beta))


VARIANTS = [
    {"fmt": "fp16"},
    {"fmt": "bf16", "statistics": "two-pass"},
    {"fmt": "fp32", "acc_fmt": "fp64"},
    {"reduction": "accumulators"},
    {"acc_slots": 1},
    {"acc_slots": 5, "lanes": 8},
    {"init": "exponent+mantissa", "steps": 3},
    {"init": "magic", "steps": 2},
    {"mode": "vector", "steps": 3},
    {"schedule": "minimax", "steps": 4},
    {"schedule": "minimax-magic", "steps": 2, "statistics": "l2"},
    {"method": "fisr", "steps": 3, "statistics": "two-pass"},
    {"method": "exact", "fmt": "fp16"},
    {"lanes": 1, "affine": False},
]


@pytest.mark.parametrize(
    "changes", VARIANTS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items())
)
def test_configurations_are_bit_identical_to_the_golden_model(changes):
    cfg = PRESETS["paper-layernorm-bf16"].with_(**changes)
    x = edge_rows(cfg.fmt, 77, seed=1)
    gamma, beta = AFFINE["gamma"][:77], AFFINE["beta"][:77]
    assert same_bits(simulate(x, cfg, gamma, beta).out, reference(x, cfg, gamma, beta))


def test_d_1024_bit_identical():
    cfg = PRESETS["paper-l2-fp32"]
    x = edge_rows("fp32", 1024, seed=2)
    assert same_bits(simulate(x, cfg).out, reference(x, cfg))


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "fp16"])
def test_one_chunk_l2_unit_equals_the_library(fmt):
    """With all 64 elements in one chunk the unit's adder tree is the library's,
    so its L2 normalization is iterl2norm's, bit for bit."""
    cfg = UnitConfig(fmt=fmt, statistics="l2", lanes=64, affine=False)
    x = torch.randn(16, 64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert torch.equal(reference(x, cfg), iterl2norm(x, fmt=fmt))
    assert torch.equal(simulate(x, cfg).out, iterl2norm(x, fmt=fmt))


@pytest.mark.parametrize("name", ["paper-l2-fp32", "paper-layernorm-bf16"])
def test_simulated_cycles_equal_the_closed_form(name):
    base = PRESETS[name]
    x = torch.randn(1, 1024)
    for cfg in (
        base,
        base.with_(lanes=8, mul_latency=2, add_latency=4),
        base.with_(statistics="two-pass", steps=3, affine=not base.affine),
    ):
        for d in (64, 96, 256, 1000, 1024):
            assert simulate(x[:, :d], cfg).cycles == closed_form_cycles(cfg, d), (cfg, d)


def test_paper_presets_land_within_ten_percent_of_the_paper():
    for name in ("paper-l2-fp32", "paper-layernorm-bf16"):
        for d, paper in PAPER_CYCLES.items():
            cycles = simulate(torch.randn(1, d), PRESETS[name]).cycles
            assert abs(cycles / paper - 1) <= 0.10, (name, d, cycles)


@pytest.mark.parametrize("name", list(PRESETS))
def test_latency_grows_with_d_and_stages_add_up(name):
    cfg = PRESETS[name]
    results = [simulate(torch.randn(1, d), cfg) for d in (64, 65, 128, 300, 512)]
    cycles = [r.cycles for r in results]
    assert cycles == sorted(cycles) and cycles[0] < cycles[-1]
    assert all(sum(r.stages.values()) == r.cycles for r in results)


def test_stalls_and_the_trace():
    cfg = PRESETS["paper-l2-fp32"]
    hazard = cfg.with_(acc_slots=1)  # a 3-cycle accumulator fed every cycle stalls
    x = torch.randn(1, 256)
    assert simulate(x, hazard).cycles > simulate(x, cfg).cycles
    res = simulate(x, cfg, trace=True)
    assert len(res.trace) == res.cycles
    assert res.trace[0] == {"read": 1} and sum(c.get("lane.sq", 0) for c in res.trace) == 256
    better = cfg.with_(schedule="table", steps=2)
    assert simulate(x, better).cycles < res.cycles


BAD = [
    ({"lanes": 3}, "power of two"),
    ({"lanes": 128}, "power of two"),
    ({"statistics": "one-pass"}, "'one-pass'"),
    ({"reduction": "ring"}, "'ring'"),
    ({"fmt": "fp8_e4m3"}, "unsupported formats"),
    ({"fmt": "fp32", "acc_fmt": "bf16"}, "unsupported formats"),
    ({"mode": "vector", "method": "fisr"}, "vector mode"),
    ({"mul_latency": 0}, "mul_latency"),
    ({"steps": -1}, "steps"),
    ({"schedule": "warp"}, "'warp'"),
]


@pytest.mark.parametrize(("changes", "message"), BAD)
def test_bad_configurations_are_refused(changes, message):
    with pytest.raises((ValueError, TypeError), match=message):
        UnitConfig(**changes)


@pytest.mark.parametrize("d", [63, 1025, 0])
def test_unsupported_d_is_refused(d):
    with pytest.raises(ValueError, match=f"d={d} is outside"):
        simulate(torch.randn(1, d), PRESETS["paper-l2-fp32"])
    with pytest.raises(ValueError, match="outside"):
        closed_form_cycles(PRESETS["paper-l2-fp32"], d)


def test_hw_command(tmp_path):
    from iterl2norm.cli import main

    out = tmp_path / "hw.json"
    assert (
        main(
            [
                "hw",
                "--dims",
                "64",
                "1024",
                "--vectors",
                "2",
                "--json",
                str(out),
                "--plot",
                str(tmp_path / "hw.png"),
                "--presets",
                "paper-l2-fp32",
                "sqrt-div-l2-fp32",
            ]
        )
        == 0
    )
    import json

    data = json.loads(out.read_text())
    assert [p["preset"] for p in data["presets"]] == ["paper-l2-fp32", "sqrt-div-l2-fp32"]
    assert data["presets"][0]["latency"] == {"64": 116, "1024": 236}
    assert (tmp_path / "hw.png").read_bytes()[:4] == b"\x89PNG"
    proc = subprocess.run(
        [sys.executable, "-m", "iterl2norm.cli", "hw", "--dims", "2048"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "d=2048 is outside" in proc.stderr


def test_the_old_name_of_the_exact_method_still_works_with_a_warning():
    with pytest.warns(DeprecationWarning, match="now called 'exact'"):
        cfg = PRESETS["paper-l2-fp32"].with_(method="sqrt-divide")
    assert cfg.method == "exact"
    assert cfg == PRESETS["paper-l2-fp32"].with_(method="exact")
