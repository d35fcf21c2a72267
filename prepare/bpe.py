"""GPT-2 BPE over a stream of documents: N worker processes, results in input order, bounded memory.

`encode_batches` takes (key, [text, ...]) items and yields (key, tokens, lengths): the batch's
documents encoded, each with one <|endoftext|> (before it, as llm.c does, or after it, as nanoGPT
does), concatenated into one uint16 array, and each document's token count. At most a few batches
per worker are in flight (multiprocessing's imap would read the whole input ahead), so memory
stays flat however large the corpus.
"""
from __future__ import annotations

import os
from collections import deque
from multiprocessing import get_context
from typing import Any, Iterable, Iterator

import numpy as np

from nanogpt.tokenizer import GPT2Tokenizer

EOT_POSITIONS = ("before", "after")
_worker_tokenizer: GPT2Tokenizer | None = None


def _init_worker(rank_file: str | None) -> None:
    global _worker_tokenizer
    _worker_tokenizer = GPT2Tokenizer(rank_file)  # the parent already validated the rank file


def _encode(texts: list[str], eot: str, threads: int, tokenizer: GPT2Tokenizer | None = None):
    tokenizer = tokenizer or _worker_tokenizer
    docs = tokenizer.encode_batch(texts, num_threads=threads)
    lengths = np.fromiter((len(d) + 1 for d in docs), dtype=np.int64, count=len(docs))
    out = np.empty(int(lengths.sum()), dtype=np.uint16)
    pos = 0
    for doc in docs:
        n = len(doc)
        if eot == "before":
            out[pos] = tokenizer.eot_token
            out[pos + 1:pos + 1 + n] = doc
        else:
            out[pos:pos + n] = doc
            out[pos + n] = tokenizer.eot_token
        pos += n + 1
    return out, lengths


def encode_batches(items: Iterable[tuple[Any, list[str]]], tokenizer: GPT2Tokenizer, num_proc: int = 1,
                   eot: str = "after", in_flight_per_worker: int = 2) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """(key, tokens, lengths) for each (key, texts) of `items`, in order. num_proc > 1: worker
    processes (spawned: safe whatever threads this process runs); 1: this process, with
    tiktoken's own threads."""
    if eot not in EOT_POSITIONS:
        raise ValueError(f"eot must be one of {EOT_POSITIONS}")
    if num_proc <= 1:
        # the CPUs this process may use (a SLURM task's allocation), not the machine's
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        for key, texts in items:
            yield (key, *_encode(texts, eot, threads, tokenizer))
        return
    with get_context("spawn").Pool(num_proc, initializer=_init_worker, initargs=(tokenizer.rank_file,)) as pool:
        pending: deque = deque()
        for key, texts in items:
            pending.append((key, pool.apply_async(_encode, (texts, eot, 1))))
            if len(pending) >= in_flight_per_worker * num_proc:
                key, result = pending.popleft()
                yield (key, *result.get())
        while pending:
            key, result = pending.popleft()
            yield (key, *result.get())
