"""Helpers shared by the prepare scripts: hashing, verified downloads, the atomic dataset writer, CLI glue.

A prepared dataset is a directory holding train.bin and val.bin (flat token ids) and meta.json
(prepare/fineweb.py writes llm.c shards instead: nanogpt/data/shards.py). The writer appends to files
under temporary names and renames them into place only once everything succeeded (meta.json last),
so a failed run never leaves a partial dataset behind and never clobbers a good one.
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping

import numpy as np

from nanogpt.errors import UserError, run_cli  # noqa: F401 (run_cli: the prepare scripts' entry)
from nanogpt.tokenizer import GPT2Tokenizer, TokenizerError, sha256_file

SPLITS = ("train", "val")


class PrepareError(UserError):
    """Bad input or environment: reported as `error: <message>` with exit code 2, no traceback."""


class DownloadError(PrepareError):
    """The server could not be reached or the transfer failed (as opposed to a wrong file)."""


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


def read_text(path: str | os.PathLike, what: str = "input") -> str:
    """Reads a UTF-8 text file, turning the usual failures into actionable PrepareErrors."""
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"{what} file {path} does not exist (check the path)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PrepareError(f"{what} file {path} is not UTF-8 text ({e})") from None
    except OSError as e:
        raise PrepareError(f"cannot read {what} file {path}: {e}") from None


def check_sha256(path: str | os.PathLike, expected: str, hint: str = "") -> str:
    actual = sha256_file(path)
    if actual != expected:
        raise PrepareError(f"{path} has sha256 {actual}, expected {expected}" + (f"; {hint}" if hint else ""))
    return actual


def download(url: str, dest: str | os.PathLike, sha256: str, timeout: float = 60.0) -> Path:
    """Fetches url to dest, keeping it only if its sha256 matches (a bad or partial file is deleted)."""
    dest = Path(dest)
    created = not dest.parent.exists()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f"{dest.name}.part.{os.getpid()}")
    ok = False
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(part, "wb") as f:
                shutil.copyfileobj(response, f)
        except (urllib.error.URLError, OSError) as e:
            raise DownloadError(f"could not download {url}: {e}") from None
        actual = sha256_file(part)
        if actual != sha256:
            raise PrepareError(
                f"download from {url} has sha256 {actual}, expected {sha256}; the file was discarded "
                "(the server returned something else, e.g. an error page or a changed file)"
            )
        os.replace(part, dest)
        ok = True
    finally:
        part.unlink(missing_ok=True)
        if created and not ok:
            remove_if_empty(dest.parent)
    return dest


def gpt2_tokenizer(rank_file: str | os.PathLike | None = None) -> GPT2Tokenizer:
    try:
        return GPT2Tokenizer(rank_file)
    except TokenizerError as e:
        raise PrepareError(str(e)) from None


def storage_error(e: OSError, path, what: str = "writing") -> PrepareError:
    """A full disk, a quota or an unwritable place while preparing: the user's to fix."""
    reason = e.strerror or str(e)
    return PrepareError(f"{reason} while {what} {path}: free disk space (or fix permissions), or "
                        "choose another place with --out-dir; nothing was kept, and a dataset already "
                        "there is unchanged")


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return ""


def check_free_space(directory: Path, needed: int, what: str) -> None:
    """Refuses up front when `directory`'s filesystem has less than `needed` bytes free."""
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise PrepareError(f"{what} needs about {human_bytes(needed)} but {directory} has "
                           f"{human_bytes(free)} free: free disk space, or choose another place with --out-dir")


class DatasetWriter:
    """Writes <out_dir>/{train,val}.bin and meta.json, all or nothing.

    Tokens are appended to temporary files with ordinary writes (a full disk is an OSError, never
    the SIGBUS of a write through a memmap), and renamed into place by finish(), meta.json last: a
    failed or interrupted prepare never leaves a partial dataset behind and never clobbers a good
    one. Used as a context manager; leaving it without finish() removes what it wrote.

        with DatasetWriter(out_dir, tokenizer, expected_tokens=n) as w:
            w.write("train", ids) ...
            meta = w.finish(dataset="name", source={...})
    """

    def __init__(self, out_dir, tokenizer, splits=SPLITS, expected_tokens: int | None = None):
        self.out_dir, self.tokenizer, self.splits = Path(out_dir), tokenizer, tuple(splits)
        self.dtype = token_dtype(tokenizer.vocab_size)
        self.expected_tokens = expected_tokens
        self.counts = {split: 0 for split in self.splits}
        # pid-unique temporary names: concurrent runs (e.g. DDP ranks preparing on first use) don't collide.
        self.names = [f"{split}.bin" for split in self.splits] + ["meta.json"]
        self.tmp = {name: self.out_dir / f"{name}.tmp.{os.getpid()}" for name in self.names}
        self.files: dict = {}
        self.created = False
        self.finished = False

    def __enter__(self) -> DatasetWriter:
        self.created = not self.out_dir.exists()
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if self.expected_tokens is not None:
                check_free_space(self.out_dir, self.expected_tokens * self.dtype.itemsize + 2**14,
                                 f"preparing {self.out_dir.name}")
            for split in self.splits:
                self.files[split] = open(self.tmp[f"{split}.bin"], "wb")
        except BaseException as e:
            self.__exit__(type(e), e, None)
            raise
        return self

    def write(self, split: str, ids) -> None:
        ids = np.asarray(ids)
        try:
            self.files[split].write(ids.astype(self.dtype, copy=False).tobytes())
        except OSError as e:
            raise storage_error(e, self.out_dir / f"{split}.bin") from e
        self.counts[split] += len(ids)

    def finish(self, *, dataset: str, source: dict) -> dict:
        for split, n in self.counts.items():
            if n <= 0:
                raise PrepareError(f"the {split} split of {dataset} would be empty: the corpus is too small")
        try:
            for f in self.files.values():
                f.close()
            meta = {
                "dataset": dataset,
                "format": "flat",
                "tokenizer": self.tokenizer.to_meta(),
                "vocab_size": self.tokenizer.vocab_size,
                "dtype": self.dtype.name,
                "tokens": dict(self.counts),
                "source": source,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            with open(self.tmp["meta.json"], "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2, ensure_ascii=False)
                f.write("\n")
        except OSError as e:
            raise storage_error(e, self.out_dir) from e
        for name in self.names:  # meta.json last: its presence marks a complete dataset
            os.replace(self.tmp[name], self.out_dir / name)
        self.finished = True
        return meta

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.finished:
            return
        for f in self.files.values():
            try:
                f.close()
            except OSError:  # the close of a file on a full disk fails too: it goes anyway
                pass
        for path in self.tmp.values():
            path.unlink(missing_ok=True)
        if self.created:
            remove_if_empty(self.out_dir)
        if isinstance(exc, OSError) and not isinstance(exc, PrepareError):
            raise storage_error(exc, self.out_dir) from exc


def write_arrays(out_dir, *, dataset: str, tokenizer, source: dict, arrays: Mapping[str, np.ndarray]) -> dict:
    """A dataset from splits already tokenized in memory (the small corpora)."""
    for split, ids in arrays.items():
        if len(ids) == 0:
            raise PrepareError(f"the {split} split of {dataset} would be empty: the corpus is too small")
    total = sum(len(ids) for ids in arrays.values())
    with DatasetWriter(out_dir, tokenizer, splits=arrays.keys(), expected_tokens=total) as writer:
        for split, ids in arrays.items():
            writer.write(split, ids)
        return writer.finish(dataset=dataset, source=source)


def split_text(text: str, train_fraction: float = 0.9) -> dict[str, str]:
    """nanoGPT's split: the first 90% of the characters train, the rest validate."""
    n = int(len(text) * train_fraction)
    return {"train": text[:n], "val": text[n:]}


def remove_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError:
        pass


def summary(meta: dict, out_dir) -> str:
    tokens = ", ".join(f"{split} {n:,}" for split, n in meta["tokens"].items())
    return f"wrote {out_dir}: {tokens} tokens ({meta['dtype']}, vocab {meta['vocab_size']:,})"


