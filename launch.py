#!/usr/bin/env python
"""The one entry point: `python launch.py [group=option ...] [key=value ...]`.

Hydra composes conf/ (model, data, optim, hardware, task, experiment) into a typed config;
this file validates it, turns it into plain dataclasses and hands it to the task's module.
    python launch.py                                   # small char GPT on the CPU, no download
    python launch.py experiment=shakespeare_char       # nanoGPT's shakespeare_char recipe
    python launch.py task=sample run=runs/default      # sample from a run
    torchrun --standalone --nproc_per_node=8 launch.py experiment=train_gpt2 hardware=gpu_node
    python launch.py -m hydra/launcher=slurm hardware=gpu_node model.n_layer=6,12   # docs/distributed.md
"""
from __future__ import annotations

import os
import signal
import sys


def _interrupted_early(signum, frame):
    print(f"error: interrupted ({signal.Signals(signum).name}) before the task started: no training was done",
          file=sys.stderr, flush=True)
    # os._exit, not sys.exit: a SystemExit raised inside a C extension's import (numpy under torch)
    # makes the interpreter re-import it on the way out and die with an ImportError traceback.
    # Nothing has been written yet, so there is nothing to clean up.
    os._exit(130)


signal.signal(signal.SIGINT, _interrupted_early)  # Ctrl-C while torch and Hydra import: no traceback

import errno  # noqa: E402 (the handler above comes first)
import logging
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from nanogpt.errors import UserError
from nanogpt.gate import register_configs, register_resolvers, validate
from nanogpt.run.rundir import remove_if_untouched, restore_run_record, undo_launch
from nanogpt.training.guards import raise_interrupted

register_configs()
register_resolvers()
# from here a signal is an exception that the handlers below clean up after (training has its
# own: the first Ctrl-C or SIGTERM finishes the step and saves). Not SIGTERM under a launcher of
# several processes: it stops the ranks with it, and a Python handler would wait for a rank
# blocked in a collective
signal.signal(signal.SIGINT, raise_interrupted)
if all(os.environ.get(k, "1").strip() in ("", "1") for k in ("WORLD_SIZE", "SLURM_STEP_NUM_TASKS")):
    signal.signal(signal.SIGTERM, raise_interrupted)
log = logging.getLogger("nanogpt")
CONF_DIR = Path(__file__).resolve().parent / "conf"
logging.raiseExceptions = False  # a full disk must not turn every log line into a traceback


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig):
    from nanogpt.runtime import distributed

    dist = distributed.detect()
    if not dist.is_main:  # other ranks stay quiet
        logging.getLogger().setLevel(logging.WARNING)
    try:
        config = validate(cfg)  # plain dataclasses from here on, every value checked
        if dist.enabled and config.task.name != "train":
            raise UserError(f"task={config.task.name} runs in one process: start it with python, "
                            "not torchrun or a SLURM job of several tasks")
        run_dir = _agree_on_run_dir(dist, config)
        from nanogpt.tasks import TASKS

        _log_recipe()
        result = TASKS[config.task.name](config, run_dir, dist)
        if config.task.name != "train" and dist.is_main:  # it wrote into run=RUN (or task.out):
            remove_if_untouched(run_dir)  # no runs/_TASK/<overrides>/ left holding only .hydra/
        return result
    except Exception as e:
        own_dir = Path(HydraConfig.get().runtime.output_dir)
        storage = isinstance(e, OSError) and e.errno in _STORAGE_ERRORS
        user_error = isinstance(e, UserError) or storage  # the user's to fix: a message, no traceback
        if dist.is_main:  # whatever failed, a run keeps the record of what it last ran
            restore_run_record()
            remove_if_untouched(own_dir)
        if dist.enabled:  # end every rank now, rather than leave the others waiting in a collective
            distributed.abort(dist, UserError(_storage_message(e)) if storage else e)
        if not user_error or HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # a bug keeps its traceback; a sweep records this job as failed
        print(f"error: {_storage_message(e) if storage else e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except KeyboardInterrupt as e:  # training's second Ctrl-C (its first saves), eval/sample's first,
        # or a signal before training started
        signum = getattr(e, "signum", signal.SIGINT)
        own_dir = Path(HydraConfig.get().runtime.output_dir)
        if dist.is_main:  # the run's record as it was; a directory this command made goes
            restore_run_record()
            remove_if_untouched(own_dir)
        message = getattr(e, "message", None) or _stopped_before_work(signum, cfg.task.name, own_dir)
        print(f"error: {message}", file=sys.stderr, flush=True)
        sys.exit(128 + signum)


# a full disk or an unwritable place: the user's to fix, not a bug
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _storage_message(e: OSError) -> str:
    where = e.filename if e.filename not in (None, "", ".") else "while writing the run's files"
    return (f"{e.strerror}: {where}. Free disk space or fix permissions; the checkpoints "
            "already written are intact, and the same command resumes from them")


def _stopped_before_work(signum: int, task: str, own_dir: Path) -> str:
    """What a signal before the task's work means (training's own stops say what they kept)."""
    what = f"interrupted ({signal.Signals(signum).name})"
    if task != "train":
        return f"{what}: task={task} stopped at once{_kept(own_dir)}"
    return f"{what} before training started: no training was done{_kept(own_dir)}"


def _kept(run_dir: Path | None) -> str:
    """What is left of the run directory, once restore_run_record and remove_if_untouched ran."""
    from nanogpt.checkpoint import single as checkpoint, sharded as dcp

    if run_dir is None:
        return ""
    if not run_dir.exists():
        return f", and {run_dir}, which this command created, was removed"
    ckpt = run_dir / "ckpt"
    if any((ckpt / n).exists() for n in checkpoint.RESUMABLE) or dcp.has_sharded(ckpt):
        return f"; {run_dir} is as it was, and the same command resumes it from its checkpoints"
    return f"; {run_dir} is as it was"


def _log_recipe() -> None:
    """Say which recipe (conf/recipe/TASK/MODEL_DATA.yaml) this model and data brought in."""
    recipe = HydraConfig.get().runtime.choices.get("recipe")
    if recipe and (CONF_DIR / "recipe" / f"{recipe}.yaml").is_file():
        log.info("recipe %s applied (conf/recipe/%s.yaml): its settings for this model and data, "
                 "under any set on the command line", recipe, recipe)


def _agree_on_run_dir(dist, config) -> Path:
    """Join the process group, then use rank 0's output directory on every rank: Hydra names it
    on each rank separately (a timestamp in it can differ), and a rank's own stray one is removed."""
    from nanogpt.runtime import distributed
    from nanogpt.runtime.hardware import resolve_device

    own = Path(HydraConfig.get().runtime.output_dir)
    if not dist.enabled:
        return own
    distributed.setup(dist, config.hardware.backend, resolve_device(config.hardware.device, dist.local_rank))
    chosen = Path(distributed.broadcast_object(str(own)))
    if chosen.resolve() != own.resolve():
        remove_if_untouched(own)
    return chosen


if __name__ == "__main__":
    try:
        from nanogpt.gate import check_overrides

        check_overrides(sys.argv[1:], CONF_DIR)
        from hydra_plugins.nanogpt_optuna_sweeper import check_search_command

        check_search_command(sys.argv[1:])  # a search space that does not parse: one line, exit 2
        main()
    except KeyboardInterrupt as e:  # a signal before the task started (composition, Hydra writing .hydra/)
        signum = getattr(e, "signum", signal.SIGINT)
        run_dir = undo_launch()  # the run's record as it was, and no directory this command made
        print(f"error: interrupted ({signal.Signals(signum).name}) before the task started: no training "
              f"was done{_kept(run_dir)}", file=sys.stderr, flush=True)
        sys.exit(128 + signum)
