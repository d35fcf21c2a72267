"""Guarding a run directory: one training process at a time, and nothing changed by a command
that is rejected.

Hydra creates the run directory and writes .hydra/ (config, overrides) before the task starts.
Three things can go wrong there: the directory is not writable (Hydra would fail with a
traceback), another process is training in it (its files must not be touched, not even
.hydra/), or the command is rejected afterwards (a UserError or a bug), which would leave an
existing run's record describing a command that never ran. The `GuardRunDir` callback checks
the directory, takes a training run's lock before Hydra writes anything into it, and remembers
the record Hydra and the task may replace; launch.py puts it back (`restore_run_record`) when the
command fails before it trained, and removes the directory only if this process created it.
"""
from __future__ import annotations

import json
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
RECORD_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "summary.json",
                "metrics.jsonl")
_RECORD_LIMIT = 256 << 20  # a record file larger than this (metrics of a very long run) is not kept

# the run's record before this command: path -> bytes (None: absent)
_before: dict[Path, bytes | None] = {}
# run directories (resolved) this process created, and the lock files it holds
_created: set[Path] = set()
_locks: dict[Path, object] = {}


def lock_run(run_dir: Path):
    """An exclusive lock on a run directory, held by the training process (rank 0) until it
    ends: two processes training into one directory would overwrite each other's checkpoints.
    The kernel drops the lock when its holder dies, however it dies, so it is never stale.
    Returns the open lock file; closing it releases the lock. A process that already holds the
    lock gets the same file again."""
    import fcntl

    run_dir = Path(run_dir)
    held = _locks.get(run_dir.resolve())
    if held is not None and not held.closed:
        return held
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
    _locks[run_dir.resolve()] = f
    return f


def created_here(run_dir: Path) -> bool:
    """Whether this process created run_dir (so it may remove it again)."""
    return Path(run_dir).resolve() in _created


def _make_run_dir(run_dir: Path) -> None:
    """Create run_dir and note whether this process did: mkdir is atomic, so of two processes
    racing for a new directory exactly one is its creator."""
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_dir.mkdir()
        _created.add(run_dir.resolve())
    except FileExistsError:
        if not run_dir.is_dir():
            raise


def _trains_and_leads(config) -> bool:
    """A training command's rank 0 (or single process): the one that holds the run's lock."""
    if OmegaConf.select(config, "task.name") != "train":
        return False
    from nanogpt.distributed import detect

    return detect().is_main


class GuardRunDir(Callback):
    def on_run_start(self, config, **kwargs) -> None:
        HydraConfig.instance().set_config(config)  # as run_job does next: resolves ${hydra:...}
        _validate_or_exit(config)  # every value checked before the run directory exists
        run_dir = Path(OmegaConf.select(config, "hydra.run.dir"))
        try:
            _make_run_dir(run_dir)
            with tempfile.TemporaryFile(dir=run_dir):
                pass
        except OSError as e:
            _fail(f"cannot write to the run directory {run_dir}: {e.strerror or e}. Run from "
                  "a writable directory, or choose one with run=DIR")
        if _trains_and_leads(config):
            try:  # before Hydra writes .hydra/: a run another process trains is never touched
                lock_run(run_dir)
            except UserError as e:
                _fail(str(e))
        if config.hydra.output_subdir is not None:
            remember_run_record(run_dir, config.hydra.output_subdir)


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
        _fail(str(e))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(2)


def remember_run_record(run_dir: Path, output_subdir: str = ".hydra") -> None:
    """Keep the run's record (.hydra/ files, summary.json, metrics.jsonl) as it is before this
    command."""
    for name in RECORD_FILES:
        path = Path(run_dir) / name.replace(".hydra", output_subdir, 1)
        try:
            if not path.is_file():
                _before[path] = None
            elif path.stat().st_size <= _RECORD_LIMIT:
                _before[path] = path.read_bytes()
        except OSError:
            pass  # unreadable: leave it alone


def restore_run_record() -> None:
    """Put the run's record back as it was before this command, unless the command trained (its
    summary then counts more iterations than before): a command that failed after it trained is
    part of the run's history, one that failed before is not."""
    summary = next((p for p in _before if p.name == "summary.json"), None)
    if summary is not None and _iters(_read(summary)) > _iters(_before[summary]):
        return
    for path, data in _before.items():
        try:
            if data is None:
                path.unlink(missing_ok=True)
            elif _read(path) != data:
                tmp = path.with_name(f".{path.name}.restore.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, path)
        except OSError:
            pass  # a full disk: the error being reported says so already


# the former name (launch.py's distributed path and older callers)
restore_hydra_files = restore_run_record


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _iters(summary: bytes | None) -> int:
    try:
        iters = json.loads(summary)["iters"]
        return iters if isinstance(iters, int) else -1
    except (TypeError, ValueError, KeyError):
        return -1


def command_overrides() -> list[str]:
    """The overrides typed on the command line (none outside a Hydra app)."""
    if not HydraConfig.initialized():
        return []
    return list(HydraConfig.get().overrides.task)


def refuse_scratch_over_checkpoints(run_dir: Path, overrides) -> None:
    """`init_from=scratch` typed on the command line, on a run that has checkpoints: training
    from scratch there would replace them. (The default init_from is also scratch, and re-running
    a command resumes its run: only the explicit choice is refused.)"""
    if not any(str(o).lstrip("+") == "init_from=scratch" for o in overrides):
        return
    found = [f"ckpt/{n}" for n in ("last.pt", "best.pt") if (Path(run_dir) / "ckpt" / n).exists()]
    if found:
        raise UserError(f"init_from=scratch but {run_dir} already has checkpoints ({', '.join(found)}): "
                        "training from scratch there would replace them. To start fresh, train in a "
                        f"new run directory (run=NEW_DIR) or move {run_dir} aside; to continue this "
                        "run, leave out init_from=scratch (or pass init_from=resume)")


def read_summary(run_dir: Path) -> dict | None:
    """An existing run's summary.json, or None; a garbled one is a clear error."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        return summary
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a valid summary ({e}). Move it aside (the checkpoints in "
                        f"{Path(run_dir) / 'ckpt'} are what resumes the run) and run the same "
                        "command again") from e
