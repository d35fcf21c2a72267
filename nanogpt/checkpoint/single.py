"""Checkpoints that never lose work: atomic writes, validated loads, complete resume state.

A checkpoint is one torch.save'd dict: model (without torch.compile's prefixes), model_args
(GPTConfig fields), optimizer, scaler, iter (optimizer steps done), best_val_loss, RNG states,
the resolved config, the tokenizer meta and the latest evaluation's losses. It holds tensors and
plain data only (dicts, lists, numbers, strings; RNG states as tensors), and is loaded with
torch.load(weights_only=True): a checkpoint someone shares cannot run code. A file that carries
other objects is refused (UnsafeCheckpoint); one of the previous format (numpy's RNG state as
numpy arrays) loads as it is, and `python -m nanogpt.checkpoint upgrade FILE` rewrites it as plain
data, through the same loader. It is written to a temporary file in the same
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
from nanogpt.io import (
    UnsafeCheckpoint,
    clean_state_dict,
    error_reason,
    fsync_dir,
    torch_load,
)
from nanogpt.model import GPT, GPTConfig

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
                _save_interruptibly(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            _unlink_quietly(tmp)  # a full disk must not stay full because of our half-written file
            raise
        fsync_dir(path.parent)


def _save_interruptibly(obj, f) -> None:
    """torch.save, but a Ctrl-C inside it stays a Ctrl-C: the zip writer's exit, finishing a
    record the interruption cut short, raises a RuntimeError ("unexpected pos") that would replace
    it and turn a clean stop into a traceback."""
    try:
        torch.save(obj, f)
    except RuntimeError as e:
        if isinstance(e.__context__, KeyboardInterrupt):
            raise e.__context__ from None
        raise


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
        fsync_dir(dst.parent)


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


def rng_state() -> dict:
    """Every RNG's state as tensors and plain numbers (numpy's key array as an int64 tensor)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(_numpy_state(state["numpy"]))
    random.setstate(_python_state(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _numpy_state(n) -> tuple:
    """numpy's get_state() tuple from what a checkpoint holds (a dict; numpy's own tuple in
    checkpoints of the previous format)."""
    if isinstance(n, dict):
        keys = n["keys"].numpy() if isinstance(n["keys"], torch.Tensor) else np.asarray(n["keys"])
        return ("MT19937", keys.astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    return tuple(n)


def _python_state(p) -> tuple:
    """random.setstate wants tuples; a checkpoint round trip may give lists."""
    return (p[0], tuple(p[1]), p[2])


def load(path: Path, map_location="cpu", mmap: bool = False) -> dict:
    """Load and sanity-check a checkpoint; a missing, torn or foreign file is a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}")
    advice = ("Use the run's other checkpoint (ckpt/best.pt or ckpt/last.pt), or train in a new run "
              "directory")
    try:
        ckpt = torch_load(path, map_location=map_location, mmap=mmap)
    except UnsafeCheckpoint:
        raise
    except Exception as e:  # truncated zip, random bytes, pickle errors...
        raise BadCheckpoint(f"checkpoint {path} is corrupt or incomplete ({error_reason(e)})", advice) from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise BadCheckpoint(f"{path} is not a nanogpt checkpoint (no model / model_args in it)", advice)
    problem = _schema_problem(ckpt)
    if problem:
        raise BadCheckpoint(f"{path} is not a usable nanogpt checkpoint: {problem}", advice)
    ckpt["model"] = clean_state_dict(ckpt["model"])
    problem = _shape_problem(ckpt)
    if problem:
        raise BadCheckpoint(f"{path}: the weights do not match its model_args ({problem})", advice)
    return ckpt


def _schema_problem(ckpt: dict) -> str | None:
    model, args = ckpt["model"], ckpt["model_args"]
    if not isinstance(model, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in model.items()):
        return "its model is not a dict of named tensors"
    if not isinstance(args, dict):
        return "its model_args is not a dict"
    if "optimizer" in ckpt and not isinstance(ckpt["optimizer"], dict):
        return "its optimizer state is not a dict"
    try:
        model_config(args)
    except (TypeError, ValueError) as e:
        return f"its model_args {args} do not describe a model ({e})"
    return _progress_problem(ckpt)


def train_state_problem(state) -> str | None:
    """What is wrong with a sharded save's train_state.pt (None: nothing): what a resume reads
    from it besides the tensors, checked as a single-file checkpoint's are."""
    if not isinstance(state, dict) or "iter" not in state or not isinstance(state.get("model_args"), dict):
        return "its train state is not a dict with iter and model_args"
    try:
        model_config(state["model_args"])
    except (TypeError, ValueError) as e:
        return f"its model_args {state['model_args']} do not describe a model ({e})"
    return _progress_problem(state)


def _progress_problem(ckpt: dict) -> str | None:
    """The iteration and the RNG states a resume continues from: a value that would only fail
    (or train nonsense) once training starts is a bad checkpoint here."""
    it = ckpt.get("iter")
    if "iter" in ckpt and (isinstance(it, bool) or not isinstance(it, int) or it < 0):
        return f"its iter is {it!r}, not an integer >= 0 (the optimizer steps it had taken)"
    return _rng_problem(ckpt.get("rng"))


def _rng_problem(rng) -> str | None:
    """Each rank's RNG states, restored on resume: tried on throwaway generators, so that a
    state that does not restore is found now, not after the model is built."""
    if rng is None:
        return None
    if not isinstance(rng, list):
        return f"its rng is a {type(rng).__name__}, not a list of RNG states (one per rank)"
    for rank, state in enumerate(rng):
        try:
            torch.Generator().set_state(state["torch"])
            np.random.RandomState().set_state(_numpy_state(state["numpy"]))
            random.Random().setstate(_python_state(state["python"]))
        except Exception as e:  # noqa: BLE001 - whatever a malformed state makes them raise
            return f"its rng[{rank}] does not restore ({error_reason(e)})"
    return None


def model_config(model_args: dict) -> GPTConfig:
    """The GPTConfig a checkpoint's model_args describe (fields a newer version added are ignored)."""
    ints = [k for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd") if k in model_args]
    bad = [k for k in ints if isinstance(model_args[k], bool) or not isinstance(model_args[k], int)]
    if bad:
        raise TypeError(f"{', '.join(bad)} must be integers")
    return GPTConfig.from_dict(model_args)


def _shape_problem(ckpt: dict) -> str | None:
    """Missing, unexpected or misshapen tensors against a model built (on the meta device, no
    memory) from model_args: caught here, not as a traceback in load_state_dict."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in GPT(model_config(ckpt["model_args"])).state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
    problems = [f"{k}: {got[k]} vs {expected[k]}" for k in expected if k in got and got[k] != expected[k]]
    problems += [f"missing {k}" for k in expected if k not in got]
    problems += [f"unexpected {k}" for k in got if k not in expected]
    if not problems:
        return None
    return "; ".join(problems[:6]) + (f"; ... ({len(problems)} in all)" if len(problems) > 6 else "")


def check_shape(ckpt: dict, config: GPTConfig, path: Path) -> None:
    """A checkpoint only resumes into the same architecture (every GPTConfig field but dropout;
    a field its model_args lack has the default, what the model computed before the field
    existed); say which settings differ."""
    saved = GPTConfig.from_dict(ckpt["model_args"]).architecture()
    wanted = config.architecture()
    diff = [f"{k}: checkpoint {saved[k]} vs config {wanted[k]}" for k in wanted if saved[k] != wanted[k]]
    if diff:
        raise UserError(f"checkpoint {path} was made with another model shape ({'; '.join(diff)}). "
                        "Use the model settings it was trained with, or a new run directory")


def eval_losses_at(ckpt: dict, it: int) -> dict | None:
    """The evaluation losses a checkpoint recorded, if they are those of iteration `it`."""
    losses = ckpt.get("eval_losses")
    if isinstance(losses, dict) and losses.get("iter") == it and {"train", "val"} <= losses.keys():
        return dict(losses)
    return None


# ----------------------------------------------------------------------------------------------
# python -m nanogpt.checkpoint upgrade FILE...

def upgrade(path: Path) -> bool:
    """Rewrite a checkpoint of an older nanogpt as tensors and plain data. It is read by the
    loader every checkpoint goes through, which admits the previous format's numpy arrays and
    nothing else: a file carrying other objects is refused (UnsafeCheckpoint) and left as it was,
    its code never run. False if it was plain already."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint file {path}")
    try:
        if not torch.serialization.get_unsafe_globals_in_checkpoint(path):
            return False
    except Exception as e:
        raise UserError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    try:
        state = torch_load(path)
    except UnsafeCheckpoint as e:
        raise UnsafeCheckpoint(f"{e}. {path} was left unchanged") from None
    except Exception as e:  # noqa: BLE001 - a torn file
        raise UserError(f"{path} does not load ({error_reason(e)}): it was left unchanged") from e
    atomic_save(_plain(state), path)
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path} was rewritten but still holds objects nanogpt does not convert "
                        f"({str(e).strip().splitlines()[-1] if str(e) else type(e).__name__})") from e
    return True


def _plain(obj):
    """obj with numpy's RNG tuple as rng_state()'s dict, numpy arrays as tensors, numpy scalars
    as numbers and dataclasses as dicts."""
    import dataclasses

    if isinstance(obj, tuple) and len(obj) == 5 and obj[0] == "MT19937":
        return {"keys": torch.from_numpy(np.asarray(obj[1]).astype(np.int64)), "pos": int(obj[2]),
                "has_gauss": int(obj[3]), "cached_gaussian": float(obj[4])}
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj

