"""Checkpoints that never lose work: atomic writes, validated loads, complete resume state.

A checkpoint is one torch.save'd dict: model (without torch.compile's prefixes), model_args
(GPTConfig fields), optimizer, scaler, iter (optimizer steps done), best_val_loss, RNG states,
the resolved config and the tokenizer meta. It is written to a temporary file in the same
directory, fsync'ed, then renamed over the old one: a crash at any moment leaves either the old
file or the new one, never a torn one. A temporary file left by a killed write is removed when
the run resumes.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch

from nanogpt.errors import UserError

log = logging.getLogger("nanogpt")

# names of checkpoints that resume a run, and the temporary files their writes go through
RESUMABLE = ("last.pt", "best.pt")
TEMP_GLOB = ".*.pt.*.tmp"


class BadCheckpoint(UserError):
    """A checkpoint that does not load. `problem` says what is wrong with it, without the advice
    (a caller that falls back to another checkpoint warns with just that)."""

    def __init__(self, problem: str, advice: str):
        super().__init__(f"{problem}. {advice}")
        self.problem = problem


def atomic_save(obj, path: Path) -> None:
    path = Path(path)
    with _write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        # named like mkstemp's files, but created with the umask's permissions (mkstemp: 0600)
        tmp = path.parent / f".{path.name}.{os.getpid()}{secrets.token_hex(3)}.tmp"
        try:
            with open(tmp, "xb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)  # a full disk must not stay full because of our half-written file
            raise
        _fsync_dir(path.parent)


def copy_checkpoint(src: Path, dst: Path) -> None:
    """Make dst a copy of src, atomically (temporary file, fsync, rename). A copy, not a hard
    link: best.pt and last.pt are two real files, so damage to one in place (a truncation, a
    bad write) leaves the other to fall back to. It costs a second write of the checkpoint at an
    improving evaluation, but no second serialisation (and none at all where the filesystem
    clones files, as copy_file_range does on btrfs and XFS)."""
    src, dst = Path(src), Path(dst)
    with _write_errors(dst):
        tmp = dst.parent / f".{dst.name}.{os.getpid()}{secrets.token_hex(3)}.tmp"
        try:
            with open(src, "rb") as fin, open(tmp, "xb") as fout:
                _copy_file(fin, fout)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dst)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        _fsync_dir(dst.parent)


def _copy_file(fin, fout) -> None:
    """copy_file_range where the kernel has it (no trip through user space; a clone on
    filesystems that share blocks copy-on-write), else a plain buffered copy."""
    size = os.fstat(fin.fileno()).st_size
    try:
        copied = 0
        while copied < size:
            n = os.copy_file_range(fin.fileno(), fout.fileno(), size - copied)
            if n == 0:
                break
            copied += n
        if copied == size:
            return
    except (AttributeError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL,
                                                      errno.EOPNOTSUPP, errno.EBADF):
            raise  # a full disk and the like: the caller reports it
    fin.seek(0)
    fout.seek(0)
    fout.truncate()
    shutil.copyfileobj(fin, fout, 16 << 20)


@contextlib.contextmanager
def _write_errors(path: Path):
    """Turn a failed checkpoint write (full disk, quota, read-only or unwritable directory) into a
    UserError that says the previous checkpoint is intact. torch.save reports a failed write as a
    RuntimeError whose context holds the OSError, so the whole chain is searched."""
    try:
        yield
    except Exception as e:
        os_error = _find_os_error(e)
        if os_error is None:
            raise
        raise UserError(
            f"could not write checkpoint {path}: {os_error.strerror or os_error}. The checkpoints "
            f"already in {path.parent} are intact; free disk space or fix the directory's "
            "permissions, then run the same command again (or init_from=resume run=RUN_DIR) to "
            "continue from it") from e


def _find_os_error(exc: BaseException | None) -> OSError | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, OSError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _unlink_quietly(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _fsync_dir(directory: Path) -> None:
    """The rename itself must reach the disk, or a power cut could bring the old name back."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def remove_stale_temps(ckpt_dir: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that a kill interrupted (they can be
    as large as a checkpoint). Only call this while holding the run's lock."""
    stale = sorted(Path(ckpt_dir).glob(TEMP_GLOB))
    for p in stale:
        _unlink_quietly(p)
    if stale:
        log.info("removed %d incomplete checkpoint file(s) left by an interrupted write: %s",
                 len(stale), ", ".join(p.name for p in stale))
    return stale


def clean_state_dict(state_dict: dict) -> dict:
    """Drop the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add to names."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k.replace("._orig_mod.", ".")] = v
    return out


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load(path: Path, map_location="cpu", mmap: bool = False) -> dict:
    """Load and sanity-check a checkpoint; a missing, torn or foreign file is a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}")
    advice = ("Use the run's other checkpoint (ckpt/best.pt or ckpt/last.pt), or train in a new run "
              "directory")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as e:  # truncated zip, random bytes, pickle errors...
        reason = str(e).splitlines()[0] if str(e) else ""
        raise BadCheckpoint(f"checkpoint {path} is corrupt or incomplete ({type(e).__name__}: "
                            f"{reason})", advice) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise BadCheckpoint(f"{path} is not a nanogpt checkpoint (no model / model_args in it)", advice)
    ckpt["model"] = clean_state_dict(ckpt["model"])
    return ckpt


def check_shape(ckpt: dict, model_args: dict, path: Path) -> None:
    """A checkpoint only resumes into the same architecture; say which settings differ."""
    keys = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias")
    diff = [f"{k}: checkpoint {ckpt['model_args'].get(k)} vs config {model_args.get(k)}"
            for k in keys if ckpt["model_args"].get(k) != model_args.get(k)]
    if diff:
        raise UserError(f"checkpoint {path} was made with another model shape ({'; '.join(diff)}). "
                        "Use the model settings it was trained with, or a new run directory")


def load_latest(run_dir: Path, repair: bool = False) -> tuple[Path | None, dict | None]:
    """The newest checkpoint of a run that loads, for resuming: the higher iteration of last.pt
    and best.pt (a kill between writing best.pt and copying it to last.pt leaves best.pt ahead).
    A file that does not load is skipped with a warning, so one bad file never stops a resume;
    UserError when checkpoints exist but none of them loads. (None, None): no checkpoint.
    repair (the process holding the run's lock): when best.pt is chosen, last.pt becomes a copy
    of it, so last.pt is never left behind (a run stopped at max_iters would not rewrite it)."""
    ckpt_dir = Path(run_dir) / "ckpt"
    candidates, failures = [], []
    for rank, name in enumerate(RESUMABLE):
        path = ckpt_dir / name
        if not path.exists():
            continue
        try:  # mmap: reading the iteration costs the pickle, not the weights
            peek = load(path, mmap=True)
            it = _resume_iter(peek, path)
            del peek
        except BadCheckpoint as e:
            failures.append(e.problem)
            continue
        candidates.append((-it, rank, path))
    for neg_it, _, path in sorted(candidates):
        try:
            ckpt = load(path)
        except BadCheckpoint as e:
            failures.append(e.problem)
            continue
        for failure in failures:
            log.warning("%s; resuming from %s (iteration %d) instead", failure, path, -neg_it)
        if repair and path.name == "best.pt":
            log.info("%s is older than %s or does not load (a run stopped between writing them): "
                     "replacing it with a copy of best.pt", ckpt_dir / "last.pt", path)
            copy_checkpoint(path, ckpt_dir / "last.pt")
        return path, ckpt
    if failures:
        raise UserError(f"no checkpoint of {run_dir} loads: {' | '.join(failures)}. Move "
                        f"{ckpt_dir} aside to start over, or train in a new run directory")
    return None, None


def eval_losses_at(ckpt: dict, it: int) -> dict | None:
    """The evaluation losses a checkpoint recorded, if they are those of iteration `it`."""
    losses = ckpt.get("eval_losses")
    if isinstance(losses, dict) and losses.get("iter") == it and {"train", "val"} <= losses.keys():
        return dict(losses)
    return None


def _resume_iter(ckpt: dict, path: Path) -> int:
    if not isinstance(ckpt.get("iter"), int) or "optimizer" not in ckpt:
        raise BadCheckpoint(f"{path} holds a model but no training state (iter, optimizer): it can "
                            "initialise a run (model.path) but not resume one",
                            "Put a training checkpoint in ckpt/, or train in a new run directory")
    return ckpt["iter"]
