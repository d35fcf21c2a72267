"""A training run's side of a hyperparameter search (`-m hydra/sweeper=optuna`, the sweeper in
hydra_plugins/nanogpt_optuna_sweeper.py): the run reports each evaluation's val loss to its
Optuna trial as it happens, and stops early (checkpoint saved, exit 0, summary status `pruned`)
when the study's pruner says the trial is worse than the others were at that point.

The sweeper passes the trial through the job's environment (hydra.job.env_set, so it reaches a
local process, a submitit job and every SLURM rank alike): the study's storage, its name and the
trial's number. A SLURM job that is pre-empted and requeued keeps its environment, so it reports
into the same trial. Optuna is imported only when a run belongs to a search.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

from nanogpt.errors import UserError

ENV_STORAGE = "NANOGPT_SEARCH_STORAGE"
ENV_STUDY = "NANOGPT_SEARCH_STUDY"
ENV_TRIAL = "NANOGPT_SEARCH_TRIAL"

# the study's user attributes: what every job and a resumed sweeper must agree on
ATTR_SPACE = "nanogpt_search_space"
ATTR_PRUNER = "nanogpt_pruner"
ATTR_METRIC = "nanogpt_metric"

JOURNAL_NAME = "optuna.journal"
PRUNERS = ("none", "median", "percentile", "successive_halving", "hyperband")

# the numbers a training run's summary.json holds (nanogpt.training.loop.write_summary), any of
# which hydra.sweeper.metric may name; tests/test_search.py checks this list against a real run
TRAINING_METRICS = ("final_val_loss", "best_val_loss", "final_train_loss", "final_val_bpb", "best_val_bpb",
                    "final_val_loss_se", "tokens", "flops", "wall_time_s", "eval_time_s", "tokens_per_s",
                    "mfu", "params", "params_non_embedding", "iters")


def open_storage(spec: str):
    """An Optuna storage: a URL (sqlite:///..., postgresql://..., mysql://...) opens a database;
    anything else is the path of a journal file (JournalFileBackend), which many processes on
    many nodes may append to through a shared file system. Raises UserError when it cannot be
    opened, before anything in it changes."""
    import optuna

    try:
        if "://" in spec:
            return optuna.storages.RDBStorage(spec, engine_kwargs=_engine_kwargs(spec))
        from optuna.storages.journal import JournalFileBackend

        path = Path(spec)
        if not path.parent.is_dir():
            raise FileNotFoundError(f"no directory {path.parent}")
        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    except Exception as e:  # noqa: BLE001 - any driver's error: the user's URL or path to fix
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot open the study's storage {spec!r}: {reason}. Give hydra.sweeper.storage "
                        "a reachable database URL (sqlite:///PATH, postgresql://...) or the path of a "
                        "journal file in an existing directory; leave it unset for a journal file in the "
                        "sweep directory") from None


def _engine_kwargs(url: str) -> dict:
    # SQLite: wait for a lock held by another trial's process rather than fail at once
    return {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}


def make_pruner(spec: dict):
    """Optuna's pruner named by spec["name"] (PRUNERS), with spec["args"] as its arguments."""
    import optuna

    name, args = spec.get("name") or "none", dict(spec.get("args") or {})
    classes = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
               "percentile": optuna.pruners.PercentilePruner,
               "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
               "hyperband": optuna.pruners.HyperbandPruner}
    if name not in classes:
        raise UserError(f"hydra.sweeper.pruner={name} is not a pruner: use {', '.join(PRUNERS)}")
    try:
        return classes[name](**args)
    except (TypeError, ValueError) as e:
        raise UserError(f"hydra.sweeper.pruner_args={args} do not suit pruner {name}: {e}") from None


def intermediate_key(metric: str | None) -> str:
    """What a run reports at each evaluation: val bits per byte when the search minimises a
    bpb figure, else the val loss (nats per token)."""
    return "val_bpb" if metric and metric.endswith("bpb") else "val"


class TrialReporter:
    """One trial of a study, as its training run sees it (rank 0 reports; every rank holds one so
    that all agree on stopping)."""

    def __init__(self, storage: str, study_name: str, number: int, run_dir: Path, max_iters: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        backend = open_storage(storage)
        try:
            study_id = backend.get_study_id_from_name(study_name)
        except KeyError:
            raise UserError(f"{ENV_STUDY}={study_name}: no such study in {storage}") from None
        attrs = backend.get_study_user_attrs(study_id)
        pruner = attrs.get(ATTR_PRUNER) or {}
        self.study = optuna.load_study(study_name=study_name, storage=backend, pruner=make_pruner(pruner))
        self.warmup_iters = warmup_iters(pruner.get("warmup_frac") or 0.0, max_iters)
        self.trial = optuna.trial.Trial(self.study, backend.get_trial_id_from_study_id_trial_number(study_id, number))
        self.backend = backend
        self.key = intermediate_key(attrs.get(ATTR_METRIC))
        self.number = number
        self.trial.set_user_attr("run_dir", str(Path(run_dir).resolve()))

    def should_prune(self, it: int, losses: dict) -> bool:
        """Report this evaluation (iteration `it`); True when the pruner stops the trial here. The
        first evaluation (before training) says nothing about the settings and is not reported;
        within the warm-up the pruner is not asked (the value is still reported: other trials'
        pruner compares against it)."""
        value = losses.get(self.key)
        if it == 0 or value is None or not math.isfinite(value):
            return False
        if it in self.backend.get_trial(self.trial._trial_id).intermediate_values:
            return False  # a resumed run evaluates again where it stopped: reported already
        self.trial.report(float(value), step=it)
        return it >= self.warmup_iters and self.trial.should_prune()


def warmup_iters(frac: float, max_iters: int) -> int:
    """The first iteration at which a trial of `max_iters` iterations may be pruned. Early in a
    run a lower learning rate is behind and a higher one ahead, and a WSD schedule's cooldown
    reorders them at the end (short-horizon bias): a pruner that judges the first evaluations
    stops the settings that win (docs/tuning.md, "Pruning")."""
    return math.ceil(round(frac * max_iters, 6))  # 0.3 * 20 is 6.000000000000001


def reporter_from_env(run_dir: Path, max_iters: int) -> TrialReporter | None:
    """The trial this run belongs to, or None when it is not part of a search."""
    storage, study, number = (os.environ.get(k) for k in (ENV_STORAGE, ENV_STUDY, ENV_TRIAL))
    if not (storage and study and number):
        return None
    return TrialReporter(storage, study, int(number), run_dir, max_iters)
