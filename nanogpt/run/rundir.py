"""The run directory's rules: its name, the lock of the process training in it, and nothing
changed by a command that is rejected.

The name: the same command always maps to the same directory (`run_dir`, from Hydra's
override_dirname less the settings in run/identity.py's NOT_IN_RUN_NAME), so re-running a stopped command resumes
it; conf/config.yaml reaches these through the resolvers nanogpt.gate.register_resolvers installs.

Hydra creates the run directory and writes .hydra/ (config, overrides) before the task starts.
Three things can go wrong there: the directory is not writable (Hydra would fail with a
traceback), another process is training in it (its files must not be touched, not even
.hydra/), or the command is rejected afterwards (a UserError or a bug), which would leave an
existing run's record describing a command that never ran. The `GuardRunDir` callback (run
by nanogpt.gate.Gate once the config passed) checks the directory, takes a training run's lock before Hydra writes anything into it, and remembers
the record Hydra and the task may replace; launch.py puts it back (`restore_run_record`) when the
command fails before it trained, and removes the directory only if this process created it.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from nanogpt.checkpoint import sharded as dcp
from nanogpt.checkpoint import single as checkpoint
from nanogpt.errors import UserError
from nanogpt.run.results import read_summary
from nanogpt.runtime.distributed import detect

log = logging.getLogger("nanogpt")
LOCK_FILE = ".lock"
RECORD_FILES = (".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml", "summary.json",
                "metrics.jsonl")
_RECORD_LIMIT = 256 << 20  # a record file larger than this (metrics of a very long run) is not kept

# the run's record before this command: path -> bytes (None: absent)
_before: dict[Path, bytes | None] = {}
# run directories (resolved) this process created, and the lock files it holds
_created: set[Path] = set()
_locks: dict[Path, object] = {}
_guarded: list[Path] = []  # the run directories GuardRunDir checked, in order


def run_name(overrides: str) -> str:
    """A run directory name from Hydra's override_dirname ("model.n_layer=4,optim.lr=0.001"):
    the same command always maps to the same directory, so re-running it resumes the run."""
    import hashlib

    name = overrides.replace("/", "-").replace(" ", "") or "default"
    if len(name) > 120:  # keep paths well under the file-name limit, still unique
        name = name[:100] + "-" + hashlib.sha1(name.encode()).hexdigest()[:12]
    return name


def run_dir(task: str, run: str | None, overrides: str) -> str:
    """Where a job writes. Training writes into the run (given, or named after the command);
    eval/sample/bench write next to it, never into a training run's .hydra/."""
    if task == "train":
        return run if run else f"runs/{run_name(overrides)}"
    return f"runs/_{task}/{run_name(overrides)}"


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


def remove_if_untouched(out: Path) -> None:
    """A command rejected before any work leaves no directory behind (Hydra made it up front,
    with any missing parents such as runs/: those go too when empty). Only a directory this
    process created: another process's new run (whose lock this one lost) is not ours to remove."""
    if created_here(out) and out.is_dir() and all(_left_before_work(p) for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)
        cwd = Path.cwd().resolve()
        for parent in out.resolve().parents:
            if parent == cwd or cwd not in parent.parents:
                break
            try:
                parent.rmdir()  # only if empty
            except OSError:
                break


def _left_before_work(p: Path) -> bool:
    """What a launch leaves in a run directory before any work: Hydra's record and log, the
    lock, a ckpt/ that an interrupted first save left empty."""
    empty_ckpt = p.name == "ckpt" and p.is_dir() and not any(p.iterdir())
    return p.name in (".hydra", "launch.log", LOCK_FILE) or empty_ckpt


def undo_launch() -> Path | None:
    """A launch stopped before its task started (a signal while Hydra set up): the run's record
    as it was, and no directory this process created and nothing wrote into. Returns the run
    directory it was launched on (None: Hydra had not chosen it yet)."""
    restore_run_record()
    for created in list(_created):
        remove_if_untouched(created)
    return _guarded[-1] if _guarded else None


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


PROBE_BYTES = 32 * 1024  # more than Hydra's .hydra/ files need (~10 KB)


def _probe_space(run_dir: Path) -> None:
    """Write (and drop) a small file: an unwritable directory or a disk already full fails here,
    with a message, rather than in Hydra's writing of .hydra/ with a traceback."""
    with tempfile.TemporaryFile(dir=run_dir) as f:
        f.write(b"\0" * PROBE_BYTES)
        f.flush()
        os.fsync(f.fileno())


def _trains_and_leads(config) -> bool:
    """A training command's rank 0 (or single process): the one that holds the run's lock."""
    if OmegaConf.select(config, "task.name") != "train":
        return False
    return detect().is_main


class GuardRunDir(Callback):
    """Make the run directory, check it can be written, and lock a training run (before Hydra
    writes .hydra/ into it); nanogpt.gate.Gate checks the config first."""

    def on_run_start(self, config, **kwargs) -> None:
        HydraConfig.instance().set_config(config)  # as run_job does next: resolves ${hydra:...}
        run_dir = Path(OmegaConf.select(config, "hydra.run.dir"))
        _guarded.append(run_dir)
        try:
            _make_run_dir(run_dir)
            _probe_space(run_dir)
        except OSError as e:
            if run_dir.resolve() in _created:
                remove_if_untouched(run_dir)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                fail(f"no space left on the disk of the run directory {run_dir}: free disk space, or "
                      "choose a run directory on another disk with run=DIR")
            fail(f"cannot write to the run directory {run_dir}: {e.strerror or e}. Run from "
                  "a writable directory, or choose one with run=DIR")
        if _trains_and_leads(config):
            try:  # before Hydra writes .hydra/: a run another process trains is never touched
                lock_run(run_dir)
            except UserError as e:
                fail(str(e))
        if config.hydra.output_subdir is not None:
            remember_run_record(run_dir, config.hydra.output_subdir)


def fail(message: str) -> None:
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


def command_presets() -> dict:
    """The preset Hydra chose in each config group ({"model": "baby", "optim": "adamw", ...}):
    none outside a Hydra app, nor Hydra's own groups; a group chosen as a list
    (logger=[wandb,mlflow]) is not among Hydra's choices."""
    if not HydraConfig.initialized():
        return {}
    return {group: choice for group, choice in HydraConfig.get().runtime.choices.items()
            if choice is not None and not group.startswith("hydra/")}


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


# ----------------------------------------------------------------------------------------------
# a run about to train: is it done already, and what did a killed write leave behind

def finished_summary(run_dir: Path) -> dict | None:
    """The summary of a run that finished (it has a checkpoint and its summary says so), else
    None. A garbled summary.json is a UserError: whether the run is done cannot be told.
    (missing_outputs: what one that an older version marked finished too early still lacks.)"""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir, strict=True)
    has_ckpt = (any((run_dir / "ckpt" / name).exists() for name in checkpoint.RESUMABLE)
                or dcp.has_sharded(run_dir / "ckpt"))
    if has_ckpt and summary is not None and summary.get("status") == "finished":
        return summary
    return None


def missing_outputs(run_dir: Path, summary: dict) -> list[str]:
    """What a finished run promised but lacks: a sharded run's consolidated ckpt/*.pt (what
    sample, eval and export read), the samples its task asked for."""
    run_dir = Path(run_dir)
    missing = [f"ckpt/{name}.pt" for name in ("last", "best") if dcp.stale_consolidation(run_dir, name)]
    config = summary.get("config")
    task = config.get("task") if isinstance(config, dict) else None
    asked = task.get("num_samples") if isinstance(task, dict) else None
    if isinstance(asked, int) and asked > 0 and not (run_dir / "samples.txt").is_file():
        missing.append("samples.txt")
    return missing


def remove_stale_temps(ckpt_dir: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a kill interrupted (they can be
    as large as a checkpoint), and what interrupted sharded saves left (dcp.remove_orphans).
    Only call this while holding the run's lock."""
    dcp.remove_orphans(ckpt_dir)
    stale = sorted(Path(ckpt_dir).glob(checkpoint.TEMP_GLOB))
    for p in stale:
        p.unlink(missing_ok=True)
    if stale:
        log.info("removed %d incomplete checkpoint file(s) left by an interrupted write: %s",
                 len(stale), ", ".join(p.name for p in stale))
    return stale
