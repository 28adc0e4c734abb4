"""The study's figures (matplotlib, written as PNG without a display)."""

from __future__ import annotations

from pathlib import Path

from .._env import pyplot
from ..formats import get_format
from ._shared import COST_INPUT, HEADLINE, PEER_NAMES, cost_d, method_key, pareto


def _grid(plt, n: int, title: str):
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, list(axes.flat[:n])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    fig.clf()
    return path


def _style(key: tuple) -> dict:
    method, _, _, steps = key
    if method == "iterl2norm":
        return {"color": "C0", "alpha": 0.35 + 0.13 * steps, "marker": "o", "ms": 3}
    colors = {"fisr": "C1", "invsqrt2": "C2", "sqrt23": "C3", "exact": "k"}
    return {"color": colors[method], "ls": "--" if steps == 1 else "-", "marker": "s", "ms": 3}


def plot_precision(results: dict, out: Path, plt) -> Path:
    rows = [r for r in results["precision"] if r["input"] == "gaussian"]
    formats = list(dict.fromkeys(r["format"] for r in rows))
    fig, axes = _grid(plt, len(formats), "Mean absolute error vs d (Gaussian inputs)")
    for ax, fmt in zip(axes, formats, strict=True):
        for key in HEADLINE:
            pts = sorted(
                (r["d"], r["mean_abs"], r["label"])
                for r in rows
                if r["format"] == fmt and method_key(r) == key
            )
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=pts[0][2], **_style(key))
        ax.set(title=fmt, xscale="log", yscale="log", xlabel="d", ylabel="mean |error|")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6)
    return _save(fig, out / "precision.png")


def plot_cost(results: dict, out: Path, plt) -> Path:
    rows = [
        r
        for r in results["precision"]
        if r["input"] == COST_INPUT and r["mode"] == "scalar" and r["method"] != "exact"
    ]
    dims = sorted({r["d"] for r in rows})
    d = cost_d(dims)
    rows = [r for r in rows if r["d"] == d]
    formats = list(dict.fromkeys(r["format"] for r in rows))
    fig, axes = _grid(
        plt, len(formats), f"Error vs multiplies per vector (d = {d}, {COST_INPUT} inputs)"
    )
    # (marker, color, legend label) per kind of point
    kinds = {
        ("iterl2norm", "exponent"): ("o", "C0", "IterL2Norm (exponent start)"),
        ("iterl2norm", "magic"): ("o", "C3", "IterL2Norm (magic start)"),
        ("fisr", "-"): ("s", "C1", "FISR"),
        ("invsqrt2", "-"): ("^", "C2", "InvSqrt2"),
        ("sqrt23", "-"): ("D", "C4", "SQRT_23-bits"),
    }
    for ax, fmt in zip(axes, formats, strict=True):
        pts = [r for r in rows if r["format"] == fmt]
        front = pareto([(r["multiplies"], r["mean_abs"]) for r in pts])
        labelled = set()
        for r, on_front in zip(pts, front, strict=True):
            marker, color, kind = kinds[r["method"], r["init"]]
            ax.scatter(
                r["multiplies"],
                r["mean_abs"],
                marker=marker,
                color=color,
                s=30,
                edgecolor="k" if on_front else "none",
                zorder=3,
                label=None if kind in labelled else kind,
            )
            labelled.add(kind)
            if on_front:  # name the points worth choosing; the legend covers the rest
                ax.annotate(
                    f"{r['steps']}",
                    (r["multiplies"], r["mean_abs"]),
                    fontsize=6,
                    xytext=(4, 2),
                    textcoords="offset points",
                )

        fr = sorted((r["multiplies"], r["mean_abs"]) for r, f in zip(pts, front, strict=True) if f)
        ax.step(
            [p[0] for p in fr],
            [p[1] for p in fr],
            where="post",
            color="k",
            lw=0.8,
            alpha=0.6,
            label="Pareto front",
        )
        ax.set(title=fmt, yscale="log", xlabel="multiplies per vector", ylabel="mean |error|")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6)
    return _save(fig, out / "cost.png")


def plot_modes(results: dict, out: Path, plt) -> Path:
    rows = [
        r
        for r in results["precision"]
        if r["input"] == COST_INPUT and r["method"] == "iterl2norm" and r["init"] == "exponent"
    ]
    dims = sorted({r["d"] for r in rows})
    d = cost_d(dims)
    formats = list(dict.fromkeys(r["format"] for r in rows))
    fig, axes = _grid(plt, len(formats), f"Scalar vs vector mode (d = {d}, {COST_INPUT} inputs)")
    for ax, fmt in zip(axes, formats, strict=True):
        for mode, style in (("scalar", "-o"), ("vector", "--s")):
            pts = sorted(
                (r["steps"], r["mean_abs"])
                for r in rows
                if r["format"] == fmt and r["d"] == d and r["mode"] == mode
            )
            ax.plot(*zip(*pts, strict=True), style, ms=3, label=f"{mode} mode")
        ax.set(title=fmt, yscale="log", xlabel="steps", ylabel="mean |error|")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    return _save(fig, out / "modes.png")


def plot_convergence(results: dict, out: Path, plt, by: str) -> Path:
    rows = results["convergence"]
    formats = list(dict.fromkeys(r["format"] for r in rows))
    if by == "init":
        select, curves, name = (lambda r: r["update_rate"] == 0.5), "init", "convergence.png"
        title = "Worst relative error of q^-1/2 over every q (update rate 1/2)"
    else:
        select, curves, name = (
            (lambda r: r["init"] == "exponent"),
            "update_rate",
            "convergence_rates.png",
        )
        title = "Worst relative error of q^-1/2 over every q (exponent start)"
    fig, axes = _grid(plt, len(formats), title)

    for ax, fmt in zip(axes, formats, strict=True):
        sel = [r for r in rows if r["format"] == fmt and select(r)]
        for value in dict.fromkeys(r[curves] for r in sel):
            pts = sorted(
                (r["steps"], max(r["worst_rel"], 1e-18)) for r in sel if r[curves] == value
            )
            label = f"rate {value:g}" if curves == "update_rate" else f"{value} start"
            ax.plot(*zip(*pts, strict=True), "-o", ms=3, label=label)
        ax.axhline(get_format(fmt).eps, color="k", lw=0.8, ls=":", label="1 ulp of 1")
        ax.set(title=fmt, yscale="log", xlabel="steps", ylabel="worst |a sqrt(q) - 1|")
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=7)
    return _save(fig, out / name)


def plot_methods(results: dict, out: Path, plt) -> Path:
    rows = results["methods"]
    formats = list(dict.fromkeys(r["format"] for r in rows))
    fig, axes = _grid(plt, len(formats), "Worst relative error over every q vs multiplies")
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, fmt in zip(axes, formats, strict=True):
        pts = [r for r in rows if r["format"] == fmt]
        front = pareto([(r["multiplies"], r["worst_rel"]) for r in pts])
        for i, m in enumerate(methods):
            sel = [(r["multiplies"], max(r["worst_rel"], 1e-18)) for r in pts if r["method"] == m]
            peer = m in PEER_NAMES
            ax.plot(
                *zip(*sel, strict=True),
                ls="--" if peer else "-",
                marker="s" if peer else "o",
                ms=3,
                color=f"C{i}",
                label=m,
            )
        fr = sorted((r["multiplies"], r["worst_rel"]) for r, f in zip(pts, front, strict=True) if f)
        ax.step(
            [p[0] for p in fr],
            [p[1] for p in fr],
            where="post",
            color="k",
            lw=2,
            alpha=0.25,
            label="Pareto front",
        )
        ax.axhline(get_format(fmt).eps, color="k", lw=0.8, ls=":", label="1 ulp of 1")
        ax.set(
            title=fmt,
            yscale="log",
            xlabel="multiplies per vector",
            ylabel="worst |a sqrt(q) - 1|",
            xlim=(-0.5, 20.5),
        )
        ax.grid(alpha=0.3, which="both")
    axes[0].legend(fontsize=6)
    return _save(fig, out / "fewer_steps.png")


def plot_all(results: dict, out: Path) -> list[Path]:
    """Every figure the results support; returns their paths."""
    plt = pyplot()
    paths = []
    if results["precision"]:
        inputs = {r["input"] for r in results["precision"]}
        if "gaussian" in inputs:
            paths.append(plot_precision(results, out, plt))
        if COST_INPUT in inputs:
            paths += [plot_cost(results, out, plt), plot_modes(results, out, plt)]

    if results["convergence"]:
        paths += [
            plot_convergence(results, out, plt, "init"),
            plot_convergence(results, out, plt, "rate"),
        ]
    if results.get("methods"):
        paths.append(plot_methods(results, out, plt))
    plt.close("all")
    return paths
