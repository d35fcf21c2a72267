"""Loss curves of runs, and the scaling-law figures.

    python -m nanogpt.plot sweeps/lr_sweep --out lr_sweep.png       # every run of a sweep, overlaid
    python -m nanogpt.plot runs/a runs/b --x flops

The training loop calls `plot_run(run_dir)` when a run ends (-> run_dir/loss.png). Figures are made
with matplotlib's object-oriented API on the Agg canvas, never through pyplot: nothing touches the
global backend (a notebook's inline display keeps working) and no figure outlives its function.
Functions that draw take an optional `ax`/`axes` to draw into (e.g. a notebook's pyplot axes).
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from nanogpt.run.results import (
    find_run_dirs,
    flatten,
    read_config,
    read_metrics,
    read_summary,
)
from nanogpt.scaling.fit import Approach3Fit, IsoFLOPFit, compute_frontier

X_LABELS = {"tokens": "tokens", "iter": "iteration", "flops": "training FLOPs"}


def _save(fig: Figure, out) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    return out


def _axes(ax, ncols: int = 1, width: float = 6.0):
    """The axes to draw into: the caller's, or those of a new Figure."""
    if ax is not None:
        return ax.figure if ncols == 1 else ax[0].figure, ax
    fig = Figure(figsize=(width * ncols, 4.2), layout="constrained")
    return fig, fig.subplots(1, ncols)


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


def run_labels(run_dirs) -> list[str]:
    """A label per run from the config values that differ between the runs (e.g.
    "model.n_layer=4 optim.lr=0.001"); the directory name when the configs say nothing."""
    configs = [flatten(read_config(d)) for d in run_dirs]
    keys = sorted({k for c in configs for k in c})
    differing = [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]
    labels = []
    for d, c in zip(run_dirs, configs):
        label = " ".join(f"{k}={c.get(k)}" for k in differing)
        labels.append(label if label and len(run_dirs) > 1 else Path(d).name)
    return labels


def _draw_curves(ax, curves: dict, color, label: str):
    has_val = len(curves["val_x"]) > 0  # the label goes on the val curve when there is one
    if len(curves["train_x"]):
        ax.plot(curves["train_x"], curves["train_loss"], color=color, alpha=0.35, lw=1,
                label=None if has_val else label)
    if has_val:
        ax.plot(curves["val_x"], curves["val_loss"], color=color, marker="o", ms=3, lw=1.5, label=label)


def plot_run(run_dir, out=None) -> Path:
    """run_dir/loss.png (or `out`): train loss (faint) and val loss (dots) against tokens.
    Raises ValueError when metrics.jsonl has nothing to plot."""
    curves = load_curves(run_dir)
    fig, ax = _axes(None)
    _draw_curves(ax, curves, "C0", "val loss" if len(curves["val_x"]) else "train loss")
    ax.set(xlabel="tokens", ylabel="loss", title=Path(run_dir).name)
    handles = _draw_hellaswag(ax, run_dir)
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles)
    ax.grid(alpha=0.3)
    return _save(fig, out or Path(run_dir) / "loss.png")


def _draw_hellaswag(ax, run_dir) -> list:
    """HellaSwag acc_norm (task.hellaswag_interval) on a right-hand axis; the lines drawn."""
    points = [m for m in read_metrics(run_dir) if m.get("kind") == "hellaswag" and m.get("acc_norm") is not None]
    if not points:
        return []
    right = ax.twinx()
    lines = right.plot([m["tokens"] for m in points], [m["acc_norm"] for m in points], color="C3", marker="s",
                       ms=3, lw=1.5, label="HellaSwag acc_norm")
    right.set_ylabel("HellaSwag acc_norm (0.25: chance)")
    return lines


def plot_runs(run_dirs, out, x: str = "tokens", ax=None) -> Path | Figure:
    """Overlay several runs (a sweep): faint train loss, val loss with dots, one colour per run,
    labelled by what differs in their configs. Runs with nothing to plot are skipped with a warning."""
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {list(X_LABELS)}, got {x!r}")
    run_dirs = [Path(d) for d in run_dirs]
    fig, ax = _axes(ax, width=8)
    drawn = 0
    for i, (d, label) in enumerate(zip(run_dirs, run_labels(run_dirs))):
        try:
            curves = load_curves(d, x)
        except ValueError as e:
            warnings.warn(f"skipping {d}: {e}")
            continue
        _draw_curves(ax, curves, f"C{i % 10}", label)
        drawn += 1
    if not drawn:
        raise ValueError("none of the runs has anything to plot")
    ax.set(xlabel=X_LABELS[x], ylabel="loss (faint: train, dots: val)")
    if x == "flops":
        ax.set_xscale("log")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, out) if out else fig


# --------------------------------------------------------------------------------------------
# Scaling-law figures (nanogpt.scaling.collect fit --plots)
# --------------------------------------------------------------------------------------------
def plot_loss_vs_flops(C, L, N=None, fit: Approach3Fit | None = None, ax=None, out=None, yerr=None):
    """Every run's loss against its FLOPs (coloured by N), the compute-efficient frontier and,
    with an approach-3 fit, its predicted loss at the compute-optimal N and D. `yerr`: each
    point's std over seeds (nanogpt.scaling.seeds), drawn as error bars."""
    C, L = np.asarray(C, dtype=float), np.asarray(L, dtype=float)
    fig, ax = _axes(ax)
    if yerr is not None:
        ax.errorbar(C, L, yerr=np.nan_to_num(np.asarray(yerr, dtype=float)), fmt="none", ecolor="0.4",
                    elinewidth=0.8, capsize=2, zorder=1, label="± std over seeds")
    if N is not None:
        points = ax.scatter(C, L, c=np.log10(N), cmap="viridis", s=18)
        fig.colorbar(points, ax=ax, label="log10 N")
    else:
        ax.scatter(C, L, s=18)
    # the frontier as a step: the lowest loss reached with at most C FLOPs
    front = compute_frontier(C, L)
    ax.step(np.append(C[front], C.max()), np.append(L[front], L[front][-1]), "k-", where="post",
            lw=1.2, label="frontier (lower envelope)")
    if fit is not None:
        grid = np.logspace(np.log10(C.min()), np.log10(C.max()), 100)
        ax.plot(grid, fit.predict(*fit.compute_optimal(grid)), "r--", lw=1.2,
                label="approach 3 at N_opt(C)")
    ax.set(xscale="log", xlabel="training FLOPs C", ylabel="val loss")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return _save(fig, out) if out else fig


def plot_isoflops(iso: IsoFLOPFit, axes=None, out=None):
    """Left: loss vs N per budget with its parabola and minimum. Right: N_opt vs C and the power law."""
    fig, (ax, ax2) = _axes(axes, ncols=2)
    for i, p in enumerate(iso.profiles):
        color = f"C{i % 10}"
        ax.scatter(p.N, p.L, color=color, s=18, label=f"C={p.C:.2g}")
        x = np.linspace(np.log(p.N.min()) - 0.3, np.log(p.N.max()) + 0.3, 100)
        ax.plot(np.exp(x), np.polyval(p.coef, x), color=color, lw=1)
        ax.plot(p.N_opt, p.L_opt, marker="*", ms=11, color=color, mec="k",
                alpha=1.0 if p.interior else 0.4)
    ax.set(xscale="log", xlabel="parameters N", ylabel="val loss", title="IsoFLOP profiles")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")
    Cs = np.array([p.C for p in iso.profiles])
    ax2.scatter(Cs, [p.N_opt for p in iso.profiles], color="k", zorder=3)
    grid = np.logspace(np.log10(Cs.min()) - 0.3, np.log10(Cs.max()) + 0.3, 50)
    ax2.plot(grid, iso.N_law.predict(grid), "r-", label=f"N_opt ~ C^{iso.N_law.a:.3f}")
    ax2.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="N_opt", title="Approach 2")
    ax2.legend()
    ax2.grid(alpha=0.3, which="both")
    return _save(fig, out) if out else fig


def plot_approach3(N, D, L, fit: Approach3Fit, axes=None, out=None):
    """Left: fitted vs measured loss. Right: loss vs tokens per model size with the fitted curves."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    fig, (ax, ax2) = _axes(axes, ncols=2)
    pred = fit.predict(N, D)
    ax.scatter(L, pred, s=14)
    lim = [min(L.min(), pred.min()), max(L.max(), pred.max())]
    ax.plot(lim, lim, "k--", lw=1)
    ax.set(xlabel="measured val loss", ylabel="fitted L(N, D)",
           title=f"E={fit.E:.3g} A={fit.A:.3g} B={fit.B:.3g} alpha={fit.alpha:.3f} beta={fit.beta:.3f}")
    ax.grid(alpha=0.3)
    sizes = np.unique(N)
    for i, n in enumerate(sizes):
        color = colormaps["viridis"](i / max(len(sizes) - 1, 1))
        sel = N == n
        ax2.scatter(D[sel], L[sel], color=color, s=14, label=f"N={n:.2g}" if len(sizes) <= 10 else None)
        d = np.logspace(np.log10(D[sel].min()) - 0.2, np.log10(D[sel].max()) + 0.2, 50)
        ax2.plot(d, fit.predict(n, d), color=color, lw=1)
    ax2.set(xscale="log", xlabel="tokens D", ylabel="val loss", title="loss vs D per N (lines: fit)")
    if len(sizes) <= 10:
        ax2.legend(fontsize="small")
    ax2.grid(alpha=0.3, which="both")
    return _save(fig, out) if out else fig


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nanogpt.plot",
                                     description="Overlay the loss curves of runs (or of every run in a sweep).")
    parser.add_argument("paths", nargs="+", help="run directories, or sweep directories holding runs")
    parser.add_argument("--out", help="PNG to write (default: PATH/loss.png for one path, else ./loss.png)")
    parser.add_argument("--x", choices=list(X_LABELS), default="tokens", help="the x axis")
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        run_dirs = find_run_dirs(args.paths)
        if not run_dirs:
            raise ValueError(f"no run directories under {' '.join(args.paths)}")
        out = args.out or (Path(args.paths[0]) / "loss.png" if len(args.paths) == 1 else Path("loss.png"))
        print(f"wrote {plot_runs(run_dirs, out, x=args.x)}")
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    return 0
