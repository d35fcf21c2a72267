"""Runs that differ only by seed are one point of a sweep: group them, report their spread, and
give the fits one run per point (the mean over its seeds).

    python launch.py -m experiment=scaling/isoflop_tiny 'seed=range(3)'
    python -m nanogpt.scaling collect sweeps/isoflop_tiny      # the per-point table: n, mean, std
    python -m nanogpt.scaling fit sweeps/isoflop_tiny          # fits the means, plots error bars

A run's point is `Run.point` (nanogpt.run.identity.point_id: its config less the seed and the
settings that do not change what is trained, with its parameter and token counts). Runs read
from a CSV written before that column existed each stand alone.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass

import numpy as np

from nanogpt.run.identity import identity_settings
from nanogpt.scaling.stats import Summary, describe


def loss_attr(which: str) -> str:
    """The Run attribute of a loss name: final -> final_val_loss, final_bpb -> final_val_bpb."""
    return f"{which.removesuffix('_bpb')}_val_{'bpb' if which.endswith('_bpb') else 'loss'}"


@dataclass
class SeedGroup:
    """The finished runs of one point that have the loss, and its statistics over them."""
    point: str
    label: str  # what sets this point apart from the others ("model.n_embd=64 optim.lr=0.003")
    runs: list  # collect.Run
    loss: str
    summary: Summary

    @property
    def seeds(self) -> list:
        return [int(r.seed) if math.isfinite(r.seed) else None for r in self.runs]

    def mean_run(self):
        """One run standing for the point: the first run with the mean loss (the fits' input)."""
        return dataclasses.replace(self.runs[0], **{loss_attr(self.loss): self.summary.mean})


def usable(run, loss: str) -> bool:
    return run.status == "finished" and math.isfinite(run.loss(loss))


def group_seeds(runs, loss: str = "final") -> list[SeedGroup]:
    """The finished runs that have `loss`, grouped by point, in the order they first appear."""
    groups: dict[str, list] = {}
    for r in runs:
        if usable(r, loss):
            groups.setdefault(r.point or r.run_dir, []).append(r)
    labels = _labels(list(groups.values()))
    return [SeedGroup(key, label, members, loss, describe([r.loss(loss) for r in members]))
            for (key, members), label in zip(groups.items(), labels)]


def _labels(groups: list[list]) -> list[str]:
    """A label per group: the settings whose values differ between the groups, else the first
    run's directory name (with "+k" for the other seeds)."""
    settings = [identity_settings(g[0].config) for g in groups]
    keys = sorted({k for s in settings for k in s})
    differing = [k for k in keys if len({repr(s.get(k)) for s in settings}) > 1]
    labels = []
    for g, s in zip(groups, settings):
        label = " ".join(f"{k}={s.get(k)}" for k in differing)
        if not label:
            label = os.path.basename(g[0].run_dir.rstrip("/")) + (f" (+{len(g) - 1})" if len(g) > 1 else "")
        labels.append(label)
    return labels


def has_repeats(groups: list[SeedGroup]) -> bool:
    return any(g.summary.n > 1 for g in groups)


def seed_means(runs, loss: str = "final") -> tuple[list, dict[str, float]]:
    """One run per point with its mean loss, and each one's std over seeds by run_dir (nan for a
    point with one run): what `fit --seeds mean` fits and draws as error bars."""
    groups = group_seeds(runs, loss)
    means = [g.mean_run() for g in groups]
    return means, {m.run_dir: g.summary.std for m, g in zip(means, groups)}


def seed_table_rows(groups: list[SeedGroup]) -> list[list]:
    """Rows of `collect`'s per-point table: point, n, seeds, mean, std, 95% interval."""
    rows = []
    for g in groups:
        s = g.summary
        seeds = ",".join("?" if x is None else str(x) for x in g.seeds)
        ci = f"[{s.ci[0]:.4f}, {s.ci[1]:.4f}]" if s.n > 1 else "-"
        rows.append([g.label, s.n, seeds, f"{s.mean:.4f}", f"{s.std:.4f}" if s.n > 1 else "-", ci])
    return rows


SEED_TABLE_HEADER = ["point", "n", "seeds", "mean", "std", "95% CI"]


def std_array(run_dirs, stds: dict[str, float]) -> np.ndarray:
    """The std over seeds of each fitted run (by run_dir), nan where it has none."""
    return np.array([stds.get(d, math.nan) for d in run_dirs], dtype=float)
