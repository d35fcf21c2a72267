"""llm.c's token shard format, read and written: what llm.c, modded-nanogpt and prepare/fineweb.py use.

A shard is one file: a header of 256 little-endian int32 (magic 20240520, version 1, the number of
tokens, then zeros) followed by that many uint16 GPT-2 token ids. A split is a sorted list of such
files (`*_train_000001.bin`, ...); `ShardedTokens` presents them as one flat, memory-mapped array
so that training windows read across shard boundaries just as they read across documents.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import BinaryIO

import numpy as np

from nanogpt.errors import UserError

FORMAT = "llmc_shards"  # meta.json "format" of a dataset made of shards ("flat": train.bin / val.bin)
# Present while prepare/fineweb.py works on a folder: a folder with it is not a finished dataset.
PREPARE_MARKER = ".prepare-in-progress.json"
MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
TOKEN_DTYPE = np.dtype("<u2")
MAX_TOKENS = 2**31 - 1  # the count is an int32
# llm.c's names: fineweb_train_000001.bin, edu_fineweb_val_000000.bin, ...
SHARD_NAME = re.compile(r"^(?P<prefix>.*?)_?(?P<split>train|val)_(?P<index>\d+)\.bin$")


def header(n_tokens: int) -> bytes:
    if not 0 <= n_tokens <= MAX_TOKENS:
        raise ValueError(f"a shard holds at most {MAX_TOKENS:,} tokens, not {n_tokens:,}")
    h = np.zeros(HEADER_INTS, dtype="<i4")
    h[:3] = (MAGIC, VERSION, n_tokens)
    return h.tobytes()


def read_header(path: Path) -> int:
    """The token count of a shard, after checking its header against the file's size."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
        size = path.stat().st_size
    except OSError as e:
        raise UserError(f"cannot read token shard {path}: {e.strerror or e}") from e
    fix = "it is not an llm.c GPT-2 token shard; prepare it again (python prepare/fineweb.py) or remove it"
    if len(raw) < HEADER_BYTES:
        raise UserError(f"token shard {path} is {len(raw)} bytes, shorter than the {HEADER_BYTES}-byte "
                        f"header: {fix}")
    magic, version, count = (int(v) for v in np.frombuffer(raw, dtype="<i4", count=3))
    if magic != MAGIC:
        raise UserError(f"token shard {path} has magic number {magic}, expected {MAGIC} (llm.c's GPT-2 "
                        f"format): {fix}")
    if version != VERSION:
        raise UserError(f"token shard {path} has version {version}; only version {VERSION} (uint16 GPT-2 "
                        f"tokens) is supported: {fix}")
    expected = HEADER_BYTES + count * TOKEN_DTYPE.itemsize
    if count < 0 or size != expected:
        raise UserError(f"token shard {path} is {size:,} bytes but its header says {count:,} tokens "
                        f"({expected:,} bytes): the file is truncated or corrupt; {fix}")
    return count


def write_shard(path: Path, tokens: np.ndarray) -> None:
    """One whole shard (tests and small data; prepare/fineweb.py streams with ShardFile)."""
    with open(path, "wb") as f:
        f.write(header(len(tokens)))
        f.write(np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).tobytes())


class ShardFile:
    """A shard written incrementally with ordinary writes (a full disk is an OSError, never a
    SIGBUS as through a memmap); the header's count is filled in by close()."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.count = 0
        self._f: BinaryIO = open(self.path, "wb")
        self._f.write(header(0))

    def write(self, tokens: np.ndarray) -> None:
        if self.count + len(tokens) > MAX_TOKENS:
            raise ValueError(f"{self.path} would exceed {MAX_TOKENS:,} tokens")
        self._f.write(np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE).tobytes())
        self.count += len(tokens)

    def close(self) -> None:
        """Finish the file: header, then flushed to disk (fsync), so a completed shard survives a crash."""
        self._f.seek(0)
        self._f.write(header(self.count))
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()

    def abort(self) -> None:
        self._f.close()
        self.path.unlink(missing_ok=True)


def find_shards(directory: Path) -> dict[str, list[Path]]:
    """llm.c shards in a directory, by split, sorted by index: {"train": [...], "val": [...]}."""
    found: dict[str, list[tuple[int, Path]]] = {}
    for p in Path(directory).iterdir():
        m = SHARD_NAME.match(p.name)
        if m and p.is_file():
            found.setdefault(m["split"], []).append((int(m["index"]), p))
    return {split: [p for _, p in sorted(items)] for split, items in found.items()}


def llmc_meta(directory: Path, found: dict[str, list[Path]]) -> dict:
    """meta.json's content for a folder of llm.c shards brought without one (llm.c's own output)."""
    from nanogpt.tokenizer import GPT2Tokenizer

    counts = {split: sum(read_header(p) for p in paths) for split, paths in found.items()}
    return {"dataset": Path(directory).name, "format": FORMAT, "tokenizer": {"kind": "gpt2"},
            "vocab_size": GPT2Tokenizer.vocab_size, "dtype": TOKEN_DTYPE.name, "tokens": counts,
            "shards": {split: [p.name for p in paths] for split, paths in found.items()},
            "source": {"kind": "llmc_shards", "path": str(Path(directory).resolve())}}


class ShardedTokens:
    """Several shards as one read-only 1-D token array: len(), slicing with a step of 1, `itemsize`.
    Each shard stays memory-mapped (resident memory does not grow with the corpus)."""

    itemsize = TOKEN_DTYPE.itemsize
    dtype = TOKEN_DTYPE

    def __init__(self, paths: list[Path], counts: list[int] | None = None):
        if not paths:
            raise ValueError("no shards")
        counts = counts if counts is not None else [read_header(p) for p in paths]
        self.paths = [Path(p) for p in paths]
        self.parts = [np.memmap(p, dtype=TOKEN_DTYPE, mode="r", offset=HEADER_BYTES, shape=(n,))
                      for p, n in zip(self.paths, counts) if n > 0]
        self.offsets = np.cumsum([0] + [len(a) for a in self.parts])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, key):
        if not isinstance(key, slice):
            i = int(key) + (len(self) if int(key) < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} tokens")
            k = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self.parts[k][i - self.offsets[k]]
        start, stop, step = key.indices(len(self))
        if step != 1:
            raise ValueError("ShardedTokens slices take a step of 1")
        if stop <= start:
            return np.empty(0, dtype=TOKEN_DTYPE)
        first = int(np.searchsorted(self.offsets, start, side="right")) - 1
        last = int(np.searchsorted(self.offsets, stop - 1, side="right")) - 1
        if first == last:  # the common case: a window inside one shard, no copy
            base = self.offsets[first]
            return self.parts[first][start - base:stop - base]
        pieces = []
        for k in range(first, last + 1):
            lo = max(start, self.offsets[k]) - self.offsets[k]
            hi = min(stop, self.offsets[k + 1]) - self.offsets[k]
            pieces.append(self.parts[k][lo:hi])
        return np.concatenate(pieces)

    def advise(self, advice: int) -> None:
        """madvise every shard's mapping (MADV_RANDOM, MADV_DONTNEED: see nanogpt.data.batches.Split)."""
        for part in self.parts:
            mm = getattr(part, "_mmap", None)
            if mm is not None and hasattr(mm, "madvise"):
                mm.madvise(advice)

