"""Loss curves of runs, and the scaling-law figures.

    python -m nanogpt.plot sweeps/lr_sweep --out lr_sweep.png       # every run of a sweep, overlaid
    python -m nanogpt.plot runs/a runs/b --x flops --label GPT-2 --label modern --out cmp.pdf

One style for every figure (STYLE: paper-sized fonts, titles naming the sweep or run, units on the
axes, log ticks that never overlap, legends outside the data, bands where an interval exists);
the suffix of the output picks the format (png, or pdf/svg: vector).

The training loop calls `plot_run(run_dir)` when a run ends (-> run_dir/loss.png). Figures are made
with matplotlib's object-oriented API on the Agg canvas, never through pyplot: nothing touches the
global backend (a notebook's inline display keeps working) and no figure outlives its function.
Functions that draw take an optional `ax`/`axes` to draw into (e.g. a notebook's pyplot axes).
"""
from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import textwrap
import warnings
from pathlib import Path

import matplotlib
import matplotlib.cm
import matplotlib.colors
import numpy as np
from matplotlib import colormaps, ticker
from matplotlib.figure import Figure

from nanogpt.run.results import (
    find_run_dirs,
    flatten,
    read_config,
    read_metrics,
    read_summary,
)
from nanogpt.scaling.fit import (
    Approach3Fit,
    Bootstrap,
    IsoFLOPFit,
    compute_frontier,
    group_by_compute,
    power_law_band,
)

X_LABELS = {"tokens": "tokens seen", "iter": "iteration", "flops": "training compute (FLOPs)"}
FORMATS = ("png", "pdf", "svg")  # pdf and svg are vector: for a paper
LOSS_LABEL = "validation loss (nats/token)"
N_LABEL = "non-embedding parameters N"
C_LABEL = "training compute C (FLOPs)"
LABEL_CHARS = 40  # a legend entry longer than this is cut: a label names a run, it does not describe it

# One look for every figure (the run plots, the scaling figures, the notebooks that call these):
# paper-sized fonts, light grid, no top/right frame. Applied while a figure is drawn only.
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False,
         "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6,
         "legend.frameon": False, "lines.linewidth": 1.4, "savefig.dpi": 150,
         "svg.fonttype": "none", "pdf.fonttype": 42}


def styled(draw):
    """Draw under STYLE (matplotlib reads rcParams when an artist is made, so the style sticks)."""
    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE):
            return draw(*args, **kwargs)
    return wrapper


def _save(fig: Figure, out) -> Path:
    """Write the figure in the format its suffix names (png, pdf or svg)."""
    out = Path(out)
    if out.suffix.lstrip(".").lower() not in FORMATS:
        raise ValueError(f"{out}: a figure is written as {', '.join('.' + f for f in FORMATS)}; "
                         f"name the file with one of those suffixes")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", metadata={"Software": None} if out.suffix == ".png" else None)
    return out


def _axes(ax, ncols: int = 1, width: float = 4.6, height: float = 3.4):
    """The axes to draw into: the caller's, or those of a new Figure (sized for a paper column)."""
    if ax is not None:
        return ax.figure if ncols == 1 else ax[0].figure, ax
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols)


def legend_outside(ax, **kwargs):
    """The legend right of the axes, never over the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, **kwargs)


class ReadableLogLocator(ticker.Locator):
    """Log ticks whose labels fit side by side: at draw time (after the layout has sized the axes)
    the densest of 1-2-5, 1-3 and decade steps with room for every label (~0.6 inch each on x,
    0.3 on y). matplotlib's own choice labels minor ticks inside a decade or two, into each other."""
    STEPS = ((1.0, 2.0, 5.0), (1.0, 3.0), (1.0,))

    def __call__(self):
        return self.tick_values(*self.axis.get_view_interval())

    def _room(self) -> int:
        ax = self.axis.axes
        if self.axis is ax.xaxis:
            return max(1, int(ax.get_position().width * ax.figure.get_figwidth() / 0.6))
        return max(1, int(ax.get_position().height * ax.figure.get_figheight() / 0.3))

    def tick_values(self, vmin, vmax):
        lo, hi = sorted((vmin, vmax))
        if lo <= 0 or not np.isfinite(hi):
            return ticker.LogLocator().tick_values(vmin, vmax)
        decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
        room = self._room()
        options = [[s * 10.0 ** d for d in decades for s in subs if lo <= s * 10.0 ** d <= hi]
                   for subs in self.STEPS + ((1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.0),)]
        # the densest steps that fit and still give two ticks; else the sparsest with two, thinned
        for ticks in options[:-1]:
            if min(2, room) <= len(ticks) <= room:
                return np.array(ticks)
        ticks = next((t for t in options[-2::-1] + options[-1:] if len(t) >= min(2, room)), None)
        if ticks is None:  # a range inside one step: its middle
            return np.array([float(f"{math.sqrt(lo * hi):.2g}")])
        return np.array(ticks[::math.ceil(len(ticks) / room)])


def tidy_log_axis(axis):
    """Readable log ticks (ReadableLogLocator), every chosen tick labelled, no minor labels."""
    axis.set_major_locator(ReadableLogLocator())
    # label every tick the locator chose (matplotlib's thresholds would hide the 2s and 5s again)
    axis.set_major_formatter(ticker.LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(np.inf, np.inf)))
    axis.set_minor_formatter(ticker.NullFormatter())


# --------------------------------------------------------------------------------------------
# Loss curves
# --------------------------------------------------------------------------------------------
def load_curves(run_dir, x: str = "tokens") -> dict[str, np.ndarray]:
    """Train and val loss of a run against `x` (tokens, iter or flops), from metrics.jsonl."""
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {list(X_LABELS)}, got {x!r}")
    metrics = read_metrics(run_dir)
    train = [m for m in metrics if m.get("kind") == "train" and m.get("loss") is not None]
    evals = [m for m in metrics if m.get("kind") == "eval" and m.get("val_loss") is not None]
    if not train and not evals:
        raise ValueError(f"{Path(run_dir) / 'metrics.jsonl'}: no train or eval lines to plot")
    scale, key = 1.0, "iter" if x == "iter" else "tokens"
    if x == "flops":  # FLOPs = tokens * flops_per_token, which only the summary knows
        per_token = (read_summary(run_dir) or {}).get("flops_per_token")
        if not per_token:
            raise ValueError(f"{run_dir}: no flops_per_token in summary.json (unfinished run?); "
                             f"plot against tokens instead")
        scale = float(per_token)
    return dict(train_x=np.array([m[key] for m in train], dtype=float) * scale,
                train_loss=np.array([m["loss"] for m in train], dtype=float),
                val_x=np.array([m[key] for m in evals], dtype=float) * scale,
                val_loss=np.array([m["val_loss"] for m in evals], dtype=float))


def _short_key(key: str) -> str:
    """model.n_layer -> n_layer; model.name -> model (a preset's name says more than "name")."""
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def _truncate(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def run_labels(run_dirs) -> list[str]:
    """A short label per run from the config values that differ between the runs ("n_layer=4
    lr=0.001"): recipe names first (variant, experiment, *.name), as many keys as fit in
    LABEL_CHARS, then "+k more"; the directory name when the configs say nothing or the labels
    would clash."""
    configs = [flatten(read_config(d)) for d in run_dirs]
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    # a recipe's name (variant=modern, optim.name=muon) tells two recipes apart better than any value
    rank = {"variant": 0, "experiment": 1}
    differing.sort(key=lambda k: (rank.get(k, 2 if k.endswith(".name") else 3), k))
    labels = []
    for d, c in zip(run_dirs, configs):
        shown = []
        for i, k in enumerate(differing):
            item = f"{_short_key(k)}={c.get(k)}"
            more = len(differing) - i - 1
            if shown and len(" ".join(shown + [item])) + (len(f" +{more} more") if more else 0) > LABEL_CHARS:
                break
            shown.append(item)
        more = len(differing) - len(shown)
        label = " ".join(shown) + (f" +{more} more" if more else "")
        labels.append(_truncate(label) if label and len(run_dirs) > 1 else _truncate(Path(d).name))
    if len(set(labels)) < len(labels):  # cut to the same text: the directory names instead
        labels = [_truncate(Path(d).name) for d in run_dirs]
    return labels


def _positive(x, y):
    """The points a log axis can show (x > 0): an iteration-0 eval sits at 0 tokens/FLOPs."""
    keep = x > 0
    return x[keep], y[keep]


def _draw_curves(ax, curves: dict, color, label: str, log_x: bool = False):
    """Train loss faint, validation loss as markers joined by a line, both in the run's colour."""
    has_val = len(curves["val_x"]) > 0  # the label goes on the val curve when there is one
    train = (curves["train_x"], curves["train_loss"])
    val = (curves["val_x"], curves["val_loss"])
    if log_x:
        train, val = _positive(*train), _positive(*val)
    if len(train[0]):
        ax.plot(*train, color=color, alpha=0.35, lw=0.9, label=None if has_val else label)
    if has_val:
        ax.plot(*val, color=color, marker="o", ms=3.5, lw=1.4, label=label)


@styled
def plot_run(run_dir, out=None) -> Path:
    """run_dir/loss.png (or `out`): train loss (faint) and val loss (dots) against tokens.
    Raises ValueError when metrics.jsonl has nothing to plot."""
    curves = load_curves(run_dir)
    fig, ax = _axes(None)
    _draw_curves(ax, curves, "C0", "validation" if len(curves["val_x"]) else "train")
    if len(curves["val_x"]) and len(curves["train_x"]):
        ax.plot([], [], color="C0", alpha=0.35, lw=0.9, label="train")
    ax.set(xlabel=X_LABELS["tokens"], ylabel="loss (nats/token)",
           title=f"{_truncate(Path(run_dir).name, 60)}: loss")  # a Hydra run name can be 100+ characters
    ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))  # 2M, not 2 with "1e6" in the corner
    handles = _draw_hellaswag(ax, run_dir)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles)
    return _save(fig, out or Path(run_dir) / "loss.png")


def _draw_hellaswag(ax, run_dir) -> list:
    """HellaSwag acc_norm (task.hellaswag_interval) on a right-hand axis; the lines drawn."""
    points = [m for m in read_metrics(run_dir) if m.get("kind") == "hellaswag" and m.get("acc_norm") is not None]
    if not points:
        return []
    right = ax.twinx()
    right.spines["right"].set_visible(True)
    right.grid(False)
    lines = right.plot([m["tokens"] for m in points], [m["acc_norm"] for m in points], color="C3", marker="s",
                       ms=3, lw=1.5, label="HellaSwag acc_norm")
    right.set_ylabel("HellaSwag acc_norm (0.25: chance)")
    return lines


def _common_name(run_dirs) -> str:
    """What a set of runs is called: their common directory's name (a sweep), else the run's."""
    if len(run_dirs) == 1:
        return Path(run_dirs[0]).name
    common = Path(os.path.commonpath([str(Path(d).resolve()) for d in run_dirs]))
    return common.name or "runs"


@styled
def plot_runs(run_dirs, out, x: str = "tokens", ax=None, labels=None, title: str | None = None) -> Path | Figure:
    """Overlay several runs (a sweep): faint train loss, val loss as markers and lines, one colour
    per run, labelled `labels` or by what differs in their configs (short). The legend sits right
    of the axes. Runs with nothing to plot are skipped with a warning."""
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {list(X_LABELS)}, got {x!r}")
    run_dirs = [Path(d) for d in run_dirs]
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs: give one --label per run, in order")
    labels = [_truncate(str(lab)) for lab in labels] if labels is not None else run_labels(run_dirs)
    fig, ax = _axes(ax, width=5.2)
    log_x = x == "flops"
    drawn, first = 0, []
    for i, (d, label) in enumerate(zip(run_dirs, labels)):
        try:
            curves = load_curves(d, x)
        except ValueError as e:
            warnings.warn(f"skipping {d}: {e}")
            continue
        _draw_curves(ax, curves, f"C{i % 10}", label, log_x=log_x)
        first += [v[v > 0].min() for v in (curves["train_x"], curves["val_x"]) if np.any(v > 0)]
        drawn += 1
    if not drawn:
        raise ValueError("none of the runs has anything to plot")
    ax.set(xlabel=X_LABELS[x], ylabel="loss (nats/token)",
           title=title or f"{_truncate(_common_name(run_dirs), 60)}: loss vs {X_LABELS[x].split(' (')[0]}")
    if x == "tokens":
        ax.xaxis.set_major_formatter(ticker.EngFormatter(sep=""))
    if log_x:  # start at the first positive value: 0 FLOPs (iteration 0) has no place on a log axis
        ax.set_xscale("log")
        if first:
            ax.set_xlim(left=min(first) / 1.15)
        tidy_log_axis(ax.xaxis)
    ax.plot([], [], color="grey", alpha=0.35, lw=0.9, label="(faint: train loss; dots: validation)")
    _legend_below(fig, ax)
    return _save(fig, out) if out else fig


# --------------------------------------------------------------------------------------------
# Scaling-law figures (nanogpt.scaling.collect fit --plots)
# --------------------------------------------------------------------------------------------
def _title(name: str | None, what: str) -> str:
    return f"{name}: {what}" if name else what


@styled
def plot_loss_vs_flops(C, L, N=None, fit: Approach3Fit | None = None, ax=None, out=None, *, D=None,
                       boot: Bootstrap | None = None, title: str | None = None, loss_label: str = LOSS_LABEL,
                       n_label: str = N_LABEL, rtol: float = 0.1, yerr=None):
    """Every run's loss against its FLOPs (coloured by N) and the compute-efficient frontier: the
    runs that beat every cheaper run, joined. With an approach-3 fit, its loss at the
    compute-optimal N and D (band: the bootstrap's 95% interval), drawn at the runs' own FLOPs
    count: the fit knows C = 6ND, the runs also count attention, so the curve is moved by their
    median C / 6ND (needs N and D; else drawn at 6ND). `yerr`: each point's std over seeds
    (nanogpt.scaling.seeds), drawn as error bars."""
    C, L = np.asarray(C, dtype=float), np.asarray(L, dtype=float)
    fig, ax = _axes(ax, width=5.2)
    if yerr is not None:
        ax.errorbar(C, L, yerr=np.nan_to_num(np.asarray(yerr, dtype=float)), fmt="none", ecolor="0.4",
                    elinewidth=0.8, capsize=2, zorder=1, label="± std over seeds")
    if N is not None:
        N = np.asarray(N, dtype=float)
        points = ax.scatter(C, L, c=N, cmap="viridis", s=20, zorder=3, edgecolors="none",
                            norm=matplotlib.colors.LogNorm(), label="runs")
        fig.colorbar(points, ax=ax, label=n_label, pad=0.02)
    else:
        ax.scatter(C, L, s=20, zorder=3, label="runs")
    front = compute_frontier(C, L, rtol=rtol)
    ax.plot(C[front], L[front], "k-", lw=1.0, marker="o", mfc="none", ms=7, zorder=4,
            label="compute-efficient frontier (best run per budget)")
    if fit is not None:
        ratio = 1.0
        if N is not None and D is not None:
            ratio = float(np.median(C / (6 * N * np.asarray(D, dtype=float))))
        grid = np.logspace(np.log10(C.min()), np.log10(C.max()), 100)
        C6 = grid / ratio  # the budget in the fit's own units (6ND)
        ax.plot(grid, fit.predict(*fit.compute_optimal(C6)), "C3--", lw=1.3, zorder=2,
                label="approach 3: L at the optimal N, D" + (" (degenerate fit)" if fit.degenerate else ""))
        if boot is not None:
            lo, hi = boot.optimal_loss_interval(C6)
            ax.fill_between(grid, lo, hi, color="C3", alpha=0.15, lw=0, label=f"{boot.level:.0%} bootstrap interval")
    ax.set(xscale="log", xlabel=C_LABEL, ylabel=loss_label, title=_title(title, "loss vs compute"))
    tidy_log_axis(ax.xaxis)
    _legend_below(fig, ax)
    return _save(fig, out) if out else fig


def _legend_below(fig, ax):
    """Below the figure, never over the data and never widening it (a colour bar may take the
    right-hand side); in a caller's figure, beside its axes."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    if fig.get_layout_engine() is not None and len(fig.axes) <= 2:  # ours: the axes and its colour bar
        ncols = 2 if max(len(label) for label in labels) <= 30 else 1
        fig.legend(handles, labels, loc="outside lower center", ncols=min(ncols, len(labels)))
    else:
        legend_outside(ax)


def _budget_groups(data, rtol):
    """(C, N, L) per budget group of the raw runs, for the curves drawn when no parabola fits."""
    for idx in group_by_compute(data["C"], rtol):
        order = idx[np.argsort(data["N"][idx])]
        yield float(np.exp(np.log(data["C"][idx]).mean())), data["N"][order], data["L"][order]


@styled
def plot_isoflops(iso: IsoFLOPFit | None = None, axes=None, out=None, *, data=None, rtol: float = 0.1,
                  fit3: Approach3Fit | None = None, boot: Bootstrap | None = None, title: str | None = None,
                  loss_label: str = LOSS_LABEL, n_label: str = N_LABEL):
    """Left: loss vs N per budget with its parabola and minimum (stars; faint: outside the sizes
    tried). Right: N_opt vs C, approach 2's power law with its 95% band and, given fit3, approach
    3's line with its bootstrap band. With `data` (fit_data's dict) and no `iso`, the raw curves
    only: what the runs show when no parabola could be fitted."""
    if iso is None and data is None:
        raise ValueError("plot_isoflops needs an IsoFLOPFit or the runs' data")
    if iso is None and axes is None:  # the raw curves alone: one panel
        fig, ax = _axes(None, width=5.2)
        ax2 = None
    else:
        fig, (ax, ax2) = _axes(axes, ncols=2, width=4.4)
    colors = colormaps["plasma"]
    if iso is not None:
        groups = [(p.C, p.N, p.L, p) for p in iso.profiles]
    else:
        groups = [(C, N, L, None) for C, N, L in _budget_groups(data, rtol)]
    for i, (C, N, L, p) in enumerate(groups):
        color = colors(0.85 * i / max(len(groups) - 1, 1))
        ax.scatter(N, L, color=color, s=18, zorder=3, label=f"C = {_sci(C)}")
        if p is None:
            ax.plot(N, L, color=color, lw=0.8, alpha=0.6)
            continue
        x = np.linspace(np.log(N.min()) - 0.2, np.log(N.max()) + 0.2, 100)
        ax.plot(np.exp(x), np.polyval(p.coef, x), color=color, lw=1)
        ax.plot(p.N_opt, p.L_opt, marker="*", ms=10, color=color, mec="k", mew=0.6, zorder=4,
                alpha=1.0 if p.interior else 0.35, ls="none")
    if iso is not None:
        ax.plot([], [], marker="*", ms=10, color="w", mec="k", ls="none", label="fitted minimum")
    ax.set(xscale="log", xlabel=n_label, ylabel=loss_label,
           title=_title(title, "IsoFLOP profiles" if iso is not None else "loss vs N per budget (no parabola fitted)"))
    tidy_log_axis(ax.xaxis)
    legend_outside(ax)
    if iso is None:
        if ax2 is not None:  # a caller's second axes: say why it stays empty
            ax2.set_axis_off()
            ax2.text(0.5, 0.5, "approach 2: no fit\n(needs at least two budgets\nwith a minimum)",
                     ha="center", va="center", transform=ax2.transAxes, color="0.4")
        return _save(fig, out) if out else fig
    Cs = np.array([p.C for p in iso.profiles])
    N_opts = np.array([p.N_opt for p in iso.profiles])
    grid = np.logspace(np.log10(Cs.min()) - 0.3, np.log10(Cs.max()) + 0.3, 60)
    ax2.scatter(Cs, N_opts, color="k", zorder=4, s=20, label="approach 2: parabola minima")
    lo_a, hi_a = iso.N_law.ci
    ax2.plot(grid, iso.N_law.predict(grid), "k-", lw=1.2,
             label=f"N_opt \u221d C^{iso.N_law.a:.2f}" + (f" [{lo_a:.2f}, {hi_a:.2f}]" if np.isfinite(lo_a) else ""))
    band = power_law_band(Cs, N_opts, grid, level=0.95)
    if band is not None:
        ax2.fill_between(grid, *band, color="k", alpha=0.12, lw=0, label="95% confidence band")
    if fit3 is not None and not fit3.degenerate:
        ax2.plot(grid, fit3.compute_optimal(grid)[0], "C3--", lw=1.2, label=f"approach 3: C^{fit3.a:.2f}")
        if boot is not None:
            ax2.fill_between(grid, *boot.n_opt_band(grid), color="C3", alpha=0.12, lw=0,
                             label=f"approach 3: {boot.level:.0%} bootstrap band")
    ax2.set(xscale="log", yscale="log", xlabel=C_LABEL, ylabel="compute-optimal N_opt",
            title=_title(title, "compute-optimal model size"))
    tidy_log_axis(ax2.xaxis)
    tidy_log_axis(ax2.yaxis)
    legend_outside(ax2)
    return _save(fig, out) if out else fig


def _sci(x: float) -> str:
    """1e12 -> "1e12", 3e12 -> "3e12": short budget names for legends."""
    mantissa, exponent = f"{x:.1e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


@styled
def plot_approach3(N, D, L, fit: Approach3Fit, axes=None, out=None, *, boot: Bootstrap | None = None,
                   title: str | None = None, loss_label: str = LOSS_LABEL, n_label: str = N_LABEL):
    """Left: fitted vs measured loss. Right: loss vs tokens per model size with the fitted curves."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    fig, (ax, ax2) = _axes(axes, ncols=2, width=4.4)
    pred = fit.predict(N, D)
    ax.scatter(L, pred, s=16, zorder=3)
    lim = [min(L.min(), pred.min()), max(L.max(), pred.max())]
    ax.plot(lim, lim, "k--", lw=0.8, label="fitted = measured")
    params = [f"E={fit.E:.3g}, A={fit.A:.3g}, B={fit.B:.3g}", f"\u03b1={fit.alpha:.3f}, \u03b2={fit.beta:.3f}"]
    if fit.degenerate:  # said on the figure too: a reader of the PNG never saw the warning
        params += ["DEGENERATE:"] + [line for p in fit.problems for line in textwrap.wrap(p, 44)]
    ax.text(0.03, 0.97, "\n".join(params), transform=ax.transAxes, va="top", fontsize=7,
            color="C3" if fit.degenerate else "0.2")
    ax.set(xlabel=f"measured {loss_label}", ylabel="fitted L(N, D)", title=_title(title, "approach 3 fit"))
    ax.set_aspect("equal", adjustable="datalim")
    sizes = np.unique(N)
    norm = matplotlib.colors.LogNorm(sizes.min(), sizes.max()) if len(sizes) > 1 else None
    for n in sizes:
        color = colormaps["viridis"](norm(n) if norm else 0.5)
        sel = N == n
        ax2.scatter(D[sel], L[sel], color=color, s=16, zorder=3)
        d = np.logspace(np.log10(D[sel].min()) - 0.15, np.log10(D[sel].max()) + 0.15, 50)
        ax2.plot(d, fit.predict(n, d), color=color, lw=0.9)
    if norm:
        fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap="viridis"), ax=ax2, label=n_label, pad=0.02)
    ax2.set(xscale="log", xlabel="tokens D", ylabel=loss_label,
            title=_title(title, "loss vs tokens per size (lines: fit)"))
    tidy_log_axis(ax2.xaxis)
    return _save(fig, out) if out else fig


def _output_path(paths, out, fmt) -> Path:
    """--out as given (its suffix must match --format when both are given), else loss.FORMAT
    beside the one path, or in the working directory."""
    if out:
        out = Path(out)
        suffix = out.suffix.lstrip(".").lower()
        if fmt and suffix != fmt:
            raise ValueError(f"--out {out} and --format {fmt} disagree: name the file *.{fmt}, or drop --format")
        return out
    name = f"loss.{fmt or 'png'}"
    return Path(paths[0]) / name if len(paths) == 1 else Path(name)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanogpt.plot",
                                     description="Overlay the loss curves of runs (or of every run in a sweep).")
    parser.add_argument("paths", nargs="+", help="run directories, or sweep directories holding runs")
    parser.add_argument("--out", help="figure to write, .png, .pdf or .svg (default: PATH/loss.png for one "
                                      "path, else ./loss.png)")
    parser.add_argument("--format", choices=FORMATS, help="figure format (pdf, svg: vector, for a paper)")
    parser.add_argument("--x", choices=list(X_LABELS), default="tokens", help="the x axis")
    parser.add_argument("--label", action="append", metavar="TEXT",
                        help="legend label of a run, once per run in the order the runs are found "
                             "(default: a short name from the config keys that differ)")
    parser.add_argument("--title", help="figure title (default: the sweep's or run's directory name)")
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        run_dirs = find_run_dirs(args.paths)
        if not run_dirs:
            raise ValueError(f"no run directories under {' '.join(args.paths)}")
        if args.label and len(args.label) != len(run_dirs):
            found = ", ".join(str(d) for d in run_dirs[:6]) + (" ..." if len(run_dirs) > 6 else "")
            raise ValueError(f"{len(args.label)} --label for {len(run_dirs)} runs ({found}): give one per run, in this order")
        out = _output_path(args.paths, args.out, args.format)
        print(f"wrote {plot_runs(run_dirs, out, x=args.x, labels=args.label, title=args.title)}")
    except (FileNotFoundError, ValueError) as e:  # the user's input: one line, exit 2 (as `scaling`)
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
