"""Durable file writes shared by checkpoints, metrics and summaries, and the one safe way to
read a torch file (tensors and plain data only: a file someone shares cannot run code)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from nanogpt.errors import UserError


def fsync_dir(directory: Path) -> None:
    """A rename must reach the disk too, or a power cut could bring the old name back."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass  # a file system that cannot fsync a directory: the rename is what it keeps


def replace_atomically(path: Path, text: str, suffix: str) -> None:
    """Write text beside path, fsync it, then rename it over path: a kill or a power cut leaves
    the old file or the new one. A failed write (a full disk) removes its temp file and names the
    file it was writing: path itself is untouched."""
    tmp = path.with_suffix(suffix)
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:  # a kill's KeyboardInterrupt too: no temp file left behind
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and (e.filename is None or str(e.filename) in ("", ".")):
            e.filename = str(path)
        raise
    fsync_dir(path.parent)


class UnsafeCheckpoint(UserError):
    """A file whose pickle holds objects other than tensors and plain data: refused outright
    (no fallback to another file), since loading it could run code."""


# What checkpoints of the previous format hold besides plain data: numpy's RNG state. numpy
# rebuilds an array from its raw bytes with its own reconstructor, which runs no other code.
# Allowed only while nanogpt loads a checkpoint, never globally.
_NP_CORE = getattr(np, "_core", None) or np.core
_RECONSTRUCT = _NP_CORE.multiarray._reconstruct
# numpy 1.x names the reconstructor's module numpy.core, numpy 2 numpy._core: a file written
# under either loads under either
_LEGACY_GLOBALS = [_RECONSTRUCT, *[(_RECONSTRUCT, f"{m}.multiarray._reconstruct") for m in ("numpy.core", "numpy._core")],
                   np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def torch_load(path: Path, map_location="cpu", mmap: bool = False):
    """torch.load with weights_only=True: tensors and plain data only. UnsafeCheckpoint (before
    anything of the file ran) when it holds other objects; other failures propagate."""
    import pickle

    try:
        with torch.serialization.safe_globals(_LEGACY_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "GLOBAL " not in str(e):  # garbage, or a pickle torch.save did not write
            raise
        raise UnsafeCheckpoint(
            f"{path} refused: it holds Python objects that no checkpoint needs "
            f"({_unsafe_names(path, e)}), and loading them could run code: it is not a checkpoint "
            "that nanogpt wrote, of this version or an older one. nanogpt loads tensors and plain "
            "data only; do not use files from sources you do not trust") from None


def error_reason(e: Exception) -> str:
    """The line of a load error that says what is wrong (torch's weights-only errors open with
    advice to load the file unsafely, which is not for us to give)."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _unsafe_names(path: Path, error: Exception) -> str:
    import re

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)  # reads, runs nothing
    except Exception:
        names = []
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in _LEGACY_GLOBALS}
    names = [n for n in names if n not in allowed] or re.findall(r"GLOBAL (\S+)", str(error))
    return ", ".join(names[:5]) or "unsupported objects"


def clean_state_dict(state_dict: dict) -> dict:
    """Drop the prefixes torch.compile ('_orig_mod.') and DDP ('module.') add to names."""
    out = {}
    for k, v in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            while k.startswith(prefix):
                k = k[len(prefix):]
        out[k.replace("._orig_mod.", ".")] = v
    return out
