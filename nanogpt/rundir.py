"""Guarding a run directory: one training process at a time, and nothing changed by a command
that is rejected.

Hydra creates the run directory and writes .hydra/ (config, overrides) before the task starts.
Two things can go wrong there: the directory is not writable (Hydra would fail with a
traceback), or the command is rejected afterwards (a UserError), which would leave an existing
run's .hydra/ describing a config it never ran. The `GuardRunDir` callback checks the directory
first and remembers the .hydra/ files Hydra is about to replace; launch.py puts them back
(`restore_hydra_files`) when it rejects the command.
"""
from __future__ import annotations

import os
import socket
import sys
import tempfile
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf, open_dict

from nanogpt.errors import UserError

LOCK_FILE = ".lock"

# the .hydra/ files of the run directory before this command: path -> bytes (None: absent)
_before: dict[Path, bytes | None] = {}


def lock_run(run_dir: Path):
    """An exclusive lock on a run directory, held by the training process (rank 0) until it
    ends: two processes training into one directory would overwrite each other's checkpoints.
    The kernel drops the lock when its holder dies, however it dies, so it is never stale.
    Returns the open lock file; closing it releases the lock."""
    import fcntl

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    f = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise UserError(f"{holder} is already training in {run_dir}: wait for it to finish, stop "
                        "it, or train in another run directory (run=DIR)") from None
    except OSError:  # a filesystem without locks (some network mounts): go on unprotected
        return f
    f.truncate(0)
    f.write(f"{socket.gethostname()} pid {os.getpid()}\n")
    f.flush()
    return f


class GuardRunDir(Callback):
    def on_run_start(self, config, **kwargs) -> None:
        HydraConfig.instance().set_config(config)  # as run_job does next: resolves ${hydra:...}
        _validate_or_exit(config)  # every value checked before the run directory exists
        run_dir = Path(OmegaConf.select(config, "hydra.run.dir"))
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=run_dir):
                pass
        except OSError as e:
            print(f"error: cannot write to the run directory {run_dir}: {e.strerror or e}. Run from "
                  "a writable directory, or choose one with run=DIR", file=sys.stderr, flush=True)
            sys.exit(2)
        if config.hydra.output_subdir is not None:
            for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
                path = run_dir / config.hydra.output_subdir / name
                _before[path] = path.read_bytes() if path.exists() else None


def _validate_or_exit(config) -> None:
    """The composed config's values against their schemas (nanogpt.config): a bad one is one
    error line and exit 2, before anything is written."""
    from nanogpt.config import validate

    job = config.copy()
    with open_dict(job):
        del job["hydra"]
    try:
        validate(job)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


def restore_hydra_files() -> None:
    """Put the run directory's .hydra/ files back as they were before this command."""
    for path, data in _before.items():
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(data)
