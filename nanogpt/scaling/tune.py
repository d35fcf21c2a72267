"""Tuned-per-scale fits: from a sweep over size x learning rate (x batch size) at several compute
budgets, the optimal learning rate and batch size as power laws of compute (DeepSeek LLM §3.1:
lr_opt = 0.3118 C^-0.125, B_opt = 0.2920 C^0.3271; Porian et al. 2024: tuning them per scale
is what reconciles Kaplan's and Chinchilla's exponents), and an isoFLOP fit on each size's tuned
optimum instead of the loss at one grid learning rate.

    python launch.py -m experiment=scaling/isoflop_tiny optim.lr=1e-3,3e-3,1e-2 'seed=range(2)'
    python -m nanogpt.scaling tune-fit sweeps/isoflop_tiny --plots sweeps/isoflop_tiny

The steps, each printed:
1. budgets: runs grouped by FLOPs (`group_by_compute`, the `fit` command's rtol); a budget's
   cells are its model sizes (N). Runs of one (budget, N, lr, batch) are averaged (seeds).
2. a cell's optimum: the grid's lowest loss, refined by a parabola in ln lr through the best
   lr and its neighbours (two each side) at the best batch, and the same in ln batch at the
   best lr. An optimum at the grid's edge is not refined and is flagged.
3. the budget's optimum is its cell with the lowest tuned loss (the compute-optimal size):
   lr_opt(C) and B_opt(C) are fitted as power laws, with the t-interval of the exponent (the
   regression's covariance). `against="N"`: every size instead, each trained at one budget,
   and the laws in N (Porian et al.'s form).
4. hold-out: the same fits on all budgets but the largest predict the largest one's lr and
   batch (with a 95% prediction interval); the error says how far the law extrapolates.
5. isoFLOP: Chinchilla's approach 2 on every cell's tuned loss, beside the same fit on the
   loss at the one lr the most cells share (what a grid sweep would have fitted).

The batch size is tokens per optimizer step (tokens / iterations). Sweep it at a fixed token
or FLOP budget (task.max_tokens or task.max_flops), not at fixed iterations, so that all batch
sizes of a cell share one budget.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from nanogpt.scaling.fit import (
    Approach3Fit,
    IsoFLOPFit,
    PowerLawFit,
    fit_power_law,
    group_by_compute,
    isoflop_fit,
)

WINDOW = 2  # the parabola uses the best grid value and up to this many neighbours each side


@dataclass
class AxisOptimum:
    """The optimum along one axis (lr or batch) of a cell, at the other axis's best value."""
    values: np.ndarray  # the grid, ascending
    losses: np.ndarray  # the mean loss at each
    best: float  # argmin of the grid
    opt: float  # parabola vertex when interior, else `best`
    loss: float  # the loss at `opt`
    interior: bool  # the vertex lies inside the grid (False: at an edge, or fewer than 3 values)

    @property
    def swept(self) -> bool:
        return len(self.values) > 1


@dataclass
class Cell:
    """One model size at one budget: its (lr, batch) grid and tuned optimum."""
    C: float
    N: float
    D: float
    lr: AxisOptimum
    batch: AxisOptimum
    n_runs: int

    @property
    def loss(self) -> float:
        return min(self.lr.loss, self.batch.loss)


@dataclass
class HoldOut:
    x: float  # the held-out (largest) budget C, or size N with --against N
    predicted: float
    interval: tuple[float, float]  # 95% prediction interval (nan with only two budgets fitted)
    measured: float

    @property
    def error(self) -> float:
        """predicted / measured - 1."""
        return self.predicted / self.measured - 1


@dataclass
class TuneFit:
    cells: list[Cell]
    points: list[Cell]  # what the laws fit, in increasing x: each budget's best cell (or every cell)
    against: str  # x of the laws: "C" (compute) or "N" (parameters)
    lr_law: PowerLawFit
    batch_law: PowerLawFit | None  # None when no cell swept the batch size
    lr_holdout: HoldOut | None = None
    batch_holdout: HoldOut | None = None
    iso: IsoFLOPFit | None = None  # on each cell's tuned loss
    iso_fixed: IsoFLOPFit | None = None  # on the loss at one grid lr
    fixed_lr: float = math.nan
    notes: list[str] = field(default_factory=list)

    @property
    def xs(self) -> np.ndarray:
        return np.array([getattr(p, self.against) for p in self.points])


# --------------------------------------------------------------------------------------------
# The optimum along one axis
# --------------------------------------------------------------------------------------------
def axis_optimum(values, losses) -> AxisOptimum:
    """The grid minimum of `losses` over `values`, refined by a parabola in ln(value) through it
    and its WINDOW neighbours each side (the far ends of a grid, e.g. a diverged lr, would bend a
    parabola through all of them)."""
    order = np.argsort(values)
    x, y = np.asarray(values, dtype=float)[order], np.asarray(losses, dtype=float)[order]
    i = int(np.argmin(y))
    opt, loss, interior = float(x[i]), float(y[i]), False
    lo, hi = max(0, i - WINDOW), min(len(x), i + WINDOW + 1)
    if 0 < i < len(x) - 1 and hi - lo >= 3:
        coef = np.polyfit(np.log(x[lo:hi]), y[lo:hi], 2)
        if coef[0] > 0:
            v = -coef[1] / (2 * coef[0])
            if math.log(x[0]) <= v <= math.log(x[-1]):
                opt, loss, interior = float(math.exp(v)), float(np.polyval(coef, v)), True
    return AxisOptimum(x, y, float(x[i]), opt, loss, interior)


def _key(value: float) -> float:
    """Grid values as the sweep wrote them, rid of float noise (D / iters for the batch)."""
    return float(f"{value:.6g}")


def cell_optimum(C: float, runs, loss: str) -> Cell:
    """The (lr, batch) optimum of the runs of one size at one budget."""
    grid: dict[tuple[float, float], list[float]] = {}
    for r in runs:
        grid.setdefault((_key(r.lr), _key(r.D / r.iters)), []).append(r.loss(loss))
    mean = {k: float(np.mean(v)) for k, v in grid.items()}
    best_lr, best_batch = min(mean, key=mean.get)
    lrs = sorted(lr for lr, b in mean if b == best_batch)
    batches = sorted(b for lr, b in mean if lr == best_lr)
    return Cell(C=C, N=float(np.median([r.N for r in runs])), D=float(np.exp(np.mean([np.log(r.D) for r in runs]))),
                lr=axis_optimum(lrs, [mean[lr, best_batch] for lr in lrs]),
                batch=axis_optimum(batches, [mean[best_lr, b] for b in batches]), n_runs=len(runs))


def tunable(runs, loss: str) -> list:
    return [r for r in runs if r.status == "finished" and all(
        math.isfinite(v) and v > 0 for v in (r.N, r.D, r.C, r.lr, r.iters, r.loss(loss)))]


def tuned_cells(runs, loss: str = "final", rtol: float = 0.1) -> list[Cell]:
    """Every (budget, size) cell's tuned optimum, in increasing C then N."""
    runs = tunable(runs, loss)
    if not runs:
        raise ValueError(f"no finished run with a learning rate, tokens, iterations and a {loss} val loss")
    C = np.array([r.C for r in runs])
    cells = []
    for idx in group_by_compute(C, rtol):
        budget = float(np.exp(np.log(C[idx]).mean()))
        by_size: dict[float, list] = {}
        for i in idx:
            by_size.setdefault(_key(runs[i].N), []).append(runs[i])
        cells += [cell_optimum(budget, group, loss) for _, group in sorted(by_size.items())]
    return cells


# --------------------------------------------------------------------------------------------
# Laws, hold-out, isoFLOPs
# --------------------------------------------------------------------------------------------
def prediction_interval(x, y, x0: float, level: float = 0.95) -> tuple[float, tuple[float, float]]:
    """The power law through (x, y) at x0 and its `level` prediction interval (ordinary least
    squares in log-log: the interval of a new observation, nan with two points)."""
    lx, ly = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    res = stats.linregress(lx, ly)
    pred = res.intercept + res.slope * math.log(x0)
    n = len(lx)
    if n < 3:
        return float(math.exp(pred)), (math.nan, math.nan)
    s = math.sqrt(np.sum((ly - res.intercept - res.slope * lx) ** 2) / (n - 2))
    se = s * math.sqrt(1 + 1 / n + (math.log(x0) - lx.mean()) ** 2 / np.sum((lx - lx.mean()) ** 2))
    half = stats.t.ppf(0.5 + level / 2, n - 2) * se
    return float(math.exp(pred)), (float(math.exp(pred - half)), float(math.exp(pred + half)))


def holdout(xs, values) -> HoldOut | None:
    """Fit on all points but the largest x, predict the largest (None with fewer than 3 points)."""
    if len(xs) < 3:
        return None
    pred, interval = prediction_interval(xs[:-1], values[:-1], xs[-1])
    return HoldOut(float(xs[-1]), pred, interval, float(values[-1]))


def _isoflop(cells: list[Cell], losses, rtol: float) -> IsoFLOPFit:
    return isoflop_fit([c.N for c in cells], [c.D for c in cells], [c.C for c in cells], losses, rtol=rtol)


def fixed_lr_isoflop(runs, loss: str, rtol: float) -> tuple[float, IsoFLOPFit | None]:
    """Approach 2 at one grid lr (the best batch of each point at that lr): the fit a sweep at a
    single lr would give. The lr: of those most points were trained with, the lowest mean loss."""
    runs = tunable(runs, loss)
    lrs, counts = np.unique([_key(r.lr) for r in runs], return_counts=True)
    candidates = lrs[counts == counts.max()]
    lr = float(min(candidates, key=lambda v: np.mean([r.loss(loss) for r in runs if _key(r.lr) == v])))
    at_lr = [r for r in runs if _key(r.lr) == lr]
    try:
        cells = tuned_cells(at_lr, loss, rtol)
        return lr, _isoflop(cells, [c.batch.losses.min() for c in cells], rtol)
    except ValueError:
        return lr, None


def law_points(cells: list[Cell], against: str) -> list[Cell]:
    """The cells the laws fit. Against C: each budget's best size (its compute-optimal model, as
    DeepSeek). Against N: every size, each trained at one budget (Porian et al.: tokens grow with
    the parameters, e.g. 20 per parameter)."""
    if against == "C":
        return [min((c for c in cells if c.C == C), key=lambda c: c.loss) for C in sorted({c.C for c in cells})]
    repeated = sorted({c.N for c in cells if sum(d.N == c.N for d in cells) > 1})
    if repeated:
        raise ValueError(f"size N={repeated[0]:.4g} was trained at {sum(c.N == repeated[0] for c in cells)} "
                         "budgets: --against N needs one budget per size (tokens growing with parameters); "
                         "fit an isoFLOP sweep --against C")
    return sorted(cells, key=lambda c: c.N)


def tune_fit(runs, loss: str = "final", rtol: float = 0.1, against: str = "C") -> TuneFit:
    """Steps 1-5 of the module's docstring. Raises ValueError when fewer than two points remain."""
    if against not in ("C", "N"):
        raise ValueError(f"against must be C or N, got {against!r}")
    cells = tuned_cells(runs, loss, rtol)
    points = law_points(cells, against)
    if len(points) < 2:
        what = "budgets" if against == "C" else "model sizes"
        raise ValueError(f"the optimal lr as a power law of {'compute' if against == 'C' else 'parameters'} "
                         f"needs at least two {what}, got {len(points)}: sweep task.max_flops (or the model "
                         "size at fixed tokens per parameter)")
    notes = [f"{against}={getattr(b, against):.3g}: the best {axis} ({getattr(b, axis).best:.3g}) is at the "
             "edge of the grid: extend the sweep" for b in points for axis in ("lr", "batch")
             if getattr(b, axis).swept and not getattr(b, axis).interior]
    for axis in ("lr", "batch"):
        if any(getattr(b, axis).swept for b in points) and not any(getattr(b, axis).interior for b in points):
            notes.append(f"every {axis} optimum is at the edge of its grid: the {axis}_opt law describes the "
                         "grid, not the optimum")
    xs = np.array([getattr(p, against) for p in points])
    lr_opt = np.array([b.lr.opt for b in points])
    batch_swept = any(b.batch.swept for b in points)
    batch_opt = np.array([b.batch.opt for b in points])
    fit = TuneFit(cells=cells, points=points, against=against, lr_law=fit_power_law(xs, lr_opt),
                  batch_law=fit_power_law(xs, batch_opt) if batch_swept else None,
                  lr_holdout=holdout(xs, lr_opt), batch_holdout=holdout(xs, batch_opt) if batch_swept else None,
                  notes=notes)
    if any(sum(c.C == b.C for c in cells) >= 3 for b in points):  # several sizes per budget
        try:
            fit.iso = _isoflop(cells, [c.loss for c in cells], rtol)
        except ValueError as e:
            notes.append(f"isoFLOP fit on the tuned losses skipped: {e}")
        fit.fixed_lr, fit.iso_fixed = fixed_lr_isoflop(runs, loss, rtol)
    return fit


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------
def _ci(law: PowerLawFit) -> str:
    if math.isfinite(law.ci[0]):
        return f"[{law.ci[0]:.3f}, {law.ci[1]:.3f}]"
    return "(no interval: two points, or the same optimum at every point)"


def _holdout_line(name: str, h: HoldOut) -> str:
    inside = ("" if not math.isfinite(h.interval[0]) else
              f", 95% prediction interval [{h.interval[0]:.3g}, {h.interval[1]:.3g}]"
              f" ({'contains' if h.interval[0] <= h.measured <= h.interval[1] else 'MISSES'} the measured)")
    return f"  {name}: predicted {h.predicted:.3g}, measured {h.measured:.3g}, error {h.error:+.1%}{inside}"


def format_tune_fit(fit: TuneFit) -> str:
    from nanogpt.scaling.collect import format_table

    def flag(axis: AxisOptimum) -> str:
        return f"{axis.opt:.3g}" + ("" if axis.interior or not axis.swept else " (edge)")

    x = fit.against
    rows = [[b.C, sum(c.C == b.C for c in fit.cells), b.N, flag(b.lr), len(b.lr.values), flag(b.batch),
             len(b.batch.values), b.loss, b.n_runs] for b in fit.points]
    title = ("Tuned optimum per budget (its best model size" if x == "C" else "Tuned optimum per model size (")
    lines = [title + "; lr and batch: parabola minimum in log scale)",
             format_table(["C", "sizes", "N_best" if x == "C" else "N", "lr_opt", "lrs", "batch_opt", "batches",
                           "L_opt", "runs"], rows),
             f"  lr_opt = {math.exp(fit.lr_law.const):.4g} {x}^{fit.lr_law.a:.4f}   exponent 95% CI {_ci(fit.lr_law)}"]
    if fit.batch_law:
        lines.append(f"  batch_opt = {math.exp(fit.batch_law.const):.4g} {x}^{fit.batch_law.a:.4f}   "
                     f"exponent 95% CI {_ci(fit.batch_law)}  (tokens per step)")
    else:
        lines.append("  batch size: one value per point, not fitted (sweep it to fit B_opt)")
    if fit.lr_holdout:
        lines.append(f"Hold-out: fitted on the {len(fit.points) - 1} smaller {'budgets' if x == 'C' else 'sizes'}, "
                     f"predicting {x}={fit.lr_holdout.x:.3g}")
        lines.append(_holdout_line("lr_opt", fit.lr_holdout))
        if fit.batch_holdout:
            lines.append(_holdout_line("batch_opt", fit.batch_holdout))
    else:
        lines.append("Hold-out: needs at least 3 points")
    if fit.iso:
        lines.append("IsoFLOP (approach 2) on each size's tuned loss:")
        lines.append(f"  N_opt ~ C^{fit.iso.N_law.a:.4f} {_ci(fit.iso.N_law)}   D_opt ~ C^{fit.iso.D_law.a:.4f}")
        if fit.iso_fixed:
            lines.append(f"  at the single lr {fit.fixed_lr:.3g} instead: N_opt ~ C^{fit.iso_fixed.N_law.a:.4f} "
                         f"{_ci(fit.iso_fixed.N_law)}")
    return "\n".join(lines + [f"note: {n}" for n in fit.notes])


# --------------------------------------------------------------------------------------------
# A synthetic sweep with known exponents, for the tests and the docs
# --------------------------------------------------------------------------------------------
DEEPSEEK_LR = (0.3118, -0.125)  # lr_opt = 0.3118 C^-0.125 (DeepSeek LLM, eq. 1)
DEEPSEEK_BATCH = (0.2920, 0.3271)  # B_opt = 0.2920 C^0.3271 tokens
SYNTHETIC_LRS = tuple(np.logspace(-3.5, -1.5, 7))  # 3e-4 .. 3e-2: around DeepSeek's lr_opt at 1e17..1e20
SYNTHETIC_BATCHES = tuple(2.0 ** np.arange(15, 22))  # 32k .. 2M tokens: around its B_opt there


def synthetic_tune_sweep(root, law: Approach3Fit, budgets=(1e17, 1e18, 1e19, 1e20), sizes: int = 5,
                         lrs=SYNTHETIC_LRS, batches=SYNTHETIC_BATCHES,
                         lr_law=DEEPSEEK_LR, batch_law=DEEPSEEK_BATCH, lr_size_exponent: float = -0.3,
                         k_lr: float = 0.02, k_batch: float = 0.01, noise: float = 0.0, seeds: int = 1,
                         seed: int = 0) -> Path:
    """Write a size x lr x batch sweep per budget whose loss is `law`'s plus penalties for a
    detuned lr and batch, quadratic in their logs:
        L = law(N, D) exp(eps) + k_lr ln(lr / lr*)^2 + k_batch ln(B / B*)^2,
        lr* = lr_law(C) (N / N_opt(C))^lr_size_exponent,  B* = batch_law(C).
    A smaller model than the budget's optimum wants a larger lr (Porian et al.): a fit at one lr
    then misplaces N_opt, the tuned fit does not. Sizes span N_opt/10 .. 10 N_opt."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    job = 0
    for C in budgets:
        N_opt = float(law.compute_optimal(C)[0])
        lr_star_C, b_star = lr_law[0] * C ** lr_law[1], batch_law[0] * C ** batch_law[1]
        for N in N_opt * np.logspace(-1, 1, sizes):
            N, D = float(round(N)), float(round(C / (6 * N)))
            lr_star = lr_star_C * (N / N_opt) ** lr_size_exponent
            for lr in lrs:
                for B in batches:
                    for s in range(seeds):
                        L = float(law.predict(N, D) * np.exp(rng.normal(0, noise)) + k_lr * math.log(lr / lr_star) ** 2
                                  + k_batch * math.log(B / b_star) ** 2)
                        _write_run(root / f"{job}_C={C:.0e},N={N:.3g},lr={lr:.3g},B={B:g},seed={s}",
                                   N, D, L, float(lr), float(B), s)
                        job += 1
    return root


def _write_run(run_dir: Path, N: float, D: float, L: float, lr: float, B: float, seed: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    iters = D / B
    summary = dict(status="finished", params=N, params_non_embedding=N, tokens=D, flops=6 * N * D,
                   iters=iters, tokens_per_step=B, best_val_loss=L, final_val_loss=L, wall_time_s=0.0,
                   config=dict(model=dict(n_params=N), optim=dict(lr=lr), task=dict(tokens_per_step=B, max_tokens=D),
                               data=dict(name="synthetic"), seed=seed))
    (run_dir / "summary.json").write_text(json.dumps(summary))
