"""Sharded checkpoints (torch.distributed.checkpoint): every rank writes its own shards, and a
run resumes on any number of ranks, one included.

Layout of a run's ckpt/ under hardware.strategy=fsdp:

    last.dcp -> iter-00000120-3fa9c1.dcp     symbolic links, each replaced atomically
    best.dcp -> iter-00000100-77b20e.dcp
    iter-00000120-3fa9c1.dcp/                one complete save
        .metadata                            DCP's index of every tensor's chunks
        __0_0.distcp, __1_0.distcp           rank 0's and rank 1's shards (model + optimizer)
        train_state.pt                       iteration, best val loss, RNG per rank, config, model_args
    last.pt, best.pt                         single-file copies of the weights (consolidate), read by
                                             sample, eval and export

Crash safety: a save is written into `.iter-…​.tmp/`, fsync'ed (DCP syncs every file it writes;
DCP's `.metadata` is written only once every rank's shards are), completed with train_state.pt,
renamed to its final name, and only then do the links move to it. A kill at any moment leaves
the links on complete saves; the temporary or orphaned directory it leaves is removed when the
run resumes (under the run's lock).

No code runs from a save: DCP reads `.metadata` with plain pickle.load and the non-tensor values
in the shard files (the optimizer's lr, betas...) with torch.load(weights_only=False). Here the
index goes through an unpickler that admits only the types DCP writes into it, and those values
through torch.load(weights_only=True); anything else is refused (checkpoint.UnsafeCheckpoint).
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import pickle
import re
import secrets
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from nanogpt.checkpoint import single as checkpoint
from nanogpt.errors import UserError
from nanogpt.io import fsync_dir
from nanogpt.model import GPT, GPTConfig
from nanogpt.runtime import distributed

log = logging.getLogger("nanogpt")

LINKS = ("last.dcp", "best.dcp")  # resumable, like checkpoint.RESUMABLE
STATE_FILE = "train_state.pt"
METADATA = ".metadata"  # written by DCP last, once all ranks' shards are
_SAVE_DIR = re.compile(r"^iter-\d{8}-[0-9a-f]{6}\.dcp$")
_TEMP_DIR = re.compile(r"^\.iter-\d{8}-[0-9a-f]{6}\.dcp\.tmp$")


@dataclass
class Found:
    """A complete sharded save that a link points to."""
    link: str  # last.dcp or best.dcp
    path: Path  # the save's directory
    state: dict  # its train_state.pt

    @property
    def iter(self) -> int:
        return self.state["iter"]


# ---- what a run directory holds

def has_sharded(ckpt_dir: Path) -> bool:
    """Does this run keep sharded checkpoints (an FSDP run)? A dangling link counts: the run's
    format is what it wrote, even if a file went missing since."""
    return any(os.path.lexists(Path(ckpt_dir) / name) for name in LINKS)


def check_strategy(run_dir: Path, sharded: bool) -> None:
    """A run keeps one checkpoint format: refuse, before any work, to resume a sharded run
    without a sharded strategy, or a run of single-file checkpoints with one."""
    ckpt_dir = Path(run_dir) / "ckpt"
    if has_sharded(ckpt_dir) and not sharded:
        raise UserError(f"{run_dir} was trained with hardware.strategy=fsdp (sharded checkpoints in "
                        f"{ckpt_dir}/last.dcp): resume it with hardware.strategy=fsdp, on any number "
                        "of processes, one included; its ckpt/*.pt files (`python -m nanogpt.checkpoint "
                        "consolidate RUN`) hold the weights only, for sampling, evaluation and export")
    single = [n for n in checkpoint.RESUMABLE if (ckpt_dir / n).is_file()]
    if sharded and single and not has_sharded(ckpt_dir):
        raise UserError(f"{run_dir} was trained with hardware.strategy=ddp (single-file checkpoint "
                        f"{ckpt_dir / single[0]}): resume it with hardware.strategy=ddp. To go on "
                        "sharded, start a new run from its weights: python -m nanogpt.export "
                        f"{run_dir} EXPORT_DIR, then init_from=pretrained model.path=EXPORT_DIR "
                        "hardware.strategy=fsdp run=NEW_DIR")


def _is_complete(path: Path) -> bool:
    return path.is_dir() and (path / METADATA).is_file() and (path / STATE_FILE).is_file()


def load_state(path: Path) -> dict:
    """A save's train_state.pt (no tensors of the model: small), through the project's
    weights-only loader."""
    return checkpoint.torch_load(Path(path) / STATE_FILE)


def find(ckpt_dir: Path) -> tuple[list[Found], list[str]]:
    """The complete saves the links point to, newest first, and what is wrong with the others.
    A file that carries code is refused outright (UnsafeCheckpoint), as a single-file checkpoint
    is; any other problem (a garbled index, a train state or tensors that do not fit) skips
    that save, as a corrupt file is skipped."""
    found, problems, checked = [], [], {}
    for name in LINKS:
        link = Path(ckpt_dir) / name
        if not os.path.lexists(link):
            continue
        target = link.resolve()
        if not _is_complete(target):
            problems.append(f"{link} points to {target.name}, which is missing or incomplete")
            continue
        if target not in checked:  # both links on one save: checked (and reported) once
            try:
                checked[target] = _checked_save(target)
            except checkpoint.UnsafeCheckpoint:
                raise
            except checkpoint.BadCheckpoint as e:
                checked[target] = None
                problems.append(e.problem)
            except Exception as e:  # noqa: BLE001 - reported, the other link may still resume
                checked[target] = None
                problems.append(f"{target / STATE_FILE} does not load ({checkpoint.error_reason(e)})")
        if checked[target] is not None:
            found.append(Found(name, target, checked[target]))
    found.sort(key=lambda f: (-f.iter, LINKS.index(f.link)))
    return found, problems


def _checked_save(path: Path) -> dict:
    """A save's train state, once its index, its train state and the shapes its index records
    are checked: BadCheckpoint (or UnsafeCheckpoint) otherwise, before DCP reads a tensor."""
    metadata = read_metadata(path)
    state = load_state(path)
    problem = checkpoint.train_state_problem(state)
    if problem is None:
        problem = _shape_problem(metadata, state["model_args"])
    if problem:
        raise checkpoint.BadCheckpoint(f"the sharded checkpoint {path} is not usable: {problem}", _ADVICE)
    return state


def latest(run_dir: Path, repair: bool = False) -> Found | None:
    """The newest complete save of a run, for resuming (None: the run has none). A link whose
    save is broken is skipped with a warning; UserError when links exist but none resolves.
    repair (rank 0, holding the run's lock): last.dcp is moved to best.dcp's save when that one is
    newer (a kill between moving the two links), as training.resume.load_latest does for last.pt."""
    ckpt_dir = Path(run_dir) / "ckpt"
    found, problems = find(ckpt_dir)
    if not found:
        if problems:
            raise UserError(f"no sharded checkpoint of {run_dir} loads: {' | '.join(problems)}. "
                            f"Move {ckpt_dir} aside to start over, or train in a new run directory")
        return None
    best = found[0]
    for problem in problems:
        log.warning("%s; resuming from %s (iteration %d) instead", problem, best.path, best.iter)
    if repair and best.link != "last.dcp":
        log.info("last.dcp is older than %s or broken: pointing it at %s", best.link, best.path.name)
        _link(ckpt_dir, "last.dcp", best.path)
    return best


# ---- saving

def save(ckpt_dir: Path, it: int, model, optimizer, train_state: dict | None, links: tuple[str, ...],
         dist) -> Path:
    """Every rank calls this: each writes its shards of the model and optimizer state; rank 0
    adds train_state (the other ranks may pass None), renames the save into place and points
    `links` (e.g. best.dcp, last.dcp) at it. Returns the save's directory."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    ckpt_dir = Path(ckpt_dir)
    name = distributed.broadcast_object(f"iter-{it:08d}-{secrets.token_hex(3)}.dcp")
    tmp, final = ckpt_dir / f".{name}.tmp", ckpt_dir / name
    model_sd, optim_sd = get_state_dict(model, _each(optimizer))
    with checkpoint._write_errors(final), _one_process():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
        if dist.is_main:
            checkpoint.atomic_save(train_state, tmp / STATE_FILE)
            fsync_dir(tmp)
            os.replace(tmp, final)
            fsync_dir(ckpt_dir)
            for link in links:
                _link(ckpt_dir, link, final)
            remove_orphans(ckpt_dir, quiet=True)
    distributed.barrier()
    return final


def _each(optimizer):
    """What DCP's state-dict functions take: an optimizer, or the tuple of several stepped as one
    (training.optim.Optimizers: Muon beside AdamW), whose states DCP keys by parameter name."""
    several = getattr(optimizer, "optimizers", None)
    return tuple(several.values()) if several is not None else optimizer


def _link(ckpt_dir: Path, link: str, target: Path) -> None:
    """Point ckpt_dir/link at target, atomically (a new link renamed over the old one)."""
    tmp = ckpt_dir / f".{link}.{secrets.token_hex(3)}.tmp"
    os.symlink(target.name, tmp)  # relative: the run directory can move
    os.replace(tmp, ckpt_dir / link)
    fsync_dir(ckpt_dir)


def remove_orphans(ckpt_dir: Path, quiet: bool = False) -> list[Path]:
    """Delete what interrupted saves left (temporary directories and links) and saves that no
    link points to any more (`quiet`: the ones a save just replaced, not worth a log line).
    Only call this while holding the run's lock."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    kept = {Path(ckpt_dir / n).resolve() for n in LINKS if os.path.lexists(ckpt_dir / n)}
    removed = []
    for p in ckpt_dir.iterdir():
        temp_link = p.name.startswith(tuple(f".{n}." for n in LINKS)) and p.name.endswith(".tmp")
        if _TEMP_DIR.match(p.name) or temp_link or (_SAVE_DIR.match(p.name) and p.resolve() not in kept):
            if p.is_symlink() or p.is_file():
                p.unlink(missing_ok=True)
            else:
                shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if removed and not quiet:
        log.info("removed what interrupted sharded saves left, or saves no link points to: %s",
                 ", ".join(p.name for p in removed))
    return removed


# ---- loading

_ADVICE = "Use the run's other sharded checkpoint, or train in a new run directory"


def load_into(path: Path, model, optimizer) -> None:
    """Load a save's model and optimizer state into this rank's (sharded or plain) model and
    optimizer: each rank reads the chunks its shards need, whatever world size wrote them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, _each(optimizer))
    state = {"model": model_sd, "optim": optim_sd}
    reader, planner = _safe_reader_and_planner()
    with _one_process(), _load_errors(path):
        dcp.load(state, checkpoint_id=path, storage_reader=reader(path), planner=planner(path))
    set_state_dict(model, _each(optimizer), model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_model_weights(path: Path, model) -> None:
    """Only the weights of a save, into a plain (unsharded) model: one process, no process group."""
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    reader, planner = _safe_reader_and_planner()
    with _one_process(), _load_errors(path):
        dcp.load(state, checkpoint_id=path, storage_reader=reader(path), planner=planner(path), no_dist=True)
    model.load_state_dict(state["model"])


class _Forbidden(pickle.UnpicklingError):
    """A global that no index of a sharded checkpoint holds (its name is the message)."""


class _MetadataUnpickler(pickle.Unpickler):
    """pickle's unpickler restricted to the globals DCP writes into `.metadata` (Python's own
    "restricting globals" recipe). torch's weights-only unpickler would be the natural choice,
    but it reads pickle protocol 2 only, and DCP writes its index with protocol 4 or later."""

    def find_class(self, module: str, name: str):
        allowed = _metadata_globals().get(f"{module}.{name}")
        if allowed is None:
            raise _Forbidden(f"{module}.{name}")
        return allowed


@functools.cache
def _metadata_globals() -> dict[str, object]:
    """What `.metadata` may name: DCP's metadata classes (plain dataclasses and one enum),
    torch.Size, dtypes and layouts, and the path the save was written to. Each only builds a
    value from its arguments; none runs other code."""
    import pathlib

    from torch.distributed.checkpoint import filesystem
    from torch.distributed.checkpoint import metadata as m

    classes = [m.Metadata, m.TensorStorageMetadata, m.BytesStorageMetadata, m.ChunkStorageMetadata,
               m.TensorProperties, m._MEM_FORMAT_ENCODING, m.MetadataIndex, m.StorageMeta,
               filesystem._StorageInfo, torch.Size, torch.serialization._get_layout]
    allowed = {f"{c.__module__}.{c.__qualname__}": c for c in classes}
    allowed.update({str(d): d for d in vars(torch).values() if isinstance(d, torch.dtype)})
    # StorageMeta.checkpoint_id (Python 3.13 pickles PosixPath from pathlib._local)
    allowed.update({"pathlib.PosixPath": pathlib.PosixPath, "pathlib._local.PosixPath": pathlib.PosixPath})
    return allowed


def read_metadata(path: Path):
    """A save's index (DCP's Metadata: every tensor's size, dtype and chunks, and where each
    is stored), read without running code. UnsafeCheckpoint when it names any other global
    (a payload: os.system ...); BadCheckpoint when it is not an index at all."""
    from torch.distributed.checkpoint.metadata import Metadata

    file = Path(path) / METADATA
    try:
        with open(file, "rb") as f:
            metadata = _MetadataUnpickler(f).load()
    except _Forbidden as e:
        raise checkpoint.UnsafeCheckpoint(
            f"{file} refused: it holds Python objects that the index of a sharded checkpoint never "
            f"holds ({e}), and loading them could run code: it is not a file that nanogpt wrote. Do "
            "not use files from sources you do not trust") from None
    except Exception as e:  # noqa: BLE001 - random bytes, a truncated file: whatever pickle raises
        raise checkpoint.BadCheckpoint(f"{file} is corrupt or incomplete, not the index of a sharded checkpoint "
                                       f"({checkpoint.error_reason(e)})", _ADVICE) from None
    if not isinstance(metadata, Metadata):
        raise checkpoint.BadCheckpoint(f"{file} is not the index of a sharded checkpoint (it holds a "
                                       f"{type(metadata).__name__})", _ADVICE)
    return metadata


def _shape_problem(metadata, model_args: dict) -> str | None:
    """The tensors an index records against a model built (on the meta device, no memory) from
    the save's model_args: every weight, and the optimizer state of each parameter (AdamW's
    moments have the parameter's shape). Caught here, not as an error deep inside DCP's load."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    with torch.device("meta"):
        model = GPT(checkpoint.model_config(model_args))
    params = {k: tuple(p.shape) for k, p in model.named_parameters(remove_duplicate=False)}
    expected = {f"model.{k}": tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(m.size) for k, m in metadata.state_dict_metadata.items() if isinstance(m, TensorStorageMetadata)}
    problems = [f"{k}: {got[k]} vs {v}" for k, v in expected.items() if k in got and got[k] != v]
    problems += [f"missing {k}" for k in expected if k not in got]
    problems += [f"unexpected {k}" for k in got if k.startswith("model.") and k not in expected]
    for k, size in got.items():
        if not k.startswith("optim.state."):
            continue
        param = k[len("optim.state."):].rsplit(".", 1)[0]
        if param not in params:
            problems.append(f"optimizer state of no parameter: {k}")
        elif size and size != params[param]:
            problems.append(f"{k}: {size} vs the parameter's {params[param]}")
    if not problems:
        return None
    return ("its tensors do not match its model_args: " + "; ".join(problems[:6])
            + (f"; ... ({len(problems)} in all)" if len(problems) > 6 else ""))


@functools.cache
def _safe_reader_and_planner():
    """DCP's FileSystemReader and DefaultLoadPlanner, each with its one unsafe read replaced:
    the index through read_metadata, and the values that are not tensors (the optimizer's
    lr, betas...: pickles inside the shard files) through torch.load(weights_only=True)."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint.default_planner import set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self):  # no **kwargs: DCP then never falls back to per-rank index files
            metadata = read_metadata(Path(self.path))
            metadata.storage_meta = metadata.storage_meta or StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class Planner(DefaultLoadPlanner):
        def __init__(self, path: Path):
            super().__init__()
            self.path = Path(path)

        def load_bytes(self, read_item, value) -> None:
            fqn = read_item.dest_index.fqn
            try:
                obj = torch.load(value, map_location="cpu", weights_only=True)
            except Exception as e:  # noqa: BLE001 - a payload, or bytes that are not torch.save's
                raise _value_error(self.path / self.metadata.storage_data[read_item.storage_index].relative_path,
                                   fqn, e) from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[fqn], obj)
            else:
                self.state_dict[fqn] = obj

    return Reader, Planner


def _value_error(file: Path, fqn: str, e: Exception) -> UserError:
    """Why a value of a shard file did not load. One-argument exceptions only: DCP pickles a
    failure to gather it from every rank."""
    names = re.findall(r"GLOBAL (\S+)", str(e))
    if names:
        return checkpoint.UnsafeCheckpoint(
            f"{file} refused: its value {fqn} holds Python objects that no sharded checkpoint holds "
            f"({', '.join(dict.fromkeys(names))}), and loading them could run code: it is not a file "
            "that nanogpt wrote. Do not use files from sources you do not trust")
    return UserError(f"{file} is damaged: its value {fqn} does not load ({checkpoint.error_reason(e)}). "
                     f"{_ADVICE}")


@contextlib.contextmanager
def _load_errors(path: Path):
    """DCP reports any failure of a load as a CheckpointException (a BaseException, gathered
    from every rank): our own refusal is re-raised as it is, anything else (a shard file cut
    short, a chunk that does not fit) as a UserError naming the save."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        yield
    except CheckpointException as e:
        failures = [exc for exc, _ in e.failures.values()]
        for failure in failures:
            if isinstance(failure, UserError):
                raise failure from None
        why = checkpoint.error_reason(failures[0]) if failures else str(e).splitlines()[0]
        raise UserError(f"the sharded checkpoint {path} does not load ({why}): its shard files are damaged "
                        f"or incomplete. {_ADVICE}") from None


@contextlib.contextmanager
def _one_process():
    """DCP warns that it assumes one process when there is no process group: that is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


# ---- consolidation: one file that sample, eval and export read

def consolidate(run_dir: Path) -> list[Path]:
    """Write ckpt/last.pt and ckpt/best.pt (the weights of last.dcp's and best.dcp's saves, in
    the single-file format of a DDP run, without optimizer state) in one process. Already
    up-to-date files are left alone. Returns the files written."""
    ckpt_dir = Path(run_dir) / "ckpt"
    found, problems = find(ckpt_dir)
    if not found:
        why = f": {' | '.join(problems)}" if problems else ""
        raise UserError(f"{run_dir} has no sharded checkpoint to consolidate (ckpt/last.dcp or "
                        f"ckpt/best.dcp){why}")
    written = []
    for f in found:
        out = ckpt_dir / f.link.replace(".dcp", ".pt")
        if consolidated_from(out) == f.path.name:
            continue
        model = GPT(GPTConfig(**f.state["model_args"]))
        model.to(saved_dtype(f.path))
        load_model_weights(f.path, model)
        keep = ("model_args", "iter", "best_val_loss", "config", "tokenizer", "dataset", "eval_losses")
        checkpoint.atomic_save({"model": model.state_dict(), **{k: f.state.get(k) for k in keep},
                                "consolidated_from": f.path.name}, out)
        log.info("%s: the weights of %s (iteration %d)", out, f.path.name, f.iter)
        written.append(out)
    return written


def consolidated_from(path: Path) -> str | None:
    """The sharded save a consolidated file was made from (None: not one, or no file)."""
    if not path.exists():
        return None
    try:
        return checkpoint.load(path, mmap=True).get("consolidated_from")
    except UserError:
        return None


def stale_consolidation(run_dir: Path, name: str) -> str | None:
    """Why ckpt/<name>.pt of a sharded run must not be read as it is (missing, or made from an
    older save than <name>.dcp's), or None when it is current or the run is not sharded."""
    ckpt_dir = Path(run_dir) / "ckpt"
    link = ckpt_dir / f"{name}.dcp"
    if not os.path.lexists(link):
        return None
    have = consolidated_from(ckpt_dir / f"{name}.pt")
    if have == link.resolve().name:
        return None
    state = f"is from an older save ({have})" if have else "does not exist"
    return (f"{run_dir} keeps sharded checkpoints and ckpt/{name}.pt {state}: run "
            f"`python -m nanogpt.checkpoint consolidate {run_dir}` first")


def saved_dtype(path: Path) -> torch.dtype:
    """The dtype the weights were saved in (float32; float64 in numerical checks)."""
    meta = read_metadata(path).state_dict_metadata
    return meta["model.lm_head.weight"].properties.dtype
