"""Helpers shared by the prepare scripts: hashing, verified downloads, the atomic dataset writer, CLI glue.

A prepared dataset is a directory holding train.bin and val.bin (flat token ids) and meta.json. The
writer fills preallocated memmaps under temporary names and renames them into place only once
everything succeeded (meta.json last), so a failed run never leaves a partial dataset behind and
never clobbers a good one.
"""
from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping

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


def write_dataset(
    out_dir: str | os.PathLike,
    *,
    dataset: str,
    tokenizer,
    source: dict,
    sizes: Mapping[str, int],
    fill: Callable[[str, np.ndarray], int],
) -> dict:
    """Writes <out_dir>/{train,val}.bin and meta.json atomically; returns the meta.

    sizes: tokens per split, known up front so each .bin is preallocated at its final size.
    fill(split, memmap): writes that split's tokens into the memmap and returns how many it wrote.
    """
    for split, n in sizes.items():
        if n <= 0:
            raise PrepareError(f"the {split} split of {dataset} would be empty: the corpus is too small")
    out_dir = Path(out_dir)
    dtype = token_dtype(tokenizer.vocab_size)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    # pid-unique temporary names: concurrent runs (e.g. DDP ranks preparing on first use) don't collide.
    names = [f"{split}.bin" for split in sizes] + ["meta.json"]
    tmp = {name: out_dir / f"{name}.tmp.{os.getpid()}" for name in names}
    try:
        for split, n in sizes.items():
            arr = np.memmap(tmp[f"{split}.bin"], dtype=dtype, mode="w+", shape=(int(n),))
            written = fill(split, arr)
            if written != n:
                raise RuntimeError(f"{split}: wrote {written} tokens into a file sized for {n}")
            arr.flush()
            del arr
        meta = {
            "dataset": dataset,
            "tokenizer": tokenizer.to_meta(),
            "vocab_size": tokenizer.vocab_size,
            "dtype": dtype.name,
            "tokens": {split: int(n) for split, n in sizes.items()},
            "source": source,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        with open(tmp["meta.json"], "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, ensure_ascii=False)
            f.write("\n")
        for name in names:  # meta.json last: its presence marks a complete dataset
            os.replace(tmp[name], out_dir / name)
    except BaseException:
        for path in tmp.values():
            path.unlink(missing_ok=True)
        if created:
            remove_if_empty(out_dir)
        raise
    return meta


def write_arrays(out_dir, *, dataset: str, tokenizer, source: dict, arrays: Mapping[str, np.ndarray]) -> dict:
    """write_dataset for corpora small enough to tokenize in memory (the char-level ones)."""

    def fill(split: str, out: np.ndarray) -> int:
        out[:] = arrays[split]
        return len(arrays[split])

    sizes = {split: len(ids) for split, ids in arrays.items()}
    return write_dataset(out_dir, dataset=dataset, tokenizer=tokenizer, source=source, sizes=sizes, fill=fill)


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


