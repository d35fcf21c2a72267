"""Compare groups of runs (seeds of a baseline and of a change) with the statistics a record needs.

    python -m nanogpt.scaling compare sweeps/baseline sweeps/change --target 3.28

Each path is one group: every finished run under it (a sweep or run directory, or a `collect`
CSV). Printed: per group n, mean, std and the 95% t-interval of the mean; Welch's two-sided
t-test of each group against the first; with --target, the one-sided t-test that a group's mean
is below the target, PASS at p < 0.01 (modded-nanogpt's rule for a record).
"""
from __future__ import annotations

import math
import os
import string
from dataclasses import dataclass

from nanogpt.errors import UserError
from nanogpt.run.identity import identity_settings
from nanogpt.scaling import stats
from nanogpt.scaling.seeds import usable

LOSS_NAMES = {"final": "final val loss (nats/token)", "best": "best val loss (nats/token)",
              "final_bpb": "final val bits per byte", "best_bpb": "best val bits per byte"}
SEED_HINT = "train more seeds: python launch.py -m ... 'seed=range(5)'"


@dataclass
class Group:
    name: str  # A, B, ...
    path: str
    runs: list  # every run found (collect.Run)
    values: list[float]  # the loss of each finished run that has it
    summary: stats.Summary

    @property
    def left_out(self) -> int:
        return len(self.runs) - len(self.values)


def load_group(name: str, path: str, loss: str, n_kind: str = "non_embedding") -> Group:
    from nanogpt.scaling.collect import load_runs

    try:
        runs = load_runs([path], n_kind=n_kind)
    except FileNotFoundError as e:
        raise UserError(f"{e}: give a sweep or run directory (or a collect CSV) per group") from None
    except ValueError as e:
        raise UserError(str(e)) from None
    if not runs:
        raise UserError(f"{path} holds no run directories (a run directory has summary.json, "
                        "metrics.jsonl or .hydra/): give the directory a sweep or run wrote")
    values = [r.loss(loss) for r in runs if usable(r, loss)]
    if not values:
        statuses = ", ".join(f"{sum(r.status == s for r in runs)} {s}" for s in sorted({r.status for r in runs}))
        raise UserError(f"no finished run in {path} has a {LOSS_NAMES[loss]} ({len(runs)} run(s): "
                        f"{statuses}); choose another --loss ({', '.join(LOSS_NAMES)})")
    return Group(name, path, runs, values, stats.describe(values))


def mixed_settings(group: Group) -> list[str]:
    """The settings in which a group's finished runs differ (other than the seed): a group
    should be seeds of one configuration, else its spread is not seed noise."""
    finished = [r for r in group.runs if r.status == "finished"]
    settings = [identity_settings(r.config) for r in finished if r.config]
    keys = sorted({k for s in settings for k in s})
    differing = [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1]
    points = {r.point for r in finished if r.point}
    if not differing and len(points) > 1:  # runs from a CSV: no config, but their points differ
        differing = [f"their point ({len(points)} different)"]
    return differing


def _need_two(group: Group, test: str, loss: str) -> None:
    if group.summary.n < 2:
        raise UserError(f"group {group.name} ({group.path}) has {group.summary.n} finished run with a {LOSS_NAMES[loss]}: "
                        f"{test} needs at least 2 per group; {SEED_HINT}")


def _fmt(x: float, spec: str = ".4f", signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return format(x, ("+" if signed else "") + spec)


def _p(p: float) -> str:
    return "-" if math.isnan(p) else f"{p:.3g}"


def compare(paths: list[str], loss: str = "final", target: float | None = None,
            n_kind: str = "non_embedding") -> str:
    """The report `compare` prints. Raises UserError on bad input (before printing anything)."""
    from nanogpt.scaling.collect import format_table

    if target is not None and not math.isfinite(target):
        raise UserError(f"--target must be a finite loss, got {target}")
    if len(paths) > len(string.ascii_uppercase):
        raise UserError(f"compare takes at most {len(string.ascii_uppercase)} groups, got {len(paths)}")
    groups = [load_group(name, path, loss, n_kind) for name, path in zip(string.ascii_uppercase, paths)]
    for g in groups[1:] if len(groups) > 1 else []:
        _need_two(groups[0], "Welch's t-test", loss)
        _need_two(g, "Welch's t-test", loss)
    if target is not None:
        for g in groups:
            _need_two(g, "the t-test against --target", loss)

    lines = [f"{LOSS_NAMES[loss]}: each group's finished runs"]
    rows = [[g.name, os.path.normpath(g.path), g.summary.n, _fmt(g.summary.mean), _fmt(g.summary.std),
             f"[{g.summary.ci[0]:.4f}, {g.summary.ci[1]:.4f}]" if g.summary.n > 1 else "-",
             g.left_out or ""] for g in groups]
    lines.append(format_table(["group", "path", "n", "mean", "std", "95% CI", "left out"], rows))
    for g in groups:
        differ = mixed_settings(g)
        if differ:
            lines.append(f"note: group {g.name}'s runs differ in {', '.join(differ[:5])}"
                         f"{' …' if len(differ) > 5 else ''}, not only by seed")
    if len(groups) > 1:
        base = groups[0]
        rows = []
        for g in groups[1:]:
            w = stats.welch(base.values, g.values)
            rows.append([f"{g.name} - {base.name}", _fmt(w.diff, signed=True),
                         f"[{w.ci[0]:+.4f}, {w.ci[1]:+.4f}]", _fmt(w.t, ".2f"), _fmt(w.df, ".1f"), _p(w.p)])
        lines += ["", f"Welch's t-test (two-sided, unequal variances) against group {base.name}",
                  format_table(["difference", "mean diff", "95% CI", "t", "df", "p"], rows)]
    if target is not None:
        rows = []
        for g in groups:
            t = stats.below_target(g.values, target)
            rows.append([g.name, _fmt(t.diff, signed=True), _fmt(t.t, ".2f"), int(t.df), _p(t.p),
                         "PASS" if t.passes() else "FAIL"])
        title = (f"One-sided t-test: is the mean below the target {target:g}? "
                 f"(PASS: p < {stats.PASS_P:g}, modded-nanogpt's rule)")
        lines += ["", title,
                  format_table(["group", "mean - target", "t", "df", "p", "verdict"], rows)]
    return "\n".join(lines)


def cmd_compare(args) -> int:
    print(compare(args.paths, args.loss, args.target, args.n_kind))
    return 0
