"""Where things are on disk: the repository, the prepared datasets, and the shared reference data
beside the repository. No torch here: the prepare/ scripts import it too."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# read-only corpora and the GPT-2 BPE ranks next to the repo (shared/data/README.md): offline fallbacks
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Where prepared datasets live: `root` (data.root), else $NANOGPT_DATA_ROOT, else <repo>/data."""
    if root:
        return Path(root).expanduser()
    env = os.environ.get("NANOGPT_DATA_ROOT")
    return Path(env).expanduser() if env else REPO_ROOT / "data"


def dataset_dir(name: str, root: str | os.PathLike | None = None) -> Path:
    return data_root(root) / name
