"""Writing the study: report.md, results.json, precision.csv, convergence.csv, plots."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from .._markdown import table
from ._shared import COST_INPUT, HEADLINE, PEER_NAMES, cost_d, method_key, pareto
from .convergence import full_precision_steps, steps_to_converge
from .inputs import DESCRIPTIONS, OPT_DIMS

# The paper's win counts of IterL2Norm (5 steps) over FISR (1 step), out of 9.
PAPER_WINS = {"fp32": "6/9", "bf16": "5/9"}


def _fmt(value: float) -> str:
    return f"{value:.2e}"


def _index(rows: list[dict]) -> dict:
    """{(input, format, d, method key): row}"""
    return {(r["input"], r["format"], r["d"], method_key(r)): r for r in rows}


def wins(rows: list[dict], metric: str = "mean_abs") -> dict[tuple[str, str], tuple[int, int]]:
    """(format, input) -> (d where IterL2Norm 5 steps beats FISR 1 step, number of d)."""
    idx = _index(rows)
    out: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for (inp, fmt, d, key), row in idx.items():
        if key != ("iterl2norm", "exponent", "scalar", 5):
            continue
        fisr = idx.get((inp, fmt, d, ("fisr", "-", "scalar", 1)))
        if fisr is None:
            continue
        out[fmt, inp][0] += row[metric] < fisr[metric]
        out[fmt, inp][1] += 1
    return {k: tuple(v) for k, v in out.items()}


def _file_description(cfg: dict) -> str:
    text = f" (`{cfg['input_file']}`, {cfg.get('input_file_rows', '?')} rows"
    stats = cfg.get("input_file_stats")
    if stats:
        text += (
            f"; the largest |x| is a median {stats['peak_over_rms_median']:.3g} and at most "
            f"{stats['peak_over_rms_max']:.3g} times the row's rms (Gaussian rows: about 3.5), "
            f"rms from {stats['rms_min']:.3g} to {stats['rms_max']:.3g}"
        )
    return text + ")"


def _precision_section(results: dict) -> list[str]:
    rows = results["precision"]
    if not rows:
        return []
    formats = list(dict.fromkeys(r["format"] for r in rows))
    inputs = list(dict.fromkeys(r["input"] for r in rows))
    idx = _index(rows)
    out = [
        "## 1. The paper's comparison: IterL2Norm (5 steps) against FISR (1 step)",
        "",
        "In how many of the nine d does IterL2Norm with the paper's settings (exponent "
        "start, update rate 1/2, 5 steps) have a smaller error than classic FISR with one "
        "Newton step? Error: mean (max) absolute error of the normalized vector against "
        "float64.",
        "",
    ]
    win_mean, win_max = wins(rows, "mean_abs"), wins(rows, "max_abs")
    body = []
    for fmt in formats:
        cells = []
        for inp in inputs:
            if (fmt, inp) in win_mean:
                (a, n), (b, _) = win_mean[fmt, inp], win_max[fmt, inp]
                cells.append(f"{a}/{n} ({b}/{n})")
            else:
                cells.append("-")
        body.append([fmt, *cells, PAPER_WINS.get(fmt, "-")])
    out += [table(["format", *inputs, "paper"], body), ""]
    dims = sorted({r["d"] for r in rows if r["input"] == "gaussian"})
    if dims:
        out += [
            "Mean absolute error per d, Gaussian inputs (every method, input and metric is "
            "in `precision.csv`). Unit Gaussian rows have q close to d, so the exponent "
            "start's error follows d: small where q is near an even power of two (d = 1024, "
            "4096), larger elsewhere (d = 2048, 7168).",
            "",
            "![precision](precision.png)",
            "",
        ]
        for fmt in formats:
            body = []
            for key in HEADLINE:
                cells = [idx.get(("gaussian", fmt, d, key)) for d in dims]
                if any(c is None for c in cells):
                    continue
                body.append([cells[0]["label"], *(_fmt(c["mean_abs"]) for c in cells)])
            out += [f"### {fmt}", "", table(["method", *(f"d={d}" for d in dims)], body), ""]
    out += _cost_section(rows, formats, dims)
    out += _modes_section(rows, formats, dims)
    out += _inputs_section(rows, formats, inputs)
    return out


def _cost_section(rows: list[dict], formats: list[str], dims: list[int]) -> list[str]:
    if not dims:
        return []
    d = cost_d(dims)
    scalar = [
        r
        for r in rows
        if r["input"] == COST_INPUT
        and r["d"] == d
        and r["mode"] == "scalar"
        and r["method"] != "exact"
    ]
    keys = sorted(
        {method_key(r) for r in scalar},
        key=lambda k: (next(r["multiplies"] for r in scalar if method_key(r) == k), k),
    )
    by = {(r["format"], method_key(r)): r for r in scalar}
    front = {}
    for fmt in formats:
        pts = [(by[fmt, k]["multiplies"], by[fmt, k]["mean_abs"]) for k in keys]
        front.update({(fmt, k): p for k, p in zip(keys, pareto(pts), strict=True)})
    body = []
    for k in keys:
        first = by[formats[0], k]
        body.append(
            [
                first["label"],
                str(first["multiplies"]),
                *(_fmt(by[f, k]["mean_abs"]) + (" *" if front[f, k] else "") for f in formats),
            ]
        )
    steps_body = []
    for n in (1, 2, 3):
        for fmt in formats:
            cells = []
            for method, init in (
                ("iterl2norm", "exponent"),
                ("iterl2norm", "magic"),
                ("fisr", "-"),
                ("invsqrt2", "-"),
                ("sqrt23", "-"),
            ):
                r = by.get((fmt, (method, init, "scalar", n)))
                cells.append(_fmt(r["mean_abs"]) if r else "-")
            steps_body.append([str(n), fmt, *cells])
    return [
        "## 2. Equal cost",
        "",
        "The paper sets five IterL2Norm steps against one FISR step. Here every method is "
        "placed by the multiplications it spends per vector beyond the work all share (the "
        "sum of squares, the exponent split and the final scaling; an update rate of 1/2 "
        "is an exponent decrement, not a multiply; see `iterl2norm.cost`). Mean absolute "
        f"error at d = {d}, {COST_INPUT} inputs (their u_0 spread over the whole start "
        "interval; unit Gaussian rows all have q close to d, which favours whichever start "
        "suits d); * marks the Pareto front (no method is both cheaper and more precise).",
        "",
        "![equal cost](cost.png)",
        "",
        table(["method", "multiplies", *formats], body),
        "",
        f"At equal step counts (mean absolute error, d = {d}, {COST_INPUT} inputs):",
        "",
        table(
            [
                "steps",
                "format",
                "IterL2Norm",
                "IterL2Norm, magic start",
                "FISR",
                "InvSqrt2",
                "SQRT_23-bits",
            ],
            steps_body,
        ),
        "",
    ]


def _modes_section(rows: list[dict], formats: list[str], dims: list[int]) -> list[str]:
    if not dims:
        return []
    d = cost_d(dims)
    idx = _index(rows)
    body = []
    for fmt in formats:
        for n in range(1, 6):
            s = idx.get((COST_INPUT, fmt, d, ("iterl2norm", "exponent", "scalar", n)))
            v = idx.get((COST_INPUT, fmt, d, ("iterl2norm", "exponent", "vector", n)))
            if s and v:
                body.append(
                    [
                        fmt,
                        str(n),
                        _fmt(s["mean_abs"]),
                        _fmt(v["mean_abs"]),
                        _fmt(s["norm_rel_max"]),
                        _fmt(v["norm_rel_max"]),
                    ]
                )
    return [
        "## 3. Scalar mode against vector mode",
        "",
        "Scalar mode iterates on the scale a and multiplies the vector once; vector mode "
        "updates every element every step (and reduces |z|^2 again each step). Equal in "
        f"exact arithmetic; the difference is rounding. Inputs: {COST_INPUT}, d = {d}.",
        "",
        "![modes](modes.png)",
        "",
        table(
            [
                "format",
                "steps",
                "mean abs, scalar",
                "mean abs, vector",
                "max norm error, scalar",
                "max norm error, vector",
            ],
            body,
        ),
        "",
    ]


def _inputs_section(rows: list[dict], formats: list[str], inputs: list[str]) -> list[str]:
    keys = [
        ("iterl2norm", "exponent", "scalar", 5),
        ("iterl2norm", "exponent", "vector", 5),
        ("fisr", "-", "scalar", 1),
        ("fisr", "-", "scalar", 2),
        ("sqrt23", "-", "scalar", 2),
        ("exact", "-", "scalar", 0),
    ]
    worst: dict = {}
    labels = {}
    for r in rows:
        k = (r["format"], r["input"], method_key(r))
        worst[k] = max(worst.get(k, 0.0), r["max_abs"])
        labels[method_key(r)] = r["label"]
    body = [
        [fmt, inp, *(_fmt(worst[fmt, inp, k]) if (fmt, inp, k) in worst else "-" for k in keys)]
        for fmt in formats
        for inp in inputs
    ]
    return [
        "## 4. Every input",
        "",
        "Largest absolute error over all d, per input kind:",
        "",
        table(["format", "input", *(labels.get(k, str(k)) for k in keys)], body),
        "",
    ]


def _convergence_section(results: dict) -> list[str]:
    rows = results["convergence"]
    if not rows:
        return []
    steps = steps_to_converge(rows)
    formats = list(dict.fromkeys(r["format"] for r in rows))
    inits = list(dict.fromkeys(r["init"] for r in rows))
    rates = list(dict.fromkeys(r["update_rate"] for r in rows))
    inputs = {r["format"]: (r["inputs"], r["stride"]) for r in rows}
    last = max(r["steps"] for r in rows)

    def show(n):
        return str(n) if n is not None else f"> {last}"

    body = [
        [
            fmt,
            f"{inputs[fmt][0]}" + (f" (every {inputs[fmt][1]}th)" if inputs[fmt][1] > 1 else ""),
            *(show(steps[fmt, init, 0.5]) for init in inits if (fmt, init, 0.5) in steps),
        ]
        for fmt in formats
    ]
    rate_body = [
        [
            fmt,
            *(
                show(steps[fmt, "exponent", rate])
                for rate in rates
                if (fmt, "exponent", rate) in steps
            ),
        ]
        for fmt in formats
    ]
    idx = {(r["format"], r["init"], r["update_rate"], r["steps"]): r for r in rows}

    def cell(row: dict) -> str:
        ulps = row["worst_ulps"]
        return (
            f"{row['worst_rel']:.2e} ({ulps:.2f})"
            if ulps < 10
            else (f"{row['worst_rel']:.2e} ({ulps:.3g})")
        )

    per_step = [
        [
            str(n),
            *(cell(idx[f, "exponent", 0.5, n]) for f in formats if (f, "exponent", 0.5, n) in idx),
        ]
        for n in range(last + 1)
    ]
    return [
        "## 5. Convergence: the worst case over every input",
        "",
        "The estimate of q^-1/2 only ever sees q in [1/2, 2) (the exponent is split off "
        "exactly), so sweeping every value of the format there, both exponent parities, "
        "covers every input. Steps to converge: the first step at which every input is "
        "within 1 ulp of the correctly rounded q^-1/2 in that format. The paper says five.",
        "",
        "Steps to converge, update rate 1/2:",
        "",
        table(["format", "inputs", *inits], body),
        "",
        "Steps to converge, exponent start, per update rate:",
        "",
        table(["format", *(f"rate {r:g}" for r in rates)], rate_body),
        "",
        "Worst relative error (worst distance from the correctly rounded result, in ulps), "
        "exponent start, update rate 1/2:",
        "",
        table(["step", *formats], per_step),
        "",
        "![convergence per start](convergence.png)",
        "",
        "![convergence per update rate](convergence_rates.png)",
        "",
    ]


def _methods_section(results: dict) -> list[str]:
    rows = results.get("methods", [])
    if not rows:
        return []
    formats = list(dict.fromkeys(r["format"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    peers = [m for m in methods if m in PEER_NAMES]
    full = full_precision_steps(rows)
    by = {(r["format"], r["method"], r["steps"]): r for r in rows}

    def reach(fmt, method):
        n = full[fmt, method]
        if n is None:  # not within the steps swept
            return f"> {max(r['steps'] for r in rows if r['method'] == method)}"
        return f"{n} ({by[fmt, method, n]['multiplies']})"

    body = [[m, *(reach(f, m) for f in formats)] for m in methods]
    best = []
    for fmt in formats:

        def cheapest(names, fmt=fmt):
            hits = [
                (by[fmt, m, full[fmt, m]]["multiplies"], full[fmt, m], m)
                for m in names
                if full[fmt, m] is not None
            ]
            return min(hits) if hits else None

        ours = cheapest([m for m in methods if m not in PEER_NAMES])
        theirs = cheapest(peers)
        show = lambda hit: "-" if hit is None else f"{hit[2]}: {hit[1]} steps, {hit[0]}"  # noqa: E731
        best.append([fmt, show(ours), show(theirs)])
    out = [
        "## 6. Fewer steps: schedules against the peers",
        "",
        "Each schedule of `iterl2norm.schedules` (a start and per-step constants derived "
        "minimax by `scripts/derive_schedules.py`) and each peer, worst case over every q "
        "as in section 5. Full precision: every input within 1 ulp of the correctly rounded "
        "q^-1/2. In brackets: multiplies per vector beyond the shared work.",
        "",
        "Steps to full precision (multiplies):",
        "",
        table(["method", *formats], body),
        "",
        "Cheapest way to full precision, by multiplies (then steps):",
        "",
        table(["format", "IterL2Norm schedules", "peers"], best),
        "",
        "![worst case against multiplies](fewer_steps.png)",
        "",
    ]
    for fmt in formats:
        last = max(r["steps"] for r in rows if r["format"] == fmt)
        body = []
        for m in methods:
            cells = []
            for n in range(last + 1):
                r = by.get((fmt, m, n))
                cells.append("" if r is None else f"{r['worst_rel']:.1e} ({r['multiplies']})")
            body.append([m, *cells])
        out += [
            f"Worst relative error after each step (multiplies), {fmt}:",
            "",
            table(["method", *(f"step {n}" for n in range(last + 1))], body),
            "",
        ]
    budgets = (3, 4, 6, 7, 8, 12)
    for fmt in formats:
        body = []
        for m in methods:
            cells = []
            for budget in budgets:
                within = [
                    r["worst_rel"]
                    for r in rows
                    if r["format"] == fmt and r["method"] == m and r["multiplies"] <= budget
                ]
                cells.append(f"{min(within):.1e}" if within else "-")
            body.append([m, *cells])
        out += [
            f"At equal multiplies: the smallest worst-case error within a budget, {fmt}:",
            "",
            table(["method", *(f"<= {b}" for b in budgets)], body),
            "",
        ]
    return out


def render(results: dict, command: str) -> str:
    """The Markdown report."""
    cfg, env = results["config"], results["environment"]
    inputs = [*cfg["inputs"], *(["file"] if cfg.get("input_file") else [])]
    lines = [
        "# IterL2Norm precision study",
        "",
        f"Command: `{command}`",
        "",
        f"iterl2norm {env['iterl2norm']} (git {env['git_revision']}), torch {env['torch']}, "
        f"numpy {env['numpy']}, Python {env['python']}; {env['platform']}, "
        f"{env['cpu_threads']} threads; {env['date']}; {env.get('seconds', '?')} s.",
        "",
        f"Formats {', '.join(cfg['formats'])}; d = {', '.join(map(str, cfg['dims']))}"
        f"{' (the nine OPT models)' if tuple(cfg['dims']) == OPT_DIMS else ''}; "
        f"{cfg['vectors']} vectors per (format, d, input); seed "
        f"{cfg['seed']}. Each method is emulated bit-accurately in the format "
        "(docs/ALGORITHM.md) with fp32 accumulation for 8- and 16-bit formats; inputs are "
        "rounded to the format first and the reference is float64 of the rounded input.",
        "",
        "Inputs:",
        "",
        *(
            f"- **{k}**: {DESCRIPTIONS[k]}" + (_file_description(cfg) if k == "file" else "")
            for k in inputs
        ),
        "",
    ]
    lines += _precision_section(results)
    lines += _convergence_section(results)
    lines += _methods_section(results)
    return "\n".join(lines).rstrip() + "\n"


def write(results: dict, out: Path, command: str, plots: bool = True) -> list[Path]:
    """Write every output of the study to ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    path = out / "results.json"
    path.write_text(json.dumps(results, indent=1) + "\n")
    written.append(path)
    for part in ("precision", "convergence", "methods"):
        rows = results[part]
        if rows:
            path = out / f"{part}.csv"
            with path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
            written.append(path)
    if plots:
        from .plots import plot_all

        written += plot_all(results, out)
    path = out / "report.md"
    path.write_text(render(results, command))
    written.append(path)
    return written
