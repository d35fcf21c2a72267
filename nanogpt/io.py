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
