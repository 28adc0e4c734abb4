"""Speed benchmarks: iterl2norm's paths timed side by side with PyTorch's.

Each case times its methods round-robin in one process: every method is
warmed up, then each round calls every method once, so drift in the machine's
speed (other jobs, frequency) hits all of them alike. A row reports the median
over the rounds and the ratio of that median to the median of the case's
reference, measured in the same rounds: ``F.layer_norm`` for LayerNorm,
``F.rms_norm`` for RMSNorm and plain L2 normalization, the native path for the
emulation, the unpatched model for the patched one. ``copy_`` (into a tensor
allocated once) is the memory-traffic floor.

``iterl2norm bench`` runs this and prints the table; ``--csv`` appends the rows
with versions, machine and git revision (benchmarks/results.csv is the
committed record), ``--json`` writes them for machines.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import _fused, functional, iterl2norm
from ._env import environment as shared_environment
from ._env import progress_bar

SHAPES = ((4096, 4096), (16384, 768), (2048, 12288), (8, 2048, 576))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
EMULATED = ("bf16", "fp16", "fp8_e4m3")
EMULATION_SHAPE = (4096, 4096)
CALL_SHAPE = (8, 576)


@dataclass(frozen=True)
class Plan:
    """What one run measures; ``quick`` is the under-two-minutes selection."""

    quick: bool = False
    model: bool = True  # SmolLM2 patched vs unpatched, when the package is installed
    shapes: tuple[tuple[int, ...], ...] = SHAPES
    emulation_shape: tuple[int, ...] = EMULATION_SHAPE
    first_call: bool = True
    compiled: bool = True  # torch.compile rows: the model's, and a module's first call

    @property
    def rounds(self) -> int:
        return 5 if self.quick else 15

    def rounds_of(self, case: str) -> int:
        # Forward calls take milliseconds and vary most on a shared machine:
        # more rounds for the medians the speed targets are read from.
        return (
            self.rounds * 2 + 1 if case in ("forward", "call") and not self.quick else self.rounds
        )

    @property
    def warmup(self) -> int:
        return 1 if self.quick else 2

    @property
    def model_tokens(self) -> int:
        return 256 if self.quick else 2048


@dataclass
class Row:
    case: str
    shape: str
    dtype: str
    method: str
    reference: str
    p50_ms: float
    ratio: float
    rounds: int


def round_robin(
    methods: dict[str, Callable[[], object]],
    rounds: int,
    warmup: int,
    tick: Callable[[], None] = lambda: None,
) -> dict[str, float]:
    """Median seconds of each method, timed in interleaved rounds."""
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        tick()
    return {name: statistics.median(t) for name, t in times.items()}


def _rows(
    case: str, shape, dtype: str, medians: dict[str, float], references: dict[str, str], rounds: int
) -> list[Row]:
    return [
        Row(
            case,
            "x".join(map(str, shape)),
            dtype,
            name,
            references[name],
            medians[name] * 1e3,
            medians[name] / medians[references[name]],
            rounds,
        )
        for name in medians
    ]


def _affine(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    d = x.shape[-1]
    w = (1 + 0.1 * torch.randn(d, generator=gen)).to(x.dtype)
    b = (0.1 * torch.randn(d, generator=gen)).to(x.dtype)
    return w, b


# A case's methods in groups keyed by their reference, which each group holds:
# {reference: {method: call}}.
Groups = dict[str, dict[str, Callable[[], object]]]


def _forward_methods(x: torch.Tensor) -> Groups:
    d = x.shape[-1]
    w, b = _affine(x)
    floor = torch.empty_like(x)
    return {
        "F.layer_norm": {
            "F.layer_norm": lambda: F.layer_norm(x, (d,), w, b),
            "layer_norm": lambda: functional.layer_norm(x, (d,), w, b),
            "copy_": lambda: floor.copy_(x),
        },
        "F.rms_norm": {
            "F.rms_norm": lambda: F.rms_norm(x, (d,), w),
            "rms_norm": lambda: functional.rms_norm(x, (d,), w),
            "F.normalize": lambda: F.normalize(x, dim=-1),
            "iterl2norm": lambda: iterl2norm(x),
        },
    }


def _backward_methods(x: torch.Tensor) -> Groups:
    d = x.shape[-1]
    gen = torch.Generator().manual_seed(2)
    xg = x.detach().clone().requires_grad_(True)
    w = (1 + 0.1 * torch.randn(d, generator=gen)).to(x.dtype).requires_grad_(True)
    b = (0.1 * torch.randn(d, generator=gen)).to(x.dtype).requires_grad_(True)
    probe = torch.randn(x.shape, generator=gen).to(x.dtype)

    def both(fn, *params):
        def run():
            y = fn(xg, (d,), *params)
            torch.autograd.grad(y, [xg, *params], probe)

        return run

    return {
        "F.layer_norm fwd+bwd": {
            "F.layer_norm fwd+bwd": both(F.layer_norm, w, b),
            "layer_norm fwd+bwd": both(functional.layer_norm, w, b),
        },
        "F.rms_norm fwd+bwd": {
            "F.rms_norm fwd+bwd": both(F.rms_norm, w),
            "rms_norm fwd+bwd": both(functional.rms_norm, w),
        },
    }


def _emulation_methods(x: torch.Tensor) -> Groups:
    d = x.shape[-1]
    l2: dict[str, Callable[[], object]] = {"iterl2norm": lambda: iterl2norm(x)}
    for fmt in EMULATED:
        l2[f"iterl2norm fmt={fmt}"] = lambda fmt=fmt: iterl2norm(x, fmt=fmt)
    ln: dict[str, Callable[[], object]] = {"layer_norm": lambda: functional.layer_norm(x, (d,))}
    for fmt in ("bf16", "fp16"):
        ln[f"layer_norm fmt={fmt}"] = lambda fmt=fmt: functional.layer_norm(x, (d,), fmt=fmt)
    return {"iterl2norm": l2, "layer_norm": ln}


def _torch_ops_methods(x: torch.Tensor) -> Groups:
    """The torch-op paths the kernels replace, in rounds of their own: their
    large temporaries change what the allocator hands the other methods (fresh
    pages to fault in), so timing them among the others would slow those."""
    d = x.shape[-1]
    w, b = _affine(x)

    def layer_norm_ops():
        with _fused.disabled():
            return functional.layer_norm(x, (d,), w, b)

    def bf16_ops():
        with _fused.disabled():
            return iterl2norm(x, fmt="bf16")

    return {
        "F.layer_norm": {
            "F.layer_norm": lambda: F.layer_norm(x, (d,), w, b),
            "layer_norm (torch ops)": layer_norm_ops,
        },
        "iterl2norm": {
            "iterl2norm": lambda: iterl2norm(x),
            "iterl2norm fmt=bf16 (torch ops)": bf16_ops,
        },
    }


def _page_fault_methods(x: torch.Tensor) -> Groups:
    """Writing a tensor that was just allocated against rewriting one already
    touched: what a fresh output's page faults cost (a large allocation gets
    new pages from the OS on every call)."""
    reused = torch.empty_like(x)
    reused.fill_(1.0)
    return {
        "fill_ reused tensor": {
            "fill_ reused tensor": lambda: reused.fill_(1.0),
            "fill_ fresh tensor": lambda: torch.empty_like(x).fill_(1.0),
        }
    }


def _call_methods(x: torch.Tensor) -> Groups:
    """A few short rows: the fixed cost of one call (argument checks, dispatch),
    which the large shapes hide."""
    d = x.shape[-1]
    w, b = _affine(x)
    return {
        "F.layer_norm": {
            "F.layer_norm": lambda: F.layer_norm(x, (d,), w, b),
            "layer_norm": lambda: functional.layer_norm(x, (d,), w, b),
            "rms_norm": lambda: functional.rms_norm(x, (d,), w),
        }
    }


_CASES: dict[str, Callable[[torch.Tensor], Groups]] = {
    "forward": _forward_methods,
    "backward": _backward_methods,
    "emulation": _emulation_methods,
    "torch_ops": _torch_ops_methods,
    "page_faults": _page_fault_methods,
    "call": _call_methods,
}


_FIRST_CALL = """
import time
t0 = time.perf_counter()
import torch, iterl2norm
from iterl2norm import _fused
t1 = time.perf_counter()
x = torch.randn(8, 576)
iterl2norm.layer_norm(x, (576,))
t2 = time.perf_counter()
iterl2norm.layer_norm(x, (576,))
t3 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, int(_fused.available()))
"""


def _timed_in_a_fresh_interpreter(code: str, timeout: int, env=None) -> list[float]:
    """The numbers ``code`` prints, run by a new Python process."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
        env=env,
    ).stdout.split()
    return [float(v) for v in out]


def first_call() -> list[Row]:
    """In a fresh interpreter: the first layer_norm call against the second
    (the kernels already built, at install or in the first-use cache), and the
    import of torch plus iterl2norm."""
    imported, first, second = _timed_in_a_fresh_interpreter(_FIRST_CALL, 300)[:3]
    return [
        Row(
            "first_call",
            "8x576",
            "fp32",
            "layer_norm second call",
            "layer_norm second call",
            second * 1e3,
            1.0,
            1,
        ),
        Row(
            "first_call",
            "8x576",
            "fp32",
            "layer_norm first call",
            "layer_norm second call",
            first * 1e3,
            first / second,
            1,
        ),
        Row(
            "first_call",
            "-",
            "-",
            "import torch, iterl2norm",
            "layer_norm second call",
            imported * 1e3,
            imported / second,
            1,
        ),
    ]


_COMPILED_FIRST_CALL = """
import time
import torch, iterl2norm
x = torch.randn(8, 576)
module = iterl2norm.IterRMSNorm(576)
compiled = torch.compile(module, fullgraph=True)
t0 = time.perf_counter()
compiled(x)
t1 = time.perf_counter()
compiled(x)
t2 = time.perf_counter()
print(t1 - t0, t2 - t1)
"""


def compiled_first_call() -> list[Row]:
    """In a fresh interpreter: the first call of ``torch.compile(IterRMSNorm(576))``
    (Dynamo's trace and Inductor's code generation and C++ compile, with a cold
    cache directory) against its second call."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache}
        first, second = _timed_in_a_fresh_interpreter(_COMPILED_FIRST_CALL, 900, env)
    name, reference = "compiled IterRMSNorm first call", "compiled IterRMSNorm second call"
    return [
        Row("first_call", "8x576", "fp32", reference, reference, second * 1e3, 1.0, 1),
        Row("first_call", "8x576", "fp32", name, reference, first * 1e3, first / second, 1),
    ]


def _model_rows(plan: Plan, tick) -> list[Row]:
    from .models import load_causal_lm
    from .patching import patch_model

    model, _ = load_causal_lm("smollm2", torch.float32)
    patched = copy.deepcopy(model)  # two models, so that the timed calls only run them
    patch_model(patched)
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(0, model.config.vocab_size, (1, plan.model_tokens), generator=gen)

    def forward(lm):
        def run():
            with torch.inference_mode():
                lm(ids)

        return run

    rounds = max(3, plan.rounds // 3)  # a forward pass takes seconds
    methods = {"SmolLM2-135M unpatched": forward(model), "SmolLM2-135M patched": forward(patched)}
    reference = {name: "SmolLM2-135M unpatched" for name in methods}
    if plan.compiled:
        # torch.compile (Inductor) of both: the patched norms are the package's
        # operators in the one graph. Warm-up compiles them.
        methods["SmolLM2-135M compiled"] = forward(torch.compile(model))
        methods["SmolLM2-135M patched, compiled"] = forward(torch.compile(patched))
        reference.update(dict.fromkeys(list(methods)[2:], "SmolLM2-135M compiled"))
    medians = round_robin(methods, rounds, 1, tick)
    return _rows("model", (1, plan.model_tokens), "fp32", medians, reference, rounds)


def model_available() -> bool:
    try:
        from .models import packaged_model_dir

        packaged_model_dir("smollm2")
        import transformers  # noqa: F401
    except (ImportError, ValueError, OSError):
        return False
    return True


def run(plan: Plan, progress: bool = True) -> list[Row]:
    """Every case of ``plan``; rows in the order of the table."""
    cases = [("forward", s, dt) for s in plan.shapes for dt in DTYPES]
    backward_shapes = plan.shapes[:1] if plan.quick else plan.shapes
    cases += [("backward", s, dt) for s in backward_shapes for dt in DTYPES]
    cases += [("emulation", plan.emulation_shape, "fp32")]
    if not plan.quick:
        cases += [
            ("torch_ops", plan.emulation_shape, "fp32"),
            ("page_faults", plan.emulation_shape, "fp32"),
            ("call", CALL_SHAPE, "fp32"),
        ]
    with_model = plan.model and model_available()
    total = sum(plan.rounds_of(case) for case, _, _ in cases)
    total += max(3, plan.rounds // 3) if with_model else 0
    bar = progress_bar(total, unit="round", desc="bench", enabled=progress)
    rows: list[Row] = []
    gen = torch.Generator().manual_seed(0)
    for case, shape, dtype in cases:
        bar.set_postfix_str(f"{case} {'x'.join(map(str, shape))} {dtype}")
        x = torch.randn(shape, generator=gen).to(DTYPES[dtype])
        groups = _CASES[case](x)
        methods = {name: fn for group in groups.values() for name, fn in group.items()}
        refs = {name: ref for ref, group in groups.items() for name in group}
        rounds = plan.rounds_of(case)
        medians = round_robin(methods, rounds, plan.warmup, lambda: bar.update(1))
        rows += _rows(case, shape, dtype, medians, refs, rounds)
        del x, methods, groups
    if with_model:
        bar.set_postfix_str("SmolLM2-135M")
        rows += _model_rows(plan, lambda: bar.update(1))
    bar.close()
    if plan.first_call:
        rows += first_call()
        if plan.compiled:
            rows += compiled_first_call()
    return rows


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def environment() -> dict[str, str]:
    """Versions, machine and the settings that move the numbers."""
    env = shared_environment()
    return {
        "date": env["date"],
        "git_revision": env["git_revision"],
        "iterl2norm": env["iterl2norm"],
        "torch": env["torch"],
        "python": env["python"],
        "cpu": _cpu_model(),
        "threads": env["cpu_threads"],
        "kernels": _fused.isa() if _fused.available() else "no",  # the variant that ran
        "torch_thp": os.environ.get("THP_MEM_ALLOC_ENABLE", "0"),
    }


CSV_FIELDS = [
    *Row.__dataclass_fields__,
    "date",
    "git_revision",
    "iterl2norm",
    "torch",
    "python",
    "cpu",
    "threads",
    "kernels",
    "torch_thp",
    "plan",
]


def append_csv(path: Path, rows: list[Row], env: dict[str, str], plan: Plan) -> None:
    new = not path.exists() or path.stat().st_size == 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        if new:
            writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    **asdict(row),
                    **env,
                    "p50_ms": f"{row.p50_ms:.4g}",
                    "ratio": f"{row.ratio:.3f}",
                    "plan": "quick" if plan.quick else "full",
                }
            )


def as_dicts(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]
