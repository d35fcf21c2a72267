"""A hyperparameter search as a Hydra sweeper: `python launch.py -m hydra/sweeper=optuna ...`.

Built on Optuna's ask/tell API rather than on hydra-optuna-sweeper, which requires optuna<3 (its
SQLite storage fails on SQLAlchemy 2) and has no pruning: here the current Optuna asks for each
trial's settings, the configured launcher (submitit_local, slurm, slurm_gpu_node; basic runs one
at a time) keeps n_jobs trials in flight, a new one starting as soon as one ends, and each trial's
training run reports its evaluations to the study itself (nanogpt/run/search.py), so the study's
pruner stops a bad trial at its next evaluation past the warm-up. SIGINT/SIGTERM cancels the
trials' jobs and leaves them for the same command to resume.

The search space is written as Hydra's sweep overrides: a comma list or `choice(a,b)` (one of
these), `range(1,5)` (integers 1..4), `interval(1e-4,1e-1)` (a float), tagged `log` or `int`
(`tag(log,interval(1e-4,1e-1))`). Other overrides are fixed for every trial.

The study lives in the sweep directory (sweeps/<sweep_name>, or sweeps/<study name>) in a journal
file by default, so the same command continues it: finished trials stay, a trial whose process
died is run again into its own run directory (which resumes from its checkpoint), and n_trials
counts every trial the study holds. The directory ends with trials.csv, best.yaml and Optuna's
plots. docs/tuning.md, "Search".

It lives in Hydra's plugin namespace, where Hydra's scan imports it without registering it first
(so no `from __future__ import annotations`); optuna is imported only when a search starts.
"""

import contextlib
import csv
import hashlib
import json
import logging
import math
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from nanogpt.errors import UserError

log = logging.getLogger(__name__)

# the settings (conf/hydra/sweeper/optuna.yaml says what each means), stored as plain data like
# the SLURM launcher's: Hydra's pickled state then names nothing a job would have to import
SWEEPER_CONFIG = {
    "_target_": "hydra_plugins.nanogpt_optuna_sweeper.OptunaSweeper",
    "sampler": "tpe", "seed": None, "startup_trials": None, "n_trials": 20, "n_jobs": 1,
    "direction": "minimize", "metric": None, "study_name": None, "storage": None,
    "pruner": "median", "pruner_startup_trials": None, "pruner_warmup_steps": None,
    "pruner_warmup_frac": 0.3, "pruner_interval_steps": None,
    "min_resource": None, "max_resource": None, "reduction_factor": None, "percentile": None,
}
ConfigStore.instance().store(group="hydra/sweeper", name="nanogpt_optuna", node=SWEEPER_CONFIG, provider="nanogpt")

SAMPLERS = ("tpe", "random")
DIRECTIONS = ("minimize", "maximize")
# which settings each pruner takes, under Optuna's names
PRUNER_SETTINGS = {
    "none": {},
    "median": {"pruner_startup_trials": "n_startup_trials", "pruner_warmup_steps": "n_warmup_steps",
               "pruner_interval_steps": "interval_steps"},
    "percentile": {"percentile": "percentile", "pruner_startup_trials": "n_startup_trials",
                   "pruner_warmup_steps": "n_warmup_steps", "pruner_interval_steps": "interval_steps"},
    "successive_halving": {"min_resource": "min_resource", "reduction_factor": "reduction_factor"},
    "hyperband": {"min_resource": "min_resource", "max_resource": "max_resource",
                  "reduction_factor": "reduction_factor"},
}


# ----------------------------------------------------------------------------------------------
# the search space: Hydra's sweep overrides as Optuna distributions

def parse_arguments(arguments: Sequence[str], need_space: bool = True) -> Tuple[Dict[str, Any], List[str]]:
    """The search space ({parameter: distribution}, by the override's key as written, `+` and
    all) and the fixed overrides, from the command's task overrides."""
    try:
        overrides = OverridesParser.create().parse_overrides(list(arguments))
    except Exception as e:  # noqa: BLE001 - Hydra's parse error names the bad override
        raise UserError(f"cannot parse the search space: {_first_line(e)}. Write it the Hydra way: "
                        "a,b,c or choice(a,b,c), range(1,5), interval(1e-4,1e-1), tag(log,interval(1e-4,1e-1))") from None
    space, fixed = {}, []
    for o in overrides:
        if o.is_sweep_override():
            space[o.get_key_element()] = distribution(o)
        else:
            fixed.append(o.input_line)
    if not space and need_space:
        raise UserError("nothing to search: give at least one parameter a range, e.g. "
                        "'optim.lr=tag(log,interval(1e-4,1e-1))', 'model.n_layer=range(2,6)' or optim.decay_frac=0.2,0.4")
    return space, fixed


def check_search_command(argv: Sequence[str]) -> None:
    """launch.py, before Hydra: a search space that does not parse is one `error:` line and exit 2
    (Hydra itself would print its grammar error over several lines and exit 1)."""
    if not any(a in ("-m", "--multirun") for a in argv) or "hydra/sweeper=optuna" not in argv:
        return
    try:
        parse_arguments([a for a in argv if "=" in a and not a.startswith("-") and not _is_hydra(a)],
                        need_space=False)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def _is_hydra(arg: str) -> bool:
    return arg.lstrip("+~").startswith(("hydra.", "hydra/"))


def distribution(o: Override):
    """The Optuna distribution of one sweep override."""
    import optuna.distributions as d

    sweep = o.value()
    if not isinstance(sweep, (ChoiceSweep, RangeSweep, IntervalSweep)):
        raise UserError(f"cannot search {o.input_line}: use a,b,c, choice(...), range(...) or interval(...) "
                        "(a glob is not a search space)")
    tags = set(sweep.tags)
    if tags - {"log", "int"}:
        raise UserError(f"{o.input_line}: unknown tag(s) {sorted(tags - {'log', 'int'})}: use log and/or int")
    try:
        if isinstance(sweep, ChoiceSweep):
            values = list(sweep.list)
            if not all(isinstance(v, (str, int, float, bool)) or v is None for v in values):
                raise ValueError("a choice must be of plain values (numbers, strings, true/false, null)")
            return d.CategoricalDistribution(values)
        if isinstance(sweep, RangeSweep):
            values = list(o.sweep_iterator())
            if not values:
                raise ValueError("the range is empty")
            if all(isinstance(v, int) for v in values):
                return d.IntDistribution(min(values), max(values), step=abs(int(sweep.step)), log="log" in tags)
            return d.FloatDistribution(min(values), max(values), step=abs(float(sweep.step)), log="log" in tags)
        if isinstance(sweep, IntervalSweep):
            if "int" in tags:
                return d.IntDistribution(int(sweep.start), int(sweep.end), log="log" in tags)
        return d.FloatDistribution(float(sweep.start), float(sweep.end), log="log" in tags)
    except ValueError as e:
        raise UserError(f"cannot search {o.input_line}: {e}") from None


def space_json(space: Dict[str, Any]) -> Dict[str, str]:
    import optuna.distributions as d

    return {k: d.distribution_to_json(v) for k, v in sorted(space.items())}


def override_value(v: Any) -> str:
    """A value as the right-hand side of a Hydra override."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(v)
    text = str(v)
    if isinstance(v, int) or re.fullmatch(r"[\w./\-:+@]+", text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def param_overrides(params: Dict[str, Any]) -> List[str]:
    return [f"{k}={override_value(v)}" for k, v in params.items()]


def corners(space: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The lowest and the highest value of every parameter (a choice's first and last)."""
    out = []
    for end in (0, -1):
        point = {}
        for k, dist in space.items():
            if hasattr(dist, "choices"):
                point[k] = dist.choices[end]
            else:
                point[k] = dist.low if end == 0 else dist.high
        out.append(point)
    return out


def pruner_spec(settings: Dict[str, Any]) -> Dict[str, Any]:
    """The pruner as the study records it for its runs: Optuna's pruner (name, arguments) and the
    warm-up fraction, which the run applies itself (it knows its own length)."""
    name = settings.get("pruner") or "none"
    return {"name": name,
            "args": {optuna_name: settings[key] for key, optuna_name in PRUNER_SETTINGS.get(name, {}).items()
                     if settings.get(key) is not None},
            "warmup_frac": float(settings.get("pruner_warmup_frac") or 0.0)}


# ----------------------------------------------------------------------------------------------
# starting trials without waiting for them: submitit jobs can be polled (job.done())

POLL_S = 1.0  # how often the sweeper looks at its trials' jobs (submitit itself spaces its sacct calls)


def can_submit(launcher) -> bool:
    """Does this launcher start jobs that run elsewhere (submitit: local processes, SLURM jobs)?
    Hydra's basic launcher runs each job in the sweeper's own process instead."""
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import BaseSubmititLauncher

    return hasattr(launcher, "submit") or isinstance(launcher, BaseSubmititLauncher)


def submit_jobs(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Submit the jobs as the launcher's launch() does, and return its submitit jobs at once
    instead of waiting for their results."""
    if hasattr(launcher, "submit"):  # nanogpt_slurm_launcher: resources per job
        return launcher.submit(job_overrides, initial_job_idx)
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    # hydra_submitit_launcher's BaseSubmititLauncher.launch, less its last line (the wait)
    kind, params = launcher._EXECUTOR, launcher.params
    executor = submitit.AutoExecutor(cluster=kind, folder=params["submitit_folder"],
                                     **{f"{kind}_max_num_timeout": params["max_num_timeout"]}
                                     if "max_num_timeout" in params else {})
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"{kind}_{k}": v for k, v in params.items()
                                  if k not in ("submitit_folder", "max_num_timeout")})
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    args = []
    for i, overrides in enumerate(job_overrides):
        idx = initial_job_idx + i
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    return executor.map_array(launcher, *zip(*args))


def _job_state(job) -> str:
    try:
        return job.watcher.get_state(job.job_id, mode="force") if hasattr(job, "watcher") else job.state
    except Exception:  # noqa: BLE001 - a state is a detail of the message
        return "UNKNOWN"


def _cancel(job) -> None:
    """scancel a SLURM job; a submitit_local job gets SIGTERM, which its controller passes on to
    the run (submitit's own cancel sends SIGINT, which the controller answers with a traceback)."""
    process = getattr(job, "_process", None)
    if type(job).__name__ == "LocalJob" and process is not None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    else:
        job.cancel(check=False)


def _job_gone(job) -> bool:
    """Has the job left the queue? (squeue lists a SLURM job until it has ended, completing
    included; submitit's done() may say so earlier.)"""
    if type(job).__name__ == "SlurmJob":
        out = subprocess.run(["squeue", "-h", "-j", str(job.job_id), "-o", "%T"], capture_output=True, text=True)
        return out.returncode != 0 or not out.stdout.strip()
    return job.done()


def _consecutive(batch: list) -> List[list]:
    """(number, ...) items, sorted, in runs of consecutive numbers."""
    runs: List[list] = []
    for item in batch:
        if runs and runs[-1][-1][0] + 1 == item[0]:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


# ----------------------------------------------------------------------------------------------
# the sweeper

class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: Optional[DictConfig] = None
        self.launcher = None

    def setup(self, *, hydra_context, task_function, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        try:
            return Search(self, arguments).run()
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)


class Search:
    """One command's search: checked whole before its first trial, then ask, launch, tell."""

    def __init__(self, sweeper: OptunaSweeper, arguments: Sequence[str]) -> None:
        self.sweeper, self.config, self.arguments = sweeper, sweeper.config, list(arguments)
        self.s = dict(sweeper.settings)
        self.space, self.fixed = parse_arguments(arguments)
        self.metric = self.s.get("metric")
        self._check_settings()
        self.study_name, self.sweep_dir = self._names()
        self.storage_spec = str(self.s.get("storage") or self.sweep_dir / "optuna.journal")
        self.pruner_spec = pruner_spec(self.s)

    # -- checks, all before the study is touched ----------------------------------------------

    def _check_settings(self) -> None:
        from nanogpt.run.search import PRUNERS, TRAINING_METRICS

        s = self.s
        for key, valid in (("sampler", SAMPLERS), ("direction", DIRECTIONS), ("pruner", PRUNERS)):
            if s.get(key) not in valid:
                raise UserError(f"hydra.sweeper.{key}={s.get(key)} is not one of {', '.join(valid)}")
        for key in ("n_trials", "n_jobs"):
            if not isinstance(s.get(key), int) or s[key] < 1:
                raise UserError(f"hydra.sweeper.{key}={s.get(key)}: give a whole number >= 1")
        frac = s.get("pruner_warmup_frac")
        if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac < 1):
            raise UserError(f"hydra.sweeper.pruner_warmup_frac={frac}: give the fraction of each run in which no "
                            "trial is pruned, from 0 (prune from the first evaluation) to below 1, e.g. 0.3")
        if s["direction"] == "maximize" and s["pruner"] != "none":
            raise UserError("hydra.sweeper.direction=maximize with a pruner: runs report their val loss to the "
                            "pruner, which a study that maximises would read backwards. Add hydra.sweeper.pruner=none")
        task = OmegaConf.select(self.config, "task.name")
        if self.metric is not None and task == "train" and self.metric not in TRAINING_METRICS:
            raise UserError(f"hydra.sweeper.metric={self.metric}: a training run's summary.json reports no such "
                            f"number. Use one of {', '.join(TRAINING_METRICS)} (unset: final_val_loss, what "
                            "the run returns)")

    def _names(self) -> Tuple[str, Path]:
        """The study's name and the sweep directory: a name given (hydra.sweeper.study_name, or
        sweep_name) or one made from the command's overrides, so the same command finds the same
        study; the directory sweeps/<that name> unless sweep_name or hydra.sweep.dir says otherwise."""
        sweep_name = OmegaConf.select(self.config, "sweep_name")
        made = "search-" + hashlib.sha1(" ".join(sorted(self.arguments)).encode()).hexdigest()[:10]
        name = str(self.s.get("study_name") or sweep_name or made)
        dir_given = sweep_name is not None or any(
            str(o).startswith("hydra.sweep.dir=") for o in self.config.hydra.overrides.hydra)
        sweep_dir = Path(str(self.config.hydra.sweep.dir)) if dir_given else Path("sweeps") / name
        return name, sweep_dir.resolve()

    def _check_space_composes(self) -> None:
        """Each parameter must be a config key or group, and valid at both ends of its range."""
        from nanogpt.gate import validate

        loader = self.sweeper.hydra_context.config_loader
        base = loader.load_sweep_config(self.config, list(self.fixed))
        for key in self.space:
            for corner in corners({key: self.space[key]}):
                overrides = [*self.fixed, *param_overrides(corner)]
                try:
                    cfg = loader.load_sweep_config(self.config, overrides)
                except Exception as e:  # noqa: BLE001 - Hydra says which key and why
                    raise UserError(f"cannot search {key}: {_first_lines(e)}. Search config keys "
                                    "(python launch.py --cfg job lists them)") from None
                bare = key.lstrip("+~")
                if bare not in cfg.hydra.runtime.choices and OmegaConf.select(base, bare, default=_ABSENT) is _ABSENT:
                    raise UserError(f"cannot search {key}: {bare} is not a config key or group, so no run would "
                                    "use it (python launch.py --cfg job lists the keys)")
                job = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"])
                try:
                    validate(job)
                except UserError as e:
                    raise UserError(f"cannot search {key} at {override_value(corner[key])}: {e}") from None

    def _open_study(self):
        """The study: created, or loaded when it exists with the same search space."""
        import optuna

        from nanogpt.run.search import ATTR_METRIC, ATTR_PRUNER, ATTR_SPACE, make_pruner, open_storage

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        pruner = make_pruner(self.pruner_spec)
        if not self.s.get("storage"):  # the default, in the sweep directory; a path given must exist
            Path(self.storage_spec).parent.mkdir(parents=True, exist_ok=True)
        storage = open_storage(self.storage_spec)
        space = space_json(self.space)
        try:
            study_id = storage.get_study_id_from_name(self.study_name)
        except KeyError:
            study_id = None
        if study_id is not None:
            attrs = storage.get_study_user_attrs(study_id)
            if attrs.get(ATTR_SPACE) != space:
                raise UserError(f"study {self.study_name} in {self.storage_spec} searches another space "
                                f"({', '.join(sorted(attrs.get(ATTR_SPACE) or {})) or 'none recorded'}); "
                                "name this search otherwise with hydra.sweeper.study_name=NAME (or sweep_name=NAME), "
                                "or repeat the original search space to continue it. The study is unchanged")
            direction = storage.get_study_directions(study_id)[0].name.lower()
            if direction != self.s["direction"]:
                raise UserError(f"study {self.study_name} was made to {direction}; hydra.sweeper.direction="
                                f"{self.s['direction']} cannot continue it. The study is unchanged")
            if attrs.get(ATTR_METRIC) != self.metric:
                raise UserError(f"study {self.study_name} optimises {attrs.get(ATTR_METRIC) or 'the returned val loss'}; "
                                f"hydra.sweeper.metric={self.metric} cannot continue it. The study is unchanged")
        held = len(storage.get_all_trials(study_id, deepcopy=False)) if study_id is not None else 0
        study = optuna.create_study(storage=storage, study_name=self.study_name, sampler=self._sampler(held),
                                    pruner=pruner, direction=self.s["direction"], load_if_exists=True)
        if study_id is None:
            study.set_user_attr(ATTR_SPACE, space)
            study.set_user_attr(ATTR_METRIC, self.metric)
        study.set_user_attr(ATTR_PRUNER, self.pruner_spec)  # the pruner may change between sessions
        return study

    def _sampler(self, held: int):
        import optuna

        # a continued study's sampler draws anew: the seed alone would repeat the first trials' values
        seed = None if self.s.get("seed") is None else self.s["seed"] + held
        if self.s["sampler"] == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        startup = self.s.get("startup_trials")
        return optuna.samplers.TPESampler(seed=seed, constant_liar=self.s["n_jobs"] > 1,
                                          **({"n_startup_trials": startup} if startup is not None else {}))

    # -- the search -------------------------------------------------------------------------------

    def run(self) -> List[Any]:
        from optuna.trial import TrialState

        self._check_space_composes()
        self.study = self._open_study()
        with read_write(self.config.hydra), open_dict(self.config.hydra):  # the launcher's own files go there too
            self.config.hydra.sweep.dir = str(self.sweep_dir)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, self.sweep_dir / "multirun.yaml")  # as Hydra's own sweeper does
        log.info("study %s (%s) in %s: %d trial(s) of %d held; %s sampler, %s pruner, %d at once",
                 self.study_name, self.s["direction"], self.storage_spec, len(self.study.trials),
                 self.s["n_trials"], self.s["sampler"], self.pruner_spec["name"], self.s["n_jobs"])
        self.results: List[Any] = []
        self.queue = self._settle_stale()  # trials to run again before any new one is asked for
        self.in_flight: Dict[int, Tuple[int, Any]] = {}  # trial number -> (trial id, its submitit job)
        submits = can_submit(self.sweeper.launcher)
        if self.s["n_jobs"] > 1 and not submits:
            log.info("hydra/launcher %s runs one trial at a time in this process: for %d at once use "
                     "hydra/launcher=submitit_local (or slurm)", type(self.sweeper.launcher).__name__, self.s["n_jobs"])
        self.stop_signal: Optional[int] = None
        with self._signals_caught():
            try:
                self._run_trials(submits)
            except BaseException:  # the search cannot go on: its jobs must not run on unwatched
                self._cancel_in_flight()
                raise
        if self.stop_signal is not None:
            self._stopped()
        done = [t for t in self.study.trials if t.state == TrialState.COMPLETE]
        if done:
            best = self.study.best_trial
            log.info("best: trial %d, %s = %.5g (%s)", best.number, self.metric or "value", best.value,
                     " ".join(param_overrides(best.params)))
        self.write_outputs(plots=True)
        return self.results

    def _run_trials(self, submits: bool) -> None:
        """Keep n_jobs trials in flight until the study holds n_trials, or a signal stops it."""
        while self.stop_signal is None:
            free = (self.s["n_jobs"] if submits else 1) - len(self.in_flight)
            batch = self._next_trials(free)
            if batch and submits:
                self._submit(batch)
            elif batch:
                self.results.extend(self._launch(batch))  # runs them here, now
                self.write_outputs()
            if not self.in_flight and not batch:
                break
            if self.in_flight:
                self._tell_finished(self._wait_for_one())
                self.write_outputs()

    @contextlib.contextmanager
    def _signals_caught(self):
        """SIGINT or SIGTERM stops the search at its next look at the jobs (within POLL_S), not
        in the middle of a write to the study; a second Ctrl-C stops it at once."""
        def stop(signum, frame):
            if self.stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_signal = signum

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, stop)
            except ValueError:  # not the main thread: leave signals alone
                pass
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stopped(self) -> None:
        """The sweeper was asked to stop: cancel the trials' jobs, which save a checkpoint on the
        way out, and leave their trials RUNNING, for the same command to run them again (each
        resumes in its run directory); then exit as a signalled program does."""
        self._tell_finished([n for n, (_, job) in self.in_flight.items() if job.done()])  # ended meanwhile
        stopped = sorted(self.in_flight)
        jobs = [str(job.job_id) for _, job in self.in_flight.values()]
        self._cancel_in_flight()
        self.write_outputs()
        name = signal.Signals(self.stop_signal).name
        print(f"search stopped ({name}): " + (
            f"cancelled the jobs of trial(s) {', '.join(map(str, stopped))} ({', '.join(jobs)}); they stay RUNNING "
            "in the study and their runs keep their checkpoints. " if stopped else "no trial was running. ")
            + "Run the same command to continue the study", file=sys.stderr, flush=True)
        sys.exit(128 + self.stop_signal)

    def _cancel_in_flight(self, wait_s: float = 120.0) -> None:
        """Cancel the jobs of the trials in flight, and wait (up to wait_s) until they are gone
        from the queue: a job still writing its checkpoint must not meet its own rerun."""
        if not getattr(self, "in_flight", None):
            return
        jobs = [job for _, job in self.in_flight.values()]
        for job in jobs:
            try:
                _cancel(job)
            except Exception as e:  # noqa: BLE001 - cancel the others all the same
                log.warning("could not cancel job %s: %s", job.job_id, _first_line(e))
        deadline = time.monotonic() + wait_s
        while not all(_job_gone(job) for job in jobs) and time.monotonic() < deadline:
            time.sleep(POLL_S)
        log.info("cancelled the jobs of trial(s) %s", ", ".join(map(str, sorted(self.in_flight))))
        self.in_flight.clear()

    def _next_trials(self, free: int) -> List[Tuple[int, int, Dict[str, Any]]]:
        """Up to `free` trials to start: those of an earlier session first, then new ones asked of
        the sampler while the study holds fewer than n_trials (a trial repeating a finished one's
        values is told at once and counts)."""
        batch = []
        while len(batch) < free:
            if self.queue:
                batch.append(self.queue.pop(0))
            elif len(self.study.get_trials(deepcopy=False)) < self.s["n_trials"]:
                trial = self.study.ask(self.space)
                if not self._repeats_a_finished_trial(trial):
                    batch.append((trial.number, trial._trial_id, trial.params))
            else:
                break
        return batch

    def _submit(self, batch: List[Tuple[int, int, Dict[str, Any]]]) -> None:
        """Start the trials without waiting for them, consecutive numbers in one submission (one
        job array on SLURM)."""
        for run in _consecutive(sorted(batch)):
            overrides = [self._job_overrides(number, params) for number, _, params in run]
            jobs = submit_jobs(self.sweeper.launcher, overrides, initial_job_idx=run[0][0])
            for (number, trial_id, _), job in zip(run, jobs):
                self.in_flight[number] = (trial_id, job)

    def _wait_for_one(self) -> List[int]:
        """The numbers of the trials in flight whose jobs have ended, once at least one has (none
        when a signal stops the search)."""
        while self.stop_signal is None:
            ended = [number for number, (_, job) in self.in_flight.items() if job.done()]
            if ended:
                return ended
            time.sleep(POLL_S)
        return []

    def _tell_finished(self, numbers: List[int]) -> None:
        for number in sorted(numbers):
            trial_id, job = self.in_flight.pop(number)
            try:
                ret = job.results()[0]
            except Exception as e:  # noqa: BLE001 - no result: the job was cancelled, killed, or failed outside the run
                run_dir = self.study._storage.get_trial(trial_id).user_attrs.get("run_dir")
                self._tell(number, trial_id, _read_summary(run_dir), None,
                           f"its job {job.job_id} ended without a result ({_job_state(job)}): {_first_line(e)}")
                continue
            self.results.append(ret)
            self._tell_job(number, trial_id, ret)

    def _repeats_a_finished_trial(self, trial) -> bool:
        """A trial asking for values a finished trial had (TPE does, over choices) gets that
        trial's result without training again: runs are deterministic, and tokens are the cost."""
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if t.params == trial.params:
                storage = self.study._storage
                storage.set_trial_user_attr(trial._trial_id, "repeats", t.number)
                for step, value in t.intermediate_values.items():
                    trial.report(value, step)
                storage.set_trial_user_attr(trial._trial_id, "tokens", 0)
                if t.state == TrialState.COMPLETE:
                    self.study.tell(trial, t.value)
                else:
                    self.study.tell(trial, state=TrialState.PRUNED)
                log.info("trial %d asks for trial %d's values: its result is trial %d's, without training again",
                         trial.number, t.number, t.number)
                return True
        return False

    def _settle_stale(self) -> List[Tuple[int, int, Dict[str, Any]]]:
        """Trials left running by a sweeper that was stopped: one whose run finished (or was
        pruned) since is told so; the others run again, into their own run directories."""
        from optuna.trial import TrialState

        again = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            summary = _read_summary(t.user_attrs.get("run_dir"))
            if summary.get("status") in ("finished", "pruned"):
                self._tell(t.number, t._trial_id, summary, summary.get(self.metric or "final_val_loss"), None)
            else:
                log.info("trial %d did not finish in an earlier session: running it again (its run resumes "
                         "from its checkpoint)", t.number)
                again.append((t.number, t._trial_id, dict(t.params)))
        return again

    def _launch(self, batch: List[Tuple[int, int, Dict[str, Any]]]) -> List[JobReturn]:
        """Run the trials through the launcher's own launch (a launcher whose jobs run in this
        process), job number = trial number."""
        results = []
        for run in _consecutive(sorted(batch)):
            overrides = [self._job_overrides(number, params) for number, _, params in run]
            returns = self.sweeper.launcher.launch(overrides, initial_job_idx=run[0][0])
            for (number, trial_id, _), ret in zip(run, returns):
                self._tell_job(number, trial_id, ret)
            results.extend(returns)
        return results

    def _job_overrides(self, number: int, params: Dict[str, Any]) -> List[str]:
        from nanogpt.run.search import ENV_STORAGE, ENV_STUDY, ENV_TRIAL

        env = {ENV_STORAGE: self.storage_spec, ENV_STUDY: self.study_name, ENV_TRIAL: str(number)}
        return [*self.fixed, *param_overrides(params), f"hydra.sweep.dir={_quoted(str(self.sweep_dir))}",
                *(f"++hydra.job.env_set.{k}={_quoted(v)}" for k, v in env.items())]

    def _tell_job(self, number: int, trial_id: int, ret: JobReturn) -> None:
        run_dir = Path(str(ret.hydra_cfg.hydra.runtime.output_dir)) if ret.hydra_cfg is not None else None
        summary = _read_summary(run_dir)
        if ret.status != JobStatus.COMPLETED:
            self._tell(number, trial_id, summary, None, f"{type(ret._return_value).__name__}: {ret._return_value}",
                       run_dir=run_dir)
            return
        if self.metric is None:
            value = ret.return_value
        elif self.metric not in summary:  # a task other than train: known once its first trial ran
            self._tell(number, trial_id, summary, None, f"no {self.metric} in its summary.json", run_dir=run_dir)
            reported = [k for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            raise UserError(f"hydra.sweeper.metric={self.metric}: trial {number}'s run ({run_dir}) reports no such "
                            "number; " + (f"it reports {', '.join(reported)}" if reported else "it wrote no summary.json"))
        else:
            value = summary.get(self.metric)
        self._tell(number, trial_id, summary, value, None, run_dir=run_dir)

    def _tell(self, number: int, trial_id: int, summary: dict, value: Any, failure: Optional[str],
              run_dir: Optional[Path] = None) -> None:
        from optuna.trial import TrialState

        storage = self.study._storage
        for key in ("tokens", "wall_time_s", "status", "iters"):
            if summary.get(key) is not None:
                storage.set_trial_user_attr(trial_id, key, summary[key])
        if run_dir is not None:
            storage.set_trial_user_attr(trial_id, "run_dir", str(run_dir))
        if summary.get("status") == "pruned":
            self.study.tell(number, state=TrialState.PRUNED, skip_if_finished=True)
            log.info("trial %d pruned at iteration %s", number, summary.get("iters"))
        elif failure is None and isinstance(value, (int, float)) and math.isfinite(value):
            self.study.tell(number, float(value), skip_if_finished=True)
            log.info("trial %d: %s = %.5g", number, self.metric or "value", value)
        else:
            self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
            log.warning("trial %d failed (%s): the search goes on without it", number,
                        failure or f"its value is {value!r}")

    # -- outputs ----------------------------------------------------------------------------------

    def write_outputs(self, plots: bool = False) -> None:
        trials = self.study.get_trials(deepcopy=False)
        _write_trials_csv(self.sweep_dir / "trials.csv", trials, list(self.space))
        done = [t for t in trials if t.state.name == "COMPLETE"]
        if done:
            _write_best(self.sweep_dir / "best.yaml", self.study, self.fixed, self.metric)
        if plots:
            _write_plots(self.study, self.sweep_dir)


def _write_trials_csv(path: Path, trials: list, params: List[str]) -> None:
    from nanogpt.run.metrics import write_text_atomic

    rows = [["number", "state", "value", *params, "tokens", "wall_time_s", "iters", "run_dir", "repeats",
             "started", "ended"]]
    for t in trials:
        rows.append([t.number, t.state.name, "" if t.value is None else t.value,
                     *(t.params.get(p, "") for p in params),
                     *(t.user_attrs.get(k, "") for k in ("tokens", "wall_time_s", "iters", "run_dir", "repeats")),
                     *(_when(t.datetime_start), _when(t.datetime_complete))])
    import io

    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _when(moment) -> str:
    """A trial's start (asked for: its job submitted) or end (told), as the sweeper saw it."""
    return "" if moment is None else moment.isoformat(sep=" ", timespec="milliseconds")


def _write_best(path: Path, study, fixed: List[str], metric: Optional[str]) -> None:
    from nanogpt.run.metrics import write_text_atomic

    best = study.best_trial
    overrides = [*fixed, *param_overrides(best.params)]
    command = "python launch.py " + " ".join(shlex.quote(o) for o in overrides)
    body = {"study": study.study_name, "trial": best.number, "metric": metric or "final_val_loss",
            "direction": study.direction.name.lower(), "value": best.value, "params": best.params,
            "overrides": overrides, "command": command}
    text = ("# The best trial of the search: run `command`, or put `overrides` on any command line.\n"
            + yaml.safe_dump(json.loads(json.dumps(body)), sort_keys=False, width=10**6))
    write_text_atomic(path, text)


def _write_plots(study, sweep_dir: Path) -> None:
    """Optuna's standard plots as PNG files, when matplotlib is there and the study allows them
    (importances need two finished trials and a parameter that varies)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import optuna.visualization.matplotlib as vis
    except ImportError:
        log.info("matplotlib is not installed: no plots (pip install matplotlib)")
        return
    import warnings

    logging.getLogger("matplotlib.category").setLevel(logging.WARNING)  # choices of numbers, drawn as categories
    for name, plot in (("history", vis.plot_optimization_history), ("importances", vis.plot_param_importances),
                       ("slices", vis.plot_slice)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.savefig(sweep_dir / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
        except Exception as e:  # noqa: BLE001 - a plot is a convenience: never fail the search for one
            log.info("no %s.png: %s", name, _first_line(e))


def _read_summary(run_dir) -> dict:
    if not run_dir:
        return {}
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def _quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_ABSENT = object()


def _first_lines(e: BaseException) -> str:
    """Hydra's composition errors: what failed, then why, on the next line."""
    text = f"{e}\n{e.__cause__}" if e.__cause__ is not None else str(e)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()][:2]
    return ": ".join(lines) or type(e).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
