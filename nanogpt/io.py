"""Durable file writes shared by checkpoints, metrics and summaries."""
from __future__ import annotations

import os
from pathlib import Path


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
