"""Hydra's submitit SLURM launcher, with each job's resources resolved from that job's config.

hydra-submitit-launcher resolves `hydra.launcher` once, against the config composed before the
sweep, and submits every point as one job array with those resources. A sweep over hardware
presets (`-m hydra/launcher=slurm hardware=gpu,gpu_node`) would then ask SLURM for the same GPUs
and tasks for every job, whatever each job's own `hardware.gpus_per_node` says. This launcher
composes each job's config first, resolves its launcher settings there, and submits one job
array per distinct set of settings (points that ask for the same resources still share one).
It also accepts `srun_args` (arguments of the `srun` that starts the tasks), which submitit
supports and the upstream config lacks.

A cancelled job (scancel) ends the sweep command with one line per such job, saying which sweep
point it was and how to resume it, and exit status 2, rather than submitit's UncompletedJobError
traceback. The other jobs are waited for first.

It lives in Hydra's plugin namespace (Hydra only instantiates launchers from there; its scan
imports the module without registering it first, so no `from __future__ import annotations`).
Its config is stored as plain data, not as a class of this module: Hydra's state, which every
job unpickles, then names nothing a job would have to import (jobs run the upstream launcher).
"""

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, Sequence

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf, SlurmQueueConf
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


# the upstream SLURM launcher's keys, this launcher as the target, and srun_args (e.g.
# ['--cpu-bind=none']); its keys are still checked (struct mode), its values by submitit
LAUNCHER_CONFIG = {**OmegaConf.to_container(OmegaConf.structured(SlurmQueueConf)),
                   "_target_": "hydra_plugins.nanogpt_slurm_launcher.PerJobSlurmLauncher",
                   "srun_args": None}
ConfigStore.instance().store(group="hydra/launcher", name="nanogpt_slurm", node=LAUNCHER_CONFIG,
                             provider="nanogpt")


def resources_per_job(load: Callable[[List[str]], DictConfig],
                      job_overrides: Sequence[Sequence[str]]) -> list[dict]:
    """Each job's launcher settings, resolved in that job's own composed config."""
    out = []
    for overrides in job_overrides:
        params = OmegaConf.to_container(load(list(overrides)).hydra.launcher, resolve=True)
        params.pop("_target_", None)
        # the upstream schema's types (nodes an integer, ...), checked before anything is submitted
        OmegaConf.merge(OmegaConf.structured(SlurmQueueConf), {k: v for k, v in params.items() if k != "srun_args"})
        if not (params.get("srun_args") is None or isinstance(params["srun_args"], list)):
            raise ValueError(f"hydra.launcher.srun_args={params['srun_args']!r}: give a list, e.g. "
                             "\"hydra.launcher.srun_args=['--cpu-bind=none']\"")
        out.append(params)
    return out


def group_jobs(params: list[dict]) -> list[tuple[dict, list[int]]]:
    """Jobs that ask for the same settings, in order of first appearance: (settings, indices)."""
    groups: dict[str, tuple[dict, list[int]]] = {}
    for i, p in enumerate(params):
        groups.setdefault(json.dumps(p, sort_keys=True), (p, []))[1].append(i)
    return list(groups.values())


class PerJobSlurmLauncher(SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        jobs = self.submit(job_overrides, initial_job_idx)
        wait_for_jobs(jobs)
        return collect_results(jobs, job_overrides, initial_job_idx, Path(str(self.config.hydra.sweep.dir)),
                               self.config.hydra.overrides.task)

    def submit(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
        """Submit the jobs and return their submitit jobs, in order, without waiting (the search
        sweeper polls them to start the next trial as soon as one ends)."""
        assert self.config is not None and self.hydra_context is not None
        loader = self.hydra_context.config_loader
        params = resources_per_job(lambda o: loader.load_sweep_config(self.config, o), job_overrides)
        groups = group_jobs(params)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        log.info(f"Submitit 'slurm' sweep output dir : {sweep_dir} ({len(groups)} job array(s))")
        jobs: dict[int, Any] = {}
        for settings, indices in groups:
            submitted = self._submit(settings, [(i, job_overrides[i]) for i in indices], initial_job_idx)
            jobs.update(zip(indices, submitted))
        return [jobs[i] for i in range(len(job_overrides))]

    def _submit(self, settings: dict, jobs: list[tuple[int, Sequence[str]]], first_idx: int) -> list:
        """One job array of `jobs` (index in the sweep, overrides), as the upstream launcher
        submits, with these settings. The callable is an upstream SlurmLauncher."""
        import submitit

        executor = submitit.AutoExecutor(cluster="slurm", folder=settings["submitit_folder"],
                                         slurm_max_num_timeout=settings["max_num_timeout"])
        base = set(OmegaConf.structured(BaseQueueConf).keys())
        skip = {"submitit_folder", "max_num_timeout"}
        executor.update_parameters(**{k if k in base else f"slurm_{k}": v
                                      for k, v in settings.items() if k not in skip})
        runner = SlurmLauncher(**{k: v for k, v in settings.items() if k != "srun_args"})
        runner.setup(hydra_context=self.hydra_context, task_function=self.task_function, config=self.config)
        args = []
        for i, overrides in jobs:
            idx = first_idx + i
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            args.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
        return executor.map_array(runner, *zip(*args))


POLL_S = 5.0  # how often the sweep command looks at its jobs (submitit asks sacct at most once a minute)


def wait_for_jobs(jobs: list, poll_s: float = POLL_S, report: Callable[[str], None] | None = None) -> None:
    """Wait until every job has ended, saying `sweep: N of M points done, F failed` each time
    one does (in the order they finish), so a long SLURM sweep is not silent until it returns."""
    from nanogpt.run.metrics import SweepTally, say

    report = report or say
    tally, pending = SweepTally(len(jobs)), list(range(len(jobs)))
    while pending:
        for i in [i for i in pending if jobs[i].done()]:
            pending.remove(i)
            report(tally.add(failed=_failed(jobs[i])))
        if pending:
            time.sleep(poll_s)


def _failed(job) -> bool:
    """Did this ended job fail (an exception, a non-zero exit, a cancel)? Its error is raised
    later, in order, by collect_results."""
    try:
        returned = job.results()[0]  # the job's JobReturn: a task that raised is FAILED in it
    except Exception:  # noqa: BLE001 (no result at all: cancelled, killed)
        return True
    return getattr(returned, "status", None) == JobStatus.FAILED


def collect_results(jobs: list, job_overrides: Sequence[Sequence[str]], first_idx: int, sweep_dir: Path,
                    command: Sequence[str]) -> list[JobReturn]:
    """Each job's result, in order. Jobs that were cancelled (scancel) are named once every job
    has ended, one line each, and the sweep exits with status 2; a job that failed (an
    exception, a task's non-zero exit) still raises submitit's error, which shows why."""
    from submitit.core.utils import UncompletedJobError

    results, cancelled = [], []
    for i, job in enumerate(jobs):
        try:
            results.append(job.results()[0])
        except UncompletedJobError:
            state = job_state(job)
            if not state.startswith("CANCELLED"):
                _report(cancelled)
                raise
            point = " ".join(swept(job_overrides[i], job_overrides))
            cancelled.append(cancelled_message(first_idx + i, job.job_id, point, state, sweep_dir, command))
    if cancelled:
        _report(cancelled)
        sys.exit(2)
    return results


def _report(messages: list[str]) -> None:
    for message in messages:
        print(f"error: {message}", file=sys.stderr, flush=True)


def job_state(job) -> str:
    """The job's state in SLURM's accounting, read now (CANCELLED by 0, FAILED, ...)."""
    try:
        return job.watcher.get_state(job.job_id, mode="force")
    except Exception:  # noqa: BLE001 - sacct unreachable: say what is known
        return "UNKNOWN"


def swept(overrides: Sequence[str], all_overrides: Sequence[Sequence[str]]) -> list[str]:
    """A point's overrides of the keys the sweep varies (all of them when none varies)."""
    values: dict[str, set] = {}
    for point in all_overrides:
        for o in filter_overrides(point):
            key, _, value = o.partition("=")
            values.setdefault(key, set()).add(value)
    own = filter_overrides(overrides)
    return [o for o in own if len(values[o.partition("=")[0]]) > 1] or list(own)


def cancelled_message(idx: int, job_id: str, point: str, state: str, sweep_dir: Path,
                      command: Sequence[str]) -> str:
    """Which sweep point's job was cancelled, and how to resume it."""
    named = any(str(o).lstrip("+").startswith("sweep_name=") for o in command)
    again = "the same command again" if named else f"the same command again with sweep_name={sweep_dir.name}"
    return (f"SLURM job {job_id} (sweep point #{idx}: {point}) was cancelled before it finished ({state}); "
            f"its run directory in {sweep_dir} keeps the checkpoints it wrote. To resume it, run {again}: "
            "points that finished are not trained again")
