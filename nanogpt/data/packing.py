"""Document-aware batches (`data.packing`): rows that start at a document, or documents packed into rows.

`window` (the default) draws random windows of the token stream, nanoGPT's batches: a row starts
anywhere, often mid-document, and runs across document boundaries. The other two modes need a
corpus whose documents are marked by a separator token (GPT-2's `<|endoftext|>`, or meta.json's
"separator"); a document starts at its separator, which then plays the part of nanochat's BOS:

`bos`      every row of block_size + 1 tokens starts at a document start and reads on from there
           (across the boundaries that follow, as a window does). Each epoch visits every document
           start once, in a seeded random order.
`bestfit`  nanochat's packing: each row is filled with whole documents, the largest that still fits
           first; when none fits, the shortest is cropped to fill the row exactly (its rest is
           dropped and counted: the crop rate is tokens dropped / tokens read). No padding.

Both stay a pure function of (seed, split, stream index), like the windows, so a resume needs no
replay and DDP ranks (different stream indices) read different documents: stream index i owns the
documents at positions [i * n, (i + 1) * n) of the epoch's permutation (n = rows per batch for
`bos`, a pool of about POOL_FACTOR batches' worth of tokens for `bestfit`). A `bestfit` batch
chooses from its own pool only, so the documents it leaves out are not read in that epoch (pools
do not overlap; a pool that runs out, which only a pool of one huge document does, reads on into the
next one's).
"""
from __future__ import annotations

import bisect
import functools
import json
import math
import mmap
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nanogpt.errors import UserError

PACKINGS = ("window", "bos", "bestfit")
POOL_FACTOR = 2  # a bestfit batch best-fits from documents of about twice the tokens it needs
SCAN_CHUNK_TOKENS = 8 * 2**20
PERMUTATION_STREAM = 0x9ACC  # a random stream of its own, apart from the windows' draws


def separator_id(meta: dict) -> int | None:
    """The token that marks a document start: meta.json's "separator", else the tokenizer's
    end-of-text token (GPT-2's <|endoftext|>); None for a tokenizer without one (char)."""
    sep = meta.get("separator")
    if isinstance(sep, int) and not isinstance(sep, bool):
        return sep
    if (meta.get("tokenizer") or {}).get("kind") == "gpt2":
        from nanogpt.tokenizer import EOT_ID

        return EOT_ID
    return None


def separator_name(meta: dict, sep: int) -> str:
    kind = (meta.get("tokenizer") or {}).get("kind")
    return f"<|endoftext|> (id {sep})" if kind == "gpt2" and meta.get("separator") is None else f"id {sep}"


def document_starts(split, sep: int) -> np.ndarray:
    """Positions of the separator in a split's tokens (int64, ascending). Each file (flat split or
    llm.c shard) is scanned once per version: for a file of CACHE_MIN_BYTES or more the positions
    are kept beside it (.NAME.docs-SEP.npz, keyed by its size, modification time and inode)."""
    files = _token_files(split)
    if files is None:  # not backed by files we know: scan the array itself
        return _scan(split.tokens, sep, split.release)
    found = [_file_starts(path, offset, count, dtype, sep) + base for path, offset, count, dtype, base in files]
    split.release()
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


CACHE_MIN_BYTES = 64 * 2**20
SETTLE_SECONDS = 2  # a file modified this recently may still change within its timestamp's tick


def _token_files(split):
    """(path, byte offset, token count, dtype, position of its first token in the split) of each
    file behind a split, or None."""
    tokens = split.tokens
    if hasattr(tokens, "parts"):  # nanogpt.data.shards.ShardedTokens
        from nanogpt.data.shards import HEADER_BYTES

        return [(Path(part.filename), HEADER_BYTES, len(part), part.dtype, int(base))
                for part, base in zip(tokens.parts, tokens.offsets)]
    filename = getattr(tokens, "filename", None)
    if filename is None:
        return None
    return [(Path(filename), int(getattr(tokens, "offset", 0)), len(tokens), tokens.dtype, 0)]


def _file_starts(path: Path, offset: int, count: int, dtype, sep: int) -> np.ndarray:
    st = path.stat()
    key = json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "offset": offset,
                      "dtype": np.dtype(dtype).str, "separator": sep})
    record = path.with_name(f".{path.name}.docs-{sep}.npz")
    try:
        with np.load(record) as kept:
            if str(kept["key"]) == key:
                return kept["starts"]
    except (OSError, ValueError, KeyError):
        pass
    tokens = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))
    starts = _scan(tokens, sep, functools.partial(_dontneed, tokens))
    del tokens
    if st.st_size >= CACHE_MIN_BYTES and time.time() - st.st_mtime > SETTLE_SECONDS:
        _keep(record, key, starts)
    return starts


def _scan(tokens, sep: int, release) -> np.ndarray:
    """In chunks, releasing each chunk's pages after it: resident memory stays small."""
    found = []
    for a in range(0, len(tokens), SCAN_CHUNK_TOKENS):
        chunk = np.asarray(tokens[a:a + SCAN_CHUNK_TOKENS])
        found.append(np.flatnonzero(chunk == sep).astype(np.int64) + a)
        release()
    return np.concatenate(found) if found else np.empty(0, dtype=np.int64)


def _dontneed(tokens: np.memmap) -> None:
    mm = getattr(tokens, "_mmap", None)
    if mm is not None and hasattr(mm, "madvise"):
        mm.madvise(mmap.MADV_DONTNEED)


def _keep(record: Path, key: str, starts: np.ndarray) -> None:
    """Atomically (a temp name of this process's: ranks open the same data); where the data folder
    is read-only, nothing is kept."""
    tmp = record.with_name(f"{record.name}.tmp{os.getpid()}.npz")
    try:
        np.savez(tmp, key=np.array(key), starts=starts)
        os.replace(tmp, record)
    except OSError:
        tmp.unlink(missing_ok=True)


def documents(dataset, sep: int) -> dict:
    """Each split's document starts, scanned once per dataset (kept on it)."""
    cached = getattr(dataset, "doc_starts", None)
    if cached is None or cached[0] != sep:
        cached = (sep, {name: document_starts(split, sep) for name, split in dataset.splits.items()})
        dataset.doc_starts = cached
    return cached[1]


def check_documents(dataset, packing: str, doc_mask: bool, block_size: int | None = None) -> dict | None:
    """Refuse, before any work, a packing or a document mask that the data cannot give: no
    separator token, or a split without a document start (or none far enough from its end for a
    bos row). Returns the splits' document starts ({split: array}), None when not needed."""
    if packing == "window" and not doc_mask:
        return None
    what = f"data.packing={packing}" if packing != "window" else "model.doc_mask=true"
    why = ("starts rows at documents" if packing == "bos" else "packs whole documents into rows"
           if packing == "bestfit" else "masks attention at document boundaries")
    fix = ("train with data.packing=window and model.doc_mask=false, or prepare a corpus of documents "
           "(e.g. python prepare/shakespeare_docs.py; GPT-2 corpora such as fineweb and owt have them)")
    sep = separator_id(dataset.meta)
    name = dataset.path.name
    if sep is None:
        kind = (dataset.meta.get("tokenizer") or {}).get("kind")
        raise UserError(f"{what} {why}, but {name} has no document separator (its {kind} tokenizer has "
                        f"no end-of-text token and meta.json no \"separator\"): {fix}")
    starts = {}
    for split_name, found in documents(dataset, sep).items():
        split = dataset.splits[split_name]
        if packing == "bos" and block_size is not None:
            found = found[found <= len(split) - (block_size + 1)]
        if not len(found):
            raise UserError(f"{what} {why}, but the {split_name} split of {name} holds no "
                            f"{separator_name(dataset.meta, sep)}"
                            + (f" at least block_size + 1 = {block_size + 1} tokens before its end"
                               if packing == "bos" and block_size is not None else "")
                            + f": it is not split into documents; {fix}")
        starts[split_name] = documents(dataset, sep)[split_name]
    return starts


@dataclass
class PackedRows:
    """A batch of rows (B, block_size + 1) and what it read: the document starts it used, tokens
    of those documents read and dropped by crops."""
    rows: np.ndarray
    starts: np.ndarray
    read: int
    dropped: int


class _Permutations:
    """One seeded permutation of a split's documents per epoch, the latest few kept."""

    def __init__(self, seed: int, keep: int = 4):
        self.seed, self.keep, self.cache, self.lock = seed, keep, {}, threading.Lock()

    def get(self, split_id: int, purpose: int, epoch: int, n: int) -> np.ndarray:
        key = (split_id, purpose, epoch)
        with self.lock:
            perm = self.cache.get(key)
            if perm is None:
                rng = np.random.default_rng([self.seed, split_id, purpose, epoch, PERMUTATION_STREAM])
                perm = rng.permutation(n)
                self.cache[key] = perm
                while len(self.cache) > self.keep:
                    self.cache.pop(next(iter(self.cache)))
            return perm

    def positions(self, split_id: int, purpose: int, first: int, count: int, n: int) -> np.ndarray:
        """Documents at global positions first .. first + count - 1 (epoch = position // n)."""
        g = np.arange(first, first + count, dtype=np.int64)
        epochs, within = np.divmod(g, n)
        out = np.empty(count, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self.get(split_id, purpose, int(e), n)[within[sel]]
        return out


class BosRows:
    """Rows that start at a document start, each start once per epoch (data.packing=bos)."""

    def __init__(self, splits: dict, starts: dict, block_size: int, batch_size: int, seed: int):
        self.splits, self.row, self.batch_size = splits, block_size + 1, batch_size
        self.starts = {s: a[a <= len(splits[s]) - self.row] for s, a in starts.items()}
        self.perms = _Permutations(seed)

    def rows(self, split: str, split_id: int, stream_index: int, purpose: int = 0) -> PackedRows:
        starts = self.starts[split]
        picks = self.perms.positions(split_id, purpose, stream_index * self.batch_size, self.batch_size,
                                     len(starts))
        chosen = starts[picks]
        rows = self.splits[split].windows(chosen, self.row)
        return PackedRows(rows, chosen, rows.size, 0)


class BestFitRows:
    """nanochat's best-fit packing (data.packing=bestfit), from a pool of documents per batch."""

    def __init__(self, splits: dict, starts: dict, block_size: int, batch_size: int, seed: int):
        self.splits, self.row, self.batch_size = splits, block_size + 1, batch_size
        self.docs = {}  # split: (starts, lengths)
        self.pool = {}  # split: documents per batch's pool
        for s, a in starts.items():
            ends = np.append(a[1:], len(splits[s]))
            lengths = ends - a
            self.docs[s] = (a, lengths)
            mean = float(lengths.mean())
            self.pool[s] = max(batch_size, math.ceil(POOL_FACTOR * batch_size * self.row / mean))
        self.perms = _Permutations(seed)

    def rows(self, split: str, split_id: int, stream_index: int, purpose: int = 0) -> PackedRows:
        starts, lengths = self.docs[split]
        n, k = len(starts), self.pool[split]
        first = stream_index * k
        pool: list[tuple[int, int]] = []  # (length, document), sorted: the search is a bisection

        def refill(at: int) -> int:
            for d in self.perms.positions(split_id, purpose, at, k, n):
                bisect.insort(pool, (int(lengths[d]), int(d)))
            return at + k

        nxt = refill(first)
        out = np.empty((self.batch_size, self.row), dtype=self.splits[split].tokens.dtype)
        used, read, dropped = [], 0, 0
        for r in range(self.batch_size):
            pos = 0
            while pos < self.row:
                if not pool:  # only a pool of documents longer than the rows runs out
                    nxt = refill(nxt)
                space = self.row - pos
                i = bisect.bisect_right(pool, (space, n)) - 1  # the largest document that fits whole
                take_whole = i >= 0
                length, d = pool.pop(i if take_whole else 0)  # else the shortest, cropped
                take = length if take_whole else space
                out[r, pos:pos + take] = self.splits[split].piece(int(starts[d]), take)
                used.append(int(starts[d]))
                read += length
                dropped += length - take
                pos += take
        return PackedRows(out, np.array(used, dtype=np.int64), read, dropped)


PACKERS = {"bos": BosRows, "bestfit": BestFitRows}
