"""The figure of `python -m nanogpt.scaling tune-fit --plots DIR` (tuned.png), drawn like
nanogpt.scaling.plot's figures: matplotlib's object-oriented API on the Agg canvas, no pyplot.

Left: loss vs learning rate of each budget's best size at its best batch, the parabola through
the points near the minimum and the tuned optimum (a star). Middle: lr_opt vs C with the power
law fitted on all budgets and the one fitted without the largest (dashed), whose prediction
at the largest is the hold-out check. Right: the same for the batch size.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from nanogpt.scaling.tune import WINDOW, AxisOptimum, HoldOut, TuneFit


def _draw_axis_curve(ax, axis: AxisOptimum, color, label: str) -> None:
    ax.plot(axis.values, axis.losses, "o-", color=color, ms=3, lw=1, label=label)
    i = int(np.argmin(axis.losses))
    lo, hi = max(0, i - WINDOW), min(len(axis.values), i + WINDOW + 1)
    if axis.interior:
        x = np.log(axis.values[lo:hi])
        coef = np.polyfit(x, axis.losses[lo:hi], 2)
        grid = np.linspace(x.min(), x.max(), 50)
        ax.plot(np.exp(grid), np.polyval(coef, grid), color=color, lw=2, alpha=0.5)
    ax.plot(axis.opt, axis.loss, marker="*", ms=12, color=color, mec="k", alpha=1.0 if axis.interior else 0.4)


def _draw_law(ax, xs, values, law, hold: HoldOut | None, name: str, against: str) -> None:
    ax.scatter(xs, values, color="k", zorder=3, label=f"tuned {name}")
    grid = np.logspace(np.log10(min(xs)) - 0.2, np.log10(max(xs)) + 0.2, 50)
    ax.plot(grid, law.predict(grid), "r-", label=f"{name} ~ {against}^{law.a:.3f}")
    if hold is not None:
        # the law without the largest point: a line through the smaller ones' fit
        x, y = np.log(xs[:-1]), np.log(values[:-1])
        slope, intercept = np.polyfit(x, y, 1)
        ax.plot(grid, np.exp(intercept + slope * np.log(grid)), "b--", lw=1,
                label=f"without the largest: {hold.error:+.0%} there")
        if math.isfinite(hold.interval[0]):
            ax.errorbar([hold.x], [hold.predicted], yerr=[[hold.predicted - hold.interval[0]],
                                                          [hold.interval[1] - hold.predicted]],
                        fmt="bs", ms=5, capsize=3)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C" if against == "C" else "parameters N", ylabel=name)
    if np.ptp(np.log(values)) < 1e-6:  # one optimum everywhere: a flat law, not a zoom into float noise
        ax.set_ylim(values[0] / 2, values[0] * 2)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")


def plot_tune_fit(fit: TuneFit, out) -> Path:
    ncols = 3 if fit.batch_law else 2
    fig = Figure(figsize=(6 * ncols, 4.2), layout="constrained")
    axes = fig.subplots(1, ncols)
    for i, b in enumerate(fit.points):
        _draw_axis_curve(axes[0], b.lr, f"C{i % 10}", f"C={b.C:.2g}, N={b.N:.2g}")
    axes[0].set(xscale="log", xlabel="learning rate", ylabel="val loss (best batch)",
                title=f"lr sweep per {'budget' if fit.against == 'C' else 'size'} (star: tuned)")
    axes[0].legend(fontsize="small")
    axes[0].grid(alpha=0.3, which="both")
    _draw_law(axes[1], fit.xs, np.array([b.lr.opt for b in fit.points]), fit.lr_law, fit.lr_holdout, "lr_opt",
              fit.against)
    if fit.batch_law:
        _draw_law(axes[2], fit.xs, np.array([b.batch.opt for b in fit.points]), fit.batch_law, fit.batch_holdout,
                  "batch_opt (tokens)", fit.against)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out
