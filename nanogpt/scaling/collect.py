"""Collect a sweep's runs and fit scaling laws to them.

    python -m nanogpt.scaling collect sweeps/isoflop --out runs.csv
    python -m nanogpt.scaling fit runs.csv --approach both --target-flops 1e19 1e20 --plots plots/
    python -m nanogpt.scaling best-lr sweeps/lr_sweep
    python -m nanogpt.scaling compare sweeps/baseline sweeps/change --target 3.28   (compare.py)
    python -m nanogpt.scaling tune-fit sweeps/size_lr_batch --plots plots/          (tune.py)

Everything is read from the files each run writes (summary.json, metrics.jsonl, .hydra/config.yaml),
never from logs. Runs that did not finish are listed with their status but left out of the fits.
The fits themselves live in `nanogpt.scaling.fit` (re-exported here); the command line is __main__.py.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nanogpt.errors import UserError
from nanogpt.run.identity import point_id
from nanogpt.run.results import find_run_dirs, read_config, read_metrics, read_summary  # noqa: F401
from nanogpt.run.table import short_names
from nanogpt.scaling import seeds
from nanogpt.scaling.fit import (  # noqa: F401
    CHINCHILLA,
    CHINCHILLA_TABLE,
    Approach3Fit,
    Bootstrap,
    IsoFLOPFit,
    IsoFLOPProfile,
    PowerLawFit,
    bootstrap_approach3,
    chinchilla_law,
    compute_frontier,
    compute_optimal,
    fit_approach3,
    fit_power_law,
    group_by_compute,
    isoflop_fit,
    isoflop_profile,
)

N_KINDS = {"non_embedding": "params_non_embedding", "total": "params"}


def _get(d: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _num(value, kind=float):
    """A number from a summary/config value; None, strings (unresolved ${...}), bools -> missing."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan if kind is float else None
    return kind(value)


# --------------------------------------------------------------------------------------------
# One row per run
# --------------------------------------------------------------------------------------------
@dataclass
class Run:
    run_dir: str
    status: str  # summary.json's status, or "incomplete" when there is none
    N: float  # the parameter count used for fits (see N_KINDS)
    D: float  # tokens trained on
    C: float  # training FLOPs (6 N D when the summary does not say)
    final_val_loss: float
    best_val_loss: float
    lr: float
    n_layer: int | None
    n_embd: int | None
    wall_time_s: float
    params: float
    params_non_embedding: float
    iters: float
    # validation bits per byte (nanogpt.evals.bpb); a cooldown branch's parent run and iteration
    final_val_bpb: float = math.nan
    best_val_bpb: float = math.nan
    branched_from: str = ""
    # the run's seed, and the id of its experiment less the seed: runs of one point share it
    # (nanogpt.run.identity.point_id; "" when the run records no config)
    seed: float = math.nan
    point: str = ""
    overrides: str = ""  # the command line's overrides (.hydra/overrides.yaml), space-separated
    config: dict = field(default_factory=dict, repr=False, compare=False)  # not in the CSV

    def loss(self, which: str = "final") -> float:
        """The val loss a fit uses: final | best (nats per token), final_bpb | best_bpb (bits per byte)."""
        return getattr(self, f"{which.removesuffix('_bpb')}_val_{'bpb' if which.endswith('_bpb') else 'loss'}")


LOSSES = ("final", "best", "final_bpb", "best_bpb")
LOSS_LABELS = {"final": "final validation loss (nats/token)", "best": "best validation loss (nats/token)",
               "final_bpb": "final validation loss (bits/byte)", "best_bpb": "best validation loss (bits/byte)"}
N_LABELS = {"non_embedding": "non-embedding parameters N", "total": "parameters N (with embeddings)"}


CSV_COLUMNS = [f.name for f in dataclasses.fields(Run) if f.name != "config"]
OPTIONAL_COLUMNS = {"final_val_bpb", "best_val_bpb", "branched_from", "seed", "point", "overrides"}  # CSVs written before them still read


def read_run(run_dir, n_kind: str = "non_embedding") -> Run:
    """A Run from the summary, with what metrics.jsonl says filling anything it lacks."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir) or {}
    metrics = read_metrics(run_dir)
    evals = [m["val_loss"] for m in metrics
             if m.get("kind") == "eval" and isinstance(m.get("val_loss"), (int, float))]
    bpbs = [m["val_bpb"] for m in metrics if m.get("kind") == "eval" and isinstance(m.get("val_bpb"), (int, float))]
    branch = summary.get("branched_from") or {}
    last = metrics[-1] if metrics else {}
    config = read_config(run_dir, summary)

    def pick(key, fallback=math.nan):
        value = _num(summary.get(key))
        return fallback if math.isnan(value) else value

    params, params_ne = pick("params"), pick("params_non_embedding")
    N = params if n_kind == "total" else params_ne
    D = pick("tokens", _num(last.get("tokens")))
    return Run(
        run_dir=str(run_dir), status=summary.get("status", "unknown") if summary else "incomplete",
        N=N, D=D, C=pick("flops", 6 * N * D),
        final_val_loss=pick("final_val_loss", evals[-1] if evals else math.nan),
        best_val_loss=pick("best_val_loss", min(evals) if evals else math.nan),
        lr=_num(_get(config, "optim.lr")), n_layer=_num(_get(config, "model.n_layer"), int),
        n_embd=_num(_get(config, "model.n_embd"), int),
        wall_time_s=pick("wall_time_s", _num(last.get("time_s"))), params=params,
        params_non_embedding=params_ne, iters=pick("iters", _num(last.get("iter"))),
        final_val_bpb=pick("final_val_bpb", bpbs[-1] if bpbs else math.nan),
        best_val_bpb=pick("best_val_bpb", math.nan),
        branched_from=f"{branch['run']}@{branch['iter']}" if branch else "",
        seed=_num(config.get("seed")), point=point_id(config, params, D) if config else "",
        overrides=read_overrides(run_dir), config=config)


def read_overrides(run_dir: Path) -> str:
    """The overrides the run was launched with, in full (its directory's name is Hydra's
    override string, cut and hashed when long): "" when .hydra/overrides.yaml is missing."""
    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ""
    import yaml

    try:
        items = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return ""
    return " ".join(map(str, items)) if isinstance(items, list) else ""


def write_csv(runs: list[Run], path) -> None:
    """One row per run: its short name (as the runs table and `collect` show it), then every
    CSV_COLUMNS field, the run's directory and full overrides among them."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["name", *CSV_COLUMNS])
        writer.writeheader()
        for name, run in zip(short_names([r.run_dir for r in runs]), runs):
            row = {"name": name, **{k: getattr(run, k) for k in CSV_COLUMNS}}
            writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                             for k, v in row.items()})


def _from_csv(column: str, text: str | None):
    if text is None:  # an optional column the CSV lacks
        return "" if column in ("branched_from", "point", "overrides") else math.nan
    if column in ("run_dir", "status", "branched_from", "point", "overrides"):
        return text
    if column in ("n_layer", "n_embd"):
        return int(text) if text else None
    return float(text) if text else math.nan


def read_csv(path, n_kind: str | None = None) -> list[Run]:
    """Runs back from `collect --out`; `n_kind` re-picks N from the params columns."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or []) - OPTIONAL_COLUMNS
        if missing:
            raise ValueError(f"{path}: not a `collect` CSV (missing columns {sorted(missing)})")
        runs = [Run(**{k: _from_csv(k, row.get(k)) for k in CSV_COLUMNS}) for row in reader]
    for run in runs:
        if n_kind and not math.isnan(getattr(run, N_KINDS[n_kind])):
            run.N = getattr(run, N_KINDS[n_kind])
    return runs


def load_runs(paths, n_kind: str = "non_embedding") -> list[Run]:
    """Runs from any mix of sweep/run directories (searched recursively) and `collect` CSVs."""
    if n_kind not in N_KINDS:
        raise ValueError(f"n_kind must be one of {list(N_KINDS)}, got {n_kind!r}")
    runs = []
    for path in map(Path, paths):
        if path.is_file() and path.suffix == ".csv":
            runs += read_csv(path, n_kind)
        else:
            runs += [read_run(d, n_kind) for d in find_run_dirs([path])]
    return runs


def fit_data(runs: list[Run], loss: str = "final") -> dict[str, np.ndarray]:
    """Arrays N, D, C, L (and run_dir) of the finished runs with every value usable for a fit."""
    keep = [r for r in runs if r.status == "finished"
            and all(math.isfinite(v) and v > 0 for v in (r.N, r.D, r.C, r.loss(loss)))]
    return dict(N=np.array([r.N for r in keep]), D=np.array([r.D for r in keep]),
                C=np.array([r.C for r in keep]), L=np.array([r.loss(loss) for r in keep]),
                run_dir=np.array([r.run_dir for r in keep], dtype=object))


# --------------------------------------------------------------------------------------------
# Learning-rate sweeps
# --------------------------------------------------------------------------------------------
@dataclass
class LRChoice:
    size: str  # "n_layer=4 n_embd=128" or "N=1.2e+06"
    N: float
    lrs: np.ndarray  # distinct lrs tried, ascending
    losses: np.ndarray  # mean loss at each (over repeats such as seeds)
    best_lr: float
    best_loss: float
    fitted_lr: float  # minimum of the loss-vs-log-lr parabola (nan: too few lrs, or no interior minimum)
    edge: bool  # the best lr is the smallest or largest tried: the sweep should be extended


def best_lr(runs: list[Run], loss: str = "final", by: str = "arch") -> list[LRChoice]:
    """The best learning rate per model size (by = "arch": (n_layer, n_embd); "N": parameters)."""
    groups: dict[str, list[Run]] = {}
    for r in runs:
        if r.status != "finished" or not (math.isfinite(r.lr) and r.lr > 0 and math.isfinite(r.loss(loss))):
            continue
        if by == "arch" and r.n_layer is not None and r.n_embd is not None:
            key = f"n_layer={r.n_layer} n_embd={r.n_embd}"
        else:
            key = f"N={r.N:.4g}"
        groups.setdefault(key, []).append(r)
    choices = []
    for key, group in groups.items():
        lrs = np.unique([r.lr for r in group])
        losses = np.array([np.mean([r.loss(loss) for r in group if r.lr == lr]) for lr in lrs])
        i = int(np.argmin(losses))
        fitted = math.nan
        if len(lrs) >= 3:
            coef = np.polyfit(np.log(lrs), losses, 2)
            x = -coef[1] / (2 * coef[0]) if coef[0] > 0 else math.nan
            if np.log(lrs[0]) <= x <= np.log(lrs[-1]):
                fitted = float(np.exp(x))
        choices.append(LRChoice(size=key, N=float(np.nanmedian([r.N for r in group])), lrs=lrs,
                                losses=losses, best_lr=float(lrs[i]), best_loss=float(losses[i]),
                                fitted_lr=fitted, edge=len(lrs) > 1 and i in (0, len(lrs) - 1)))
    return sorted(choices, key=lambda c: (math.isnan(c.N), c.N, c.size))


# --------------------------------------------------------------------------------------------
# A synthetic sweep, for the notebook and the tests
# --------------------------------------------------------------------------------------------
def synthetic_sweep(root, law: Approach3Fit | None = None, budgets=(1e17, 1e18, 1e19, 1e20),
                    sizes_per_budget: int = 7, noise: float = 0.005, seed: int = 0) -> Path:
    """Write an IsoFLOP sweep whose losses follow `law` (default: Chinchilla's) times log-normal
    noise of relative size `noise`: per budget C, sizes from N_opt/10 to 10 N_opt with D = C/(6N).
    Each run gets a summary.json (status finished) and a one-line metrics.jsonl, like a real run."""
    law = law or chinchilla_law()
    rng = np.random.default_rng(seed)
    root = Path(root)
    job = 0
    for C in budgets:
        N_opt, _ = law.compute_optimal(C)
        for N in N_opt * np.logspace(-1, 1, sizes_per_budget):
            N, D = float(round(N)), float(round(C / (6 * N)))
            L = float(law.predict(N, D) * np.exp(rng.normal(0, noise)))
            run_dir = root / f"{job}_C={C:.0e},N={N:.3g}"
            run_dir.mkdir(parents=True, exist_ok=True)
            summary = dict(status="finished", params=N, params_non_embedding=N, tokens=D,
                           flops=6 * N * D, flops_per_token=6 * N, iters=1, max_iters=1,
                           best_val_loss=L, final_val_loss=L, final_train_loss=L, wall_time_s=0.0,
                           tokens_per_s=0.0, mfu=None,
                           config=dict(model={}, optim=dict(lr=1e-3), data=dict(name="synthetic"),
                                       task=dict(name="train"), seed=seed))
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            (run_dir / "metrics.jsonl").write_text(json.dumps(dict(
                kind="eval", iter=1, tokens=D, train_loss=L, val_loss=L, time_s=0.0)) + "\n")
            job += 1
    return root


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def format_table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [["-" if v is None or (isinstance(v, float) and math.isnan(v)) else
                         (f"{v:.4g}" if isinstance(v, float) else str(v)) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


def format_runs(runs: list[Run]) -> str:
    """The runs by the short names the runs table gives them (a sweep's job number: "3", not
    Hydra's override string); `--out` writes each run's directory and full overrides."""
    rows = [[name, r.status, r.N, r.D, r.C,
             r.final_val_loss, r.best_val_loss, r.final_val_bpb, r.lr, r.n_layer, r.n_embd, r.wall_time_s,
             f"@{r.branched_from.rsplit('@', 1)[1]}" if r.branched_from else ""]
            for name, r in zip(short_names([r.run_dir for r in runs]), runs)]
    return format_table(["run", "status", "N", "D", "C", "final_val", "best_val", "final_bpb", "lr", "n_layer",
                         "n_embd", "wall_s", "branch"], rows)


def _with_ci(value: float, ci) -> str:
    return f"{value:<10.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci and not math.isnan(ci[0]) else "")


def format_approach3(fit: Approach3Fit, boot: Bootstrap | None) -> str:
    ci = boot.intervals if boot else {}
    head = (f"Approach 3: L(N, D) = E + A/N^alpha + B/D^beta  ({fit.n_points} runs, Huber objective "
            f"{fit.objective:.3g}" + (f", {int(np.isfinite(boot.samples['E']).sum())} bootstrap "
                                      f"resamples, {boot.level:.0%} intervals)" if boot else ")")
            + ("  DEGENERATE (see the warning)" if fit.degenerate else ""))
    notes = {"a": "  (N_opt ~ C^a)", "b": "  (D_opt ~ C^b)"}
    return "\n".join([head] + [f"  {k:<6}{_with_ci(v, ci.get(k))}{notes.get(k, '')}"
                               for k, v in fit.as_dict().items()])


def format_isoflops(iso: IsoFLOPFit) -> str:
    rows = [[p.C, len(p.N), p.N_opt, p.D_opt, p.L_opt, "yes" if p.interior else "NO (extrapolated)"]
            for p in iso.profiles]
    lines = ["Approach 2: IsoFLOP profiles (parabola of loss vs ln N per budget)",
             format_table(["C", "runs", "N_opt", "D_opt", "L_opt", "min inside sizes"], rows),
             f"  N_opt ~ C^a: a = {_with_ci(iso.N_law.a, iso.N_law.ci)}",
             f"  D_opt ~ C^b: b = {_with_ci(iso.D_law.a, iso.D_law.ci)}"]
    return "\n".join(lines + [f"  skipped {s}" for s in iso.skipped])


def cmd_collect(args) -> int:
    runs = load_runs(args.paths, n_kind=args.n_kind)
    if not runs:
        raise UserError(no_runs(args.paths))
    print(format_runs(runs))
    counts = {s: sum(r.status == s for r in runs) for s in sorted({r.status for r in runs})}
    print(f"{len(runs)} runs: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    groups = seeds.group_seeds(runs, args.loss)
    if seeds.has_repeats(groups):  # runs that differ only by seed: one point, with its spread
        print(f"\n{len(groups)} points ({args.loss} val loss over the seeds of each)")
        print(format_table(seeds.SEED_TABLE_HEADER, seeds.seed_table_rows(groups)))
    if args.out:
        write_csv(runs, args.out)
        print(f"wrote {args.out}")
    return 0


# What a fit raises on data that cannot carry it; the command says so in one line and goes on.
FIT_ERRORS = (ValueError, ArithmeticError, np.linalg.LinAlgError)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _sweep_name(paths) -> str:
    """A figure title for the sweep: its directory name(s), e.g. "isoflop" or "gpt2 + modern" (a
    CSV's folder: sweeps/isoflop/runs.csv is "isoflop")."""
    names = [(Path(p).resolve().parent if Path(p).suffix == ".csv" else Path(p).resolve()).name for p in paths]
    return " + ".join(dict.fromkeys(names))


def no_runs(paths) -> str:
    return (f"no run directories under {' '.join(map(str, paths))}: a run is a directory holding "
            "summary.json, metrics.jsonl or .hydra/; pass a sweep's folder, run directories or a collect CSV")


def cmd_fit(args) -> int:
    runs = load_runs(args.paths, n_kind=args.n_kind)
    if not runs:
        raise UserError(no_runs(args.paths))
    usable = sum(seeds.usable(r, args.loss) for r in runs)
    fitted, stds = seeds.seed_means(runs, args.loss) if args.seeds == "mean" else (runs, {})
    data = fit_data(fitted, args.loss)
    if len(fitted) < usable:  # seeds of one point: their mean is one point of the fit
        print(f"{usable} of {len(runs)} runs are finished with a {args.loss} val loss: fitting the "
              f"means of their {len(data['N'])} points over seeds")
    else:
        print(f"{len(data['N'])} of {len(runs)} runs are finished with a {args.loss} val loss: fitting those")
    fit3 = boot = iso = None
    skipped: list[str] = []  # "approach N: why it could not be fitted"
    if args.approach in ("3", "both"):
        try:
            fit3 = fit_approach3(data["N"], data["D"], data["L"],
                                 n_starts=None if args.starts == 0 else args.starts)
            if args.bootstrap:
                boot = bootstrap_approach3(data["N"], data["D"], data["L"], n_boot=args.bootstrap,
                                           fit=fit3, seed=args.seed)
            print(format_approach3(fit3, boot))
            if fit3.degenerate:
                warnings.warn(f"the approach-3 fit is degenerate: {'; '.join(fit3.problems)}. Its "
                              "N_opt and intervals mean little: add runs (sizes, budgets) around the optimum")
        except FIT_ERRORS as e:
            reason = _one_line(e).removeprefix("approach 3 ")  # "approach 3 fits 5 parameters: ..."
            skipped.append(f"approach 3: {reason}")
    if args.approach in ("2", "both"):
        try:
            iso = isoflop_fit(data["N"], data["D"], data["C"], data["L"], rtol=args.rtol)
            print(format_isoflops(iso))
        except FIT_ERRORS as e:
            skipped.append(f"approach 2: {_one_line(e)}" + (" (the raw curves are in the plots)" if args.plots else ""))
    if fit3 or iso:  # what could not be fitted beside what could; when nothing could: the error below
        for reason in skipped:
            print(reason.replace(":", " skipped:", 1))
    if args.target_flops and (fit3 or iso):
        rows = []
        for C in args.target_flops:
            if fit3:
                N, D = fit3.compute_optimal(C)
                n_ci = boot.compute_optimal_interval(C)[0] if boot else None
                rows.append([C, "3", _with_ci(float(N), n_ci), float(D), float(D / N),
                             float(fit3.predict(N, D))])
            if iso:
                N, D = iso.compute_optimal(C)
                rows.append([C, "2", float(N), float(D), float(D / N), None])
        print("Compute-optimal allocation")
        print(format_table(["C", "approach", "N_opt", "D_opt", "tokens/param", "predicted loss"], rows))
    if args.plots and len(data["N"]):
        from nanogpt.scaling import plot
        out = Path(args.plots)
        out.mkdir(parents=True, exist_ok=True)
        ext = args.format
        labels = dict(title=args.title or _sweep_name(args.paths), loss_label=LOSS_LABELS[args.loss],
                      n_label=N_LABELS[args.n_kind])
        yerr = seeds.std_array(data["run_dir"], stds)  # runs that differ only by seed: their spread
        written = [plot.plot_loss_vs_flops(data["C"], data["L"], data["N"], fit=fit3, D=data["D"], boot=boot,
                                           out=out / f"loss_vs_flops.{ext}",
                                           yerr=yerr if np.isfinite(yerr).any() else None, **labels)]
        if args.approach in ("2", "both"):  # the raw curves even when no parabola could be fitted
            written.append(plot.plot_isoflops(iso, data=data, rtol=args.rtol, fit3=fit3, boot=boot,
                                              out=out / f"isoflops.{ext}", **labels))
        if fit3:
            written.append(plot.plot_approach3(data["N"], data["D"], data["L"], fit3, boot=boot,
                                               out=out / f"approach3.{ext}", **labels))
        print("wrote " + " ".join(str(p) for p in written))
    if not (fit3 or iso):
        raise UserError(f"no scaling law could be fitted to {len(data['N'])} finished "
                        f"run{'s' * (len(data['N']) != 1)} ({'; '.join(skipped)}): add runs of more sizes and budgets")
    return 0


def cmd_best_lr(args) -> int:
    choices = best_lr(load_runs(args.paths, n_kind=args.n_kind), args.loss, args.by)
    if not choices:
        raise UserError(f"no finished runs with an lr and a {args.loss} val loss under "
                        f"{' '.join(map(str, args.paths))}: best-lr needs runs that finished "
                        "(python -m nanogpt.scaling collect lists their status)")
    rows = [[c.size, c.N, len(c.lrs), c.best_lr, c.best_loss, c.fitted_lr,
             "yes: extend the sweep" if c.edge else ""] for c in choices]
    print(format_table(["size", "N", "lrs", "best_lr", f"{args.loss}_val", "fitted_lr", "at edge"], rows))
    return 0
