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
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from nanogpt import checkpoint
from nanogpt.errors import UserError

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
    """The complete saves the links point to, newest first, and what is wrong with the others."""
    found, problems = [], []
    for name in LINKS:
        link = Path(ckpt_dir) / name
        if not os.path.lexists(link):
            continue
        target = link.resolve()
        if not _is_complete(target):
            problems.append(f"{link} points to {target.name}, which is missing or incomplete")
            continue
        try:
            state = load_state(target)
        except Exception as e:  # noqa: BLE001 - reported, the other link may still resume
            problems.append(f"{target / STATE_FILE} does not load ({type(e).__name__}: {e})")
            continue
        found.append(Found(name, target, state))
    found.sort(key=lambda f: (-f.iter, LINKS.index(f.link)))
    return found, problems


def latest(run_dir: Path, repair: bool = False) -> Found | None:
    """The newest complete save of a run, for resuming (None: the run has none). A link whose
    save is broken is skipped with a warning; UserError when links exist but none resolves.
    repair (rank 0, holding the run's lock): last.dcp is moved to best.dcp's save when that one is
    newer (a kill between moving the two links), as checkpoint.load_latest does for last.pt."""
    ckpt_dir = Path(run_dir) / "ckpt"
    found, problems = find(ckpt_dir)
    if not found:
        if problems:
            raise UserError(f"no sharded checkpoint of {run_dir} is complete: {' | '.join(problems)}. "
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

    from nanogpt import distributed

    ckpt_dir = Path(ckpt_dir)
    name = distributed.broadcast_object(f"iter-{it:08d}-{secrets.token_hex(3)}.dcp")
    tmp, final = ckpt_dir / f".{name}.tmp", ckpt_dir / name
    model_sd, optim_sd = get_state_dict(model, optimizer)
    with checkpoint._write_errors(final), _one_process():
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
        if dist.is_main:
            checkpoint.atomic_save(train_state, tmp / STATE_FILE)
            checkpoint._fsync_dir(tmp)
            os.replace(tmp, final)
            checkpoint._fsync_dir(ckpt_dir)
            for link in links:
                _link(ckpt_dir, link, final)
            remove_orphans(ckpt_dir, quiet=True)
    distributed.barrier()
    return final


def _link(ckpt_dir: Path, link: str, target: Path) -> None:
    """Point ckpt_dir/link at target, atomically (a new link renamed over the old one)."""
    tmp = ckpt_dir / f".{link}.{secrets.token_hex(3)}.tmp"
    os.symlink(target.name, tmp)  # relative: the run directory can move
    os.replace(tmp, ckpt_dir / link)
    checkpoint._fsync_dir(ckpt_dir)


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

def load_into(path: Path, model, optimizer) -> None:
    """Load a save's model and optimizer state into this rank's (sharded or plain) model and
    optimizer: each rank reads the chunks its shards need, whatever world size wrote them."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    with _one_process():
        dcp.load(state, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def load_model_weights(path: Path, model) -> None:
    """Only the weights of a save, into a plain (unsharded) model: one process, no process group."""
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    with _one_process():
        dcp.load(state, checkpoint_id=path, no_dist=True)
    model.load_state_dict(state["model"])


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
    from nanogpt.model import GPT, GPTConfig

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
    import torch.distributed.checkpoint as dcp

    meta = dcp.FileSystemReader(path).read_metadata().state_dict_metadata
    return meta["model.lm_head.weight"].properties.dtype
