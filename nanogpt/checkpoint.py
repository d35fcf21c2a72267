"""Checkpoints that never lose work: atomic writes, validated loads, complete resume state.

A checkpoint is one torch.save'd dict: model (without torch.compile's prefixes), model_args
(GPTConfig fields), optimizer, scaler, iter (optimizer steps done), best_val_loss, RNG states,
the resolved config and the tokenizer meta. It is written to a temporary file in the same
directory, fsync'ed, then renamed over the old one: a crash at any moment leaves either the old
file or the new one, never a torn one.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from nanogpt.errors import UserError


def atomic_save(obj, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise UserError(f"could not write checkpoint {path}: {e.strerror or e}. The previous "
                            "checkpoint is intact; free disk space or fix permissions, then "
                            "resume with init_from=resume") from e
        raise
    # the rename itself must reach the disk, or a power cut could bring the old name back
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


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


def load(path: Path, map_location="cpu") -> dict:
    """Load and sanity-check a checkpoint; a missing, torn or foreign file is a UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"no checkpoint at {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # truncated zip, random bytes, pickle errors...
        raise UserError(f"checkpoint {path} is corrupt or incomplete ({type(e).__name__}: {e}). "
                        "Use another checkpoint (ckpt/best.pt or ckpt/last.pt) or start the run "
                        "again with init_from=scratch in a new directory") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_args" not in ckpt:
        raise UserError(f"{path} is not a nanogpt checkpoint (no model / model_args in it)")
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


def find_resumable(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run that loads: last.pt, else best.pt."""
    for name in ("last.pt", "best.pt"):
        p = Path(run_dir) / "ckpt" / name
        if p.exists():
            return p
    return None
