"""Scaling-law fits, numpy/scipy only (no files: `nanogpt.scaling.collect` reads the runs and calls these).

Hoffmann et al. 2022 ("Chinchilla") estimate how to split a compute budget C ~ 6 N D between
parameters N and tokens D in three ways; two of them are here:

- approach 2 (IsoFLOP profiles): train several sizes at each of a few fixed budgets, fit a
  parabola of loss against log N per budget, read off its minimum N_opt(C), then fit the power
  law N_opt = k C^a.
- approach 3 (parametric loss): fit L(N, D) = E + A / N^alpha + B / D^beta to every run, then
  minimise it under C = 6 N D, which gives N_opt = G (C/6)^a with a = beta / (alpha + beta).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from scipy import optimize, special, stats

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # optional: without it the fits are right but can be slow (see _one_blas_thread)
    threadpool_limits = None

# The paper's published approach-3 fit (eq. 10 of Hoffmann et al. 2022).
CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)

# Table 3 of the paper: compute-optimal model sizes, with the training FLOPs and tokens that go
# with them (from approach 1). Every row satisfies C = 6 N D to rounding except 67B, which is
# Gopher's budget (5.76e23) printed with 1.5T tokens (6 N D = 6.0e23): the paper's own rounding.
CHINCHILLA_TABLE = {
    "params": (400e6, 1e9, 10e9, 67e9, 175e9, 280e9, 520e9, 1e12, 10e12),
    "flops": (1.92e19, 1.21e20, 1.23e22, 5.76e23, 3.85e24, 9.90e24, 3.43e25, 1.27e26, 1.30e28),
    "tokens": (8.0e9, 20.2e9, 205.1e9, 1.5e12, 3.7e12, 5.9e12, 11.0e12, 21.2e12, 216.2e12),
}

# Appendix D.2: L-BFGS from every point of this grid over (alpha, beta, e, a, b), where
# A = exp(a), B = exp(b), E = exp(e). 5 * 5 * 5 * 6 * 6 = 4500 starts.
PAPER_GRID = dict(alpha=np.arange(0, 2.01, 0.5), beta=np.arange(0, 2.01, 0.5),
                  e=np.arange(-1, 1.01, 0.5), a=np.arange(0, 26, 5), b=np.arange(0, 26, 5))
HUBER_DELTA = 1e-3
# L-BFGS-B box for (a, b, e, alpha, beta). Unbounded, a sweep that barely constrains the law (6
# runs, a loss that rises with N) sends log A past 709 and exp() overflows; exponents below 0 or
# above 5 mean no power law at all. An optimum on this box's edge is flagged (Approach3Fit.degenerate).
LOG_BOUND = 700.0
EXPONENT_BOUNDS = (0.0, 5.0)
BOUNDS = [(-LOG_BOUND, LOG_BOUND)] * 3 + [EXPONENT_BOUNDS] * 2


class PowerLawFit(NamedTuple):
    """log y = a log x + const (natural logs), i.e. y = exp(const) x^a; `ci` bounds a."""
    a: float
    const: float
    ci: tuple[float, float]

    def predict(self, x):
        return np.exp(self.const) * np.asarray(x, dtype=float) ** self.a


def fit_power_law(x, y, level: float = 0.95) -> PowerLawFit:
    """Least-squares line through (log x, log y), e.g. x = C and y = N_opt. The interval on the
    exponent is the regression's t-interval (nan with only two points: no residual left)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-d and the same length, got {x.shape} and {y.shape}")
    if len(x) < 2 or len(np.unique(x)) < 2:
        raise ValueError(f"a power law needs at least two distinct x values, got {len(np.unique(x))}")
    if np.any(x <= 0) or np.any(y <= 0):
        raise ValueError("a power law needs positive x and y (they are fitted in log space)")
    res = stats.linregress(np.log(x), np.log(y))
    if len(x) > 2:
        half = stats.t.ppf(0.5 + level / 2, len(x) - 2) * res.stderr
        ci = (res.slope - half, res.slope + half)
    else:
        ci = (math.nan, math.nan)
    return PowerLawFit(float(res.slope), float(res.intercept), (float(ci[0]), float(ci[1])))


# --------------------------------------------------------------------------------------------
# Approach 3: L(N, D) = E + A / N^alpha + B / D^beta
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Approach3Fit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float = math.nan  # the Huber loss at the optimum (lower is a better fit)
    n_points: int = 0
    # why the fit should not be trusted (empty: none found); see degenerate_reasons()
    problems: tuple[str, ...] = ()

    @property
    def degenerate(self) -> bool:
        return bool(self.problems)

    def predict(self, N, D):
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N ** self.alpha + self.B / D ** self.beta

    @property
    def a(self) -> float:
        """N_opt grows as C^a (nan when both exponents are 0: no trade-off to optimise)."""
        return self.beta / (self.alpha + self.beta) if self.alpha + self.beta > 0 else math.nan

    @property
    def b(self) -> float:
        """D_opt grows as C^b (a + b = 1)."""
        return self.alpha / (self.alpha + self.beta) if self.alpha + self.beta > 0 else math.nan

    @property
    def G(self) -> float:
        """N_opt = G (C/6)^a. In log space: a degenerate fit gives inf or nan, never an OverflowError."""
        if not (self.alpha > 0 and self.beta > 0 and self.A > 0 and self.B > 0):
            return math.nan
        log_G = (math.log(self.alpha) + math.log(self.A) - math.log(self.beta) - math.log(self.B)) / (self.alpha + self.beta)
        with np.errstate(over="ignore"):
            return float(np.exp(log_G))

    def compute_optimal(self, C):
        """(N_opt, D_opt) minimising L under C = 6 N D (eq. 4 of the paper)."""
        C6 = np.asarray(C, dtype=float) / 6
        with np.errstate(all="ignore"):
            return self.G * C6 ** self.a, C6 ** self.b / self.G

    def as_dict(self) -> dict[str, float]:
        return dict(E=self.E, A=self.A, B=self.B, alpha=self.alpha, beta=self.beta, a=self.a, b=self.b)


def chinchilla_law() -> Approach3Fit:
    """The paper's fit on MassiveText, for comparison (its losses are not comparable to ours)."""
    return Approach3Fit(**CHINCHILLA)


def _log_predict(a, b, e, alpha, beta, logN, logD):
    """log Lhat = LSE(a - alpha log N, b - beta log D, e), which is log(E + A/N^alpha + B/D^beta)
    in a form that cannot overflow; also returns the first two terms."""
    t_N, t_D = a - alpha * logN, b - beta * logD
    return np.logaddexp(np.logaddexp(t_N, t_D), e), t_N, t_D


def _huber_objective(theta, logN, logD, logL, delta):
    """Sum of Huber_delta(log Lhat - log L) over the runs, and its gradient in theta."""
    a, b, e, alpha, beta = theta
    lse, t_N, t_D = _log_predict(a, b, e, alpha, beta, logN, logD)
    r = lse - logL
    dr = np.clip(r, -delta, delta)  # Huber'(r)
    w_N, w_D, w_E = np.exp(t_N - lse), np.exp(t_D - lse), np.exp(e - lse)  # d lse / d term
    grad = np.array([dr @ w_N, dr @ w_D, dr @ w_E, -(dr * w_N) @ logN, -(dr * w_D) @ logD])
    return special.huber(delta, r).sum(), grad


def _grid_objectives(starts, logN, logD, logL, delta):
    """The objective at many starting points at once (used to thin the grid)."""
    lse = _log_predict(*(starts[:, i:i + 1] for i in range(5)), logN, logD)[0]
    return special.huber(delta, lse - logL).sum(axis=1)


def _paper_grid() -> np.ndarray:
    g = PAPER_GRID
    # rows in the objective's parameter order (a, b, e, alpha, beta)
    return np.array([(a, b, e, al, be) for al, be, e, a, b in
                     itertools.product(g["alpha"], g["beta"], g["e"], g["a"], g["b"])])


def _one_blas_thread():
    """Since scipy 1.15, L-BFGS-B calls LAPACK on its tiny matrices, and a multithreaded OpenBLAS
    can then make each step tens of times slower on a busy machine (scipy/scipy#22438)."""
    return threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()


def _check_points(N, D, L):
    N, D, L = (np.asarray(v, dtype=float).ravel() for v in (N, D, L))
    if not len(N) == len(D) == len(L):
        raise ValueError(f"N, D, L must have the same length, got {len(N)}, {len(D)}, {len(L)}")
    if not (np.all(np.isfinite(N + D + L)) and np.all(N > 0) and np.all(D > 0) and np.all(L > 0)):
        raise ValueError("N, D and L must be finite and positive")
    if len(N) < 6 or len(np.unique(N)) < 2 or len(np.unique(D)) < 2:
        raise ValueError(f"approach 3 fits 5 parameters: it needs at least 6 runs spanning several "
                         f"N and D, got {len(N)} runs, {len(np.unique(N))} distinct N, "
                         f"{len(np.unique(D))} distinct D")
    return N, D, L


def fit_approach3(N, D, L, *, n_starts: int | None = 100, init=None,
                  delta: float = HUBER_DELTA) -> Approach3Fit:
    """Hoffmann et al.'s fit: minimise sum Huber_delta(log Lhat - log L) with L-BFGS-B from the
    paper's grid of 4500 initialisations, keeping the best optimum.

    `n_starts` thins the grid for speed: the objective is evaluated at every grid point (one
    vectorised pass) and L-BFGS runs only from the `n_starts` best of them (None: all 4500; the
    optimum found is the same on well-behaved sweeps, at ~45x the cost). `init` (an Approach3Fit,
    e.g. the full-data fit when bootstrapping) is added as one more start.
    """
    N, D, L = _check_points(N, D, L)
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    starts = _paper_grid()
    if n_starts is not None and n_starts < len(starts):
        order = np.argsort(_grid_objectives(starts, logN, logD, logL, delta), kind="stable")
        starts = starts[order[:n_starts]]
    if init is not None:
        theta0 = [math.log(init.A), math.log(init.B), math.log(init.E), init.alpha, init.beta]
        starts = np.vstack([theta0, starts])
    # The objective is tiny near the optimum (residuals ~1e-3, squared); L-BFGS-B's relative
    # stopping test floors |f| at 1, so without a tiny ftol it would stop far from the minimum.
    options = dict(ftol=1e-15, gtol=1e-12, maxiter=2000)
    best = None
    with _one_blas_thread():
        for theta0 in starts:
            res = optimize.minimize(_huber_objective, np.clip(theta0, *np.transpose(BOUNDS)),
                                    args=(logN, logD, logL, delta), jac=True, method="L-BFGS-B",
                                    bounds=BOUNDS, options=options)
            if np.all(np.isfinite(res.x)) and (best is None or res.fun < best.fun):
                best = res
    if best is None:
        raise ValueError("no start of the optimiser reached a finite optimum")
    a, b, e, alpha, beta = (float(v) for v in best.x)
    fit = Approach3Fit(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta,
                       objective=float(best.fun), n_points=len(N))
    return dataclasses.replace(fit, problems=degenerate_reasons(fit, L))


def degenerate_reasons(fit: Approach3Fit, L) -> tuple[str, ...]:
    """What makes a fit meaningless: an irreducible loss E of ~0 (e.g. 3e-69: the runs do not
    reach the floor), an exponent or a coefficient on the optimiser's box (the sweep does not
    pin that term down), or no finite compute-optimal exponent."""
    reasons = []
    if fit.E < 1e-3 * float(np.min(L)):
        reasons.append(f"E = {fit.E:.3g} is ~0 (the runs do not pin down the irreducible loss)")
    for name in ("alpha", "beta"):
        value = getattr(fit, name)
        if value <= EXPONENT_BOUNDS[0] + 1e-3 or value >= EXPONENT_BOUNDS[1] - 1e-3:
            reasons.append(f"{name} = {value:.3g} is at the edge of the allowed "
                           f"[{EXPONENT_BOUNDS[0]:g}, {EXPONENT_BOUNDS[1]:g}]")
    for name, log_value in (("A", math.log(fit.A)), ("B", math.log(fit.B))):
        if abs(log_value) >= LOG_BOUND - 1:
            reasons.append(f"{name} = {getattr(fit, name):.3g} is at the edge of the allowed range")
    if not math.isfinite(fit.a):
        reasons.append("the compute-optimal exponent a is undefined")
    return tuple(reasons)


@dataclass
class Bootstrap:
    """Refits on resampled runs: `samples[name]` holds one value per resample."""
    fit: Approach3Fit
    samples: dict[str, np.ndarray]
    level: float = 0.95

    def interval(self, name: str) -> tuple[float, float]:
        return _percentile_interval(self.samples[name], self.level)

    @property
    def intervals(self) -> dict[str, tuple[float, float]]:
        return {name: self.interval(name) for name in self.samples}

    def _n_opt_samples(self, C):
        """N_opt at budget(s) C for every resample (rows: resamples); inf/nan where one is degenerate."""
        s = {k: v[:, None] for k, v in self.samples.items()}
        with np.errstate(all="ignore"):
            G = (s["alpha"] * s["A"] / (s["beta"] * s["B"])) ** (1 / (s["alpha"] + s["beta"]))
            return G * (np.atleast_1d(np.asarray(C, dtype=float)) / 6) ** s["a"]

    def compute_optimal_interval(self, C: float):
        """Percentile intervals of (N_opt, D_opt) at budget C across the resamples."""
        N_opt = self._n_opt_samples(C)[:, 0]
        with np.errstate(all="ignore"):
            return _percentile_interval(N_opt, self.level), _percentile_interval(C / 6 / N_opt, self.level)

    def n_opt_band(self, C) -> tuple[np.ndarray, np.ndarray]:
        """The interval of N_opt at every budget in C (for a band around the fitted N_opt line)."""
        N_opt = self._n_opt_samples(C)
        lo, hi = zip(*(_percentile_interval(N_opt[:, j], self.level) for j in range(N_opt.shape[1])))
        return np.array(lo), np.array(hi)

    def optimal_loss_interval(self, C) -> tuple[np.ndarray, np.ndarray]:
        """The interval of the predicted loss at the compute-optimal N, D for every budget in C."""
        N_opt = self._n_opt_samples(C)
        s = {k: v[:, None] for k, v in self.samples.items()}
        with np.errstate(all="ignore"):
            loss = s["E"] + s["A"] / N_opt ** s["alpha"] + s["B"] / (np.asarray(C, dtype=float) / 6 / N_opt) ** s["beta"]
        lo, hi = zip(*(_percentile_interval(loss[:, j], self.level) for j in range(loss.shape[1])))
        return np.array(lo), np.array(hi)


def _percentile_interval(values, level: float) -> tuple[float, float]:
    """The central `level` interval of the finite values; (nan, nan) when there are none."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return math.nan, math.nan
    q = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [q, 100 - q])
    return float(lo), float(hi)


def bootstrap_approach3(N, D, L, *, n_boot: int = 200, fit: Approach3Fit | None = None,
                        n_starts: int = 8, seed: int = 0, level: float = 0.95,
                        delta: float = HUBER_DELTA) -> Bootstrap:
    """Percentile bootstrap: resample the runs with replacement, refit, repeat `n_boot` times.

    Each refit starts from the full-data fit plus the `n_starts` best grid points for that
    resample: a resample's optimum lies near the full-data one, so the whole grid is not needed.
    """
    N, D, L = _check_points(N, D, L)
    fit = fit or fit_approach3(N, D, L, delta=delta)
    rng = np.random.default_rng(seed)
    names = ("E", "A", "B", "alpha", "beta", "a", "b")
    samples = {name: np.full(n_boot, math.nan) for name in names}
    for i in range(n_boot):
        idx = rng.integers(0, len(N), len(N))
        try:
            boot = fit_approach3(N[idx], D[idx], L[idx], n_starts=n_starts, init=fit, delta=delta)
        except (ValueError, ArithmeticError):  # a degenerate resample (e.g. a single model size): left out
            continue
        for name, value in boot.as_dict().items():
            samples[name][i] = value
    return Bootstrap(fit=fit, samples=samples, level=level)


# --------------------------------------------------------------------------------------------
# Approach 2: IsoFLOP profiles
# --------------------------------------------------------------------------------------------
@dataclass
class IsoFLOPProfile:
    """The runs of one compute budget and the parabola L = c0 (ln N)^2 + c1 ln N + c2 through them."""
    C: float  # the group's budget: geometric mean of its runs' FLOPs
    N: np.ndarray
    D: np.ndarray
    L: np.ndarray
    coef: np.ndarray  # numpy.polyfit order: highest power first
    N_opt: float
    D_opt: float
    L_opt: float
    interior: bool  # the minimum lies within the sizes tried (else it is an extrapolation)


@dataclass
class IsoFLOPFit:
    profiles: list[IsoFLOPProfile]
    N_law: PowerLawFit  # N_opt = exp(const) C^a
    D_law: PowerLawFit  # D_opt = exp(const) C^b
    skipped: list[str] = field(default_factory=list)  # why some budgets gave no minimum

    def compute_optimal(self, C):
        return self.N_law.predict(C), self.D_law.predict(C)


def group_by_compute(C, rtol: float = 0.1) -> list[np.ndarray]:
    """Indices of runs planned with the same budget: sorted by C, a group takes every run
    within `rtol` (relative) of its smallest member. Groups are in increasing C."""
    C = np.asarray(C, dtype=float)
    order = np.argsort(C, kind="stable")
    groups, start = [], 0
    for k in range(1, len(order) + 1):
        if k == len(order) or C[order[k]] > C[order[start]] * (1 + rtol):
            groups.append(order[start:k])
            start = k
    return groups


def isoflop_profile(N, D, L, C: float) -> IsoFLOPProfile:
    """Fit the parabola in ln N for one budget; raises ValueError when it has no minimum."""
    N, D, L = (np.asarray(v, dtype=float) for v in (N, D, L))
    if len(np.unique(N)) < 3:
        raise ValueError(f"C={C:.3g}: a parabola needs at least 3 model sizes, got {len(np.unique(N))}")
    x = np.log(N)
    coef = np.polyfit(x, L, 2)
    if coef[0] <= 0:
        raise ValueError(f"C={C:.3g}: loss vs log N is not convex (no minimum); try more sizes")
    x_opt = -coef[1] / (2 * coef[0])
    # D at the optimum from the group's own N-D trade-off (exactly C / (6 N_opt) when C = 6 N D;
    # also right when the runs' FLOPs count attention or embeddings, which 6 N D leaves out)
    slope, intercept = np.polyfit(x, np.log(D), 1)
    return IsoFLOPProfile(C=float(C), N=N, D=D, L=L, coef=coef, N_opt=float(np.exp(x_opt)),
                          D_opt=float(np.exp(slope * x_opt + intercept)),
                          L_opt=float(np.polyval(coef, x_opt)),
                          interior=bool(x.min() <= x_opt <= x.max()))


def isoflop_fit(N, D, C, L, *, rtol: float = 0.1, level: float = 0.95) -> IsoFLOPFit:
    """Approach 2: a profile per budget group, then N_opt and D_opt as power laws of C."""
    N, D, C, L = (np.asarray(v, dtype=float).ravel() for v in (N, D, C, L))
    profiles, skipped = [], []
    for idx in group_by_compute(C, rtol):
        C_group = float(np.exp(np.log(C[idx]).mean()))
        try:
            profiles.append(isoflop_profile(N[idx], D[idx], L[idx], C_group))
        except ValueError as e:
            skipped.append(str(e))
    if len(profiles) < 2:  # one line: what was missing, budget by budget
        raise ValueError(f"needs at least two budgets with a minimum, got {len(profiles)}"
                         + (f" ({'; '.join(skipped)})" if skipped else ""))
    Cs = [p.C for p in profiles]
    return IsoFLOPFit(profiles=profiles, N_law=fit_power_law(Cs, [p.N_opt for p in profiles], level),
                      D_law=fit_power_law(Cs, [p.D_opt for p in profiles], level), skipped=skipped)


def power_law_band(x, y, grid, level: float = 0.95):
    """The `level` confidence band of the fitted power law's mean at `grid` (the regression line
    through (log x, log y) +- t * its standard error there); None with 2 points (no residual)."""
    lx, ly, lg = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float)), np.log(grid)
    n = len(lx)
    if n < 3 or np.ptp(lx) == 0:
        return None
    slope, intercept = np.polyfit(lx, ly, 1)
    s = math.sqrt(np.sum((ly - (slope * lx + intercept)) ** 2) / (n - 2))
    half = stats.t.ppf(0.5 + level / 2, n - 2) * s * np.sqrt(1 / n + (lg - lx.mean()) ** 2 / np.sum((lx - lx.mean()) ** 2))
    centre = slope * lg + intercept
    return np.exp(centre - half), np.exp(centre + half)


def compute_frontier(C, L, rtol: float = 0.0) -> np.ndarray:
    """Indices of the compute-efficient frontier in increasing C: the runs with a lower loss than
    every run that used less compute (the lower envelope of loss vs FLOPs). With `rtol` > 0 a
    budget group (group_by_compute) counts as one compute value and gives at most its best run:
    runs planned for the same budget then do not make a vertical stair of their own."""
    C, L = np.asarray(C, dtype=float), np.asarray(L, dtype=float)
    if rtol > 0 and len(C):
        best = np.array([idx[np.argmin(L[idx])] for idx in group_by_compute(C, rtol)])
        return best[compute_frontier(C[best], L[best])]
    order = np.lexsort((L, C))  # by C, ties by loss
    running_min = np.minimum.accumulate(L[order])
    return order[L[order] < np.concatenate([[np.inf], running_min[:-1]])]


def compute_optimal(fit: Approach3Fit | IsoFLOPFit, C):
    """(N_opt, D_opt) for budget(s) C from either approach's fit."""
    return fit.compute_optimal(C)
