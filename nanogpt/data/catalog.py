"""Datasets by name: which exist (a prepare script each, or a recipe of fineweb.py), and opening
one under the data root, preparing the embedded ones on first use."""
from __future__ import annotations

import importlib
import logging
import re
from pathlib import Path

from nanogpt.data.batches import (
    PREPARE_COMMANDS,
    TokenDataset,
    has_data,
    prepare_command,
)
from nanogpt.errors import UserError
from nanogpt.paths import REPO_ROOT, dataset_dir

log = logging.getLogger("nanogpt")


# Corpora prepared on first use (data.auto_prepare): they ship with Python, nothing to download.
# Every other dataset is prepared by its script, run on purpose (OpenWebText is ~17 GB).
EMBEDDED_DATASETS = ("pydoc_char",)
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def open_dataset(name: str, root: str | None = None, auto_prepare: bool = False,
                 is_main: bool = True) -> TokenDataset:
    check_dataset_name(name)
    path = dataset_dir(name, root)
    if not has_data(path):  # meta.json, llm.c shards, or an unfinished prepare to explain
        if not (auto_prepare and name in EMBEDDED_DATASETS):
            script = Path("prepare") / f"{name}.py"
            known = name in PREPARE_COMMANDS or (REPO_ROOT / script).exists()
            hint = (f"run `{prepare_command(name)}`" if known
                    else f"no prepare script is named {name!r}: check data=... (known: "
                         f"{', '.join(known_datasets())})")
            raise UserError(f"no prepared data for {name!r} at {path}: {hint}")
        if is_main:  # other ranks wait at a barrier in the caller, then open what rank 0 wrote
            log.info("preparing %s in %s (first use)", name, path)
            importlib.import_module(f"prepare.{name}").prepare(path)
    return TokenDataset(path)


def check_dataset_name(name) -> None:
    """A dataset name is one directory under the data root: it cannot lead elsewhere."""
    if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name) or ".." in name:
        raise UserError(f"data.name={name!r} is not a dataset name: use the name of a directory under "
                        "the data root (letters, digits, '_', '-', '.'), e.g. data=shakespeare_char; "
                        "for data kept elsewhere, set data.root=DIR")


def known_datasets() -> list[str]:
    here = REPO_ROOT / "prepare"
    helpers = {"common", "hf", "bpe", "fineweb"}  # fineweb.py makes the datasets PREPARE_COMMANDS names
    scripts = {p.stem for p in here.glob("*.py") if not p.stem.startswith("_")} - helpers
    return sorted(scripts | set(PREPARE_COMMANDS))
