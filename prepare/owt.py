"""OpenWebText (or any Hugging Face dataset, or local text files) with GPT-2's BPE, as nanoGPT does it.

Documents are split with `train_test_split(test_size=0.0005, seed=2357, shuffle=True)`, encoded in
parallel with `dataset.map(num_proc=N)` (each followed by <|endoftext|> = 50256), counted, and then
copied batch by batch into memmaps preallocated at their final size: the corpus never sits in
memory as one array. OpenWebText gives ~9B train tokens (~17GB) and ~4M val tokens.

  python prepare/owt.py                                    # openwebtext -> data/owt
  python prepare/owt.py --dataset NAME --column text       # another HF dataset -> data/NAME
  python prepare/owt.py --files a.txt b.txt --out-dir DIR  # one document per file (--lines: per line)
"""
from __future__ import annotations

import argparse
import functools
import os
import sys
from pathlib import Path

if not __package__:  # run as `python prepare/owt.py`: make `prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from tqdm import tqdm

from nanogpt.paths import dataset_dir
from nanogpt.tokenizer import GPT2Tokenizer
from prepare.common import (
    PrepareError,
    gpt2_tokenizer,
    read_text,
    run_cli,
    sha256_file,
    summary,
    token_dtype,
    write_dataset,
)

DEFAULT_DATASET = "openwebtext"
NAME = "owt"


def load_hf(name: str, split: str, column: str, num_proc: int):
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, num_proc=num_proc)
    except Exception as e:  # datasets raises many types: not found, offline, unknown split, scripts...
        raise PrepareError(
            f"could not load the Hugging Face dataset {name!r} (split {split!r}): {type(e).__name__}: {e}. "
            f"Check the name (https://huggingface.co/datasets/{name}) and split, that you are online "
            "(HF_DATASETS_OFFLINE / HF_HUB_OFFLINE unset) or the dataset is in your HF cache, "
            "or prepare local text instead with --files PATH ..."
        ) from None
    if column not in ds.column_names:
        raise PrepareError(f"dataset {name!r} has no column {column!r}; pick one of {ds.column_names} with --column")
    source = {"kind": "hf", "name": name, "split": split, "column": column, "fingerprint": ds._fingerprint}
    return ds.select_columns([column]), source


def load_files(files: list[Path], lines: bool):
    import datasets

    docs, digests = [], []
    for path in files:
        text = read_text(path)
        digests.append(sha256_file(path))
        if lines:
            docs.extend(line for line in text.splitlines() if line.strip())
        else:
            docs.append(text)
    docs = [doc for doc in docs if doc]
    source = {"kind": "file", "path": [str(Path(p).resolve()) for p in files], "sha256": digests, "lines": lines}
    return datasets.Dataset.from_dict({"text": docs}), source


def split_documents(ds, val_fraction: float, seed: int):
    if len(ds) < 2:
        raise PrepareError(f"the corpus has {len(ds)} non-empty document(s); a train/val split needs at least 2")
    try:
        parts = ds.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)
    except ValueError as e:  # e.g. the fraction leaves the train split empty
        raise PrepareError(f"cannot split {len(ds)} documents with --val-fraction {val_fraction}: {e}") from None
    parts["val"] = parts.pop("test")
    return parts


@functools.lru_cache(maxsize=None)
def _worker_tokenizer(rank_file: str | None) -> GPT2Tokenizer:
    return GPT2Tokenizer(rank_file)  # once per worker process; the parent already validated it


def _tokenize_batch(batch: dict, column: str, rank_file: str | None, threads: int) -> dict:
    tokenizer = _worker_tokenizer(rank_file)
    ids = tokenizer.encode_batch(batch[column], num_threads=threads)
    for doc in ids:
        doc.append(tokenizer.eot_token)  # the document separator the model learns to predict
    return {"ids": ids, "len": [len(doc) for doc in ids]}


def tokenize(parts, column: str, tokenizer: GPT2Tokenizer, num_proc: int):
    import datasets

    value = token_dtype(tokenizer.vocab_size).name  # store ids compactly in the Arrow cache too
    threads = 1 if num_proc > 1 else os.cpu_count() or 1  # parallel processes, or tiktoken's threads
    features = datasets.Features({"ids": datasets.Sequence(datasets.Value(value)), "len": datasets.Value("int64")})
    return parts.map(
        _tokenize_batch,
        batched=True,
        # A module-level function plus a rank-file path: cheap to pickle to workers and to fingerprint.
        fn_kwargs={"column": column, "rank_file": tokenizer.rank_file, "threads": threads},
        remove_columns=[column],
        features=features,
        num_proc=num_proc if num_proc > 1 else None,
        desc="tokenizing",
    )


def prepare(out_dir: str | Path, *, dataset: str = DEFAULT_DATASET, column: str = "text", split: str = "train",
            files: list[str | Path] | None = None, lines: bool = False, val_fraction: float = 0.0005,
            seed: int = 2357, num_proc: int | None = None, rank_file: str | Path | None = None,
            batch_size: int = 1024) -> dict:
    if not 0 < val_fraction < 1:
        raise PrepareError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    num_proc = num_proc or max(1, (os.cpu_count() or 2) // 2)
    tokenizer = gpt2_tokenizer(rank_file)  # fail fast, before any download
    if files:
        ds, source = load_files([Path(f) for f in files], lines)
        column, name = "text", Path(out_dir).name
    else:
        ds, source = load_hf(dataset, split, column, num_proc)
        name = NAME if dataset == DEFAULT_DATASET else dataset
    if len(ds) == 0:
        where = ", ".join(source["path"]) if files else f"{dataset} ({split})"
        raise PrepareError(f"the corpus is empty: {where} holds no text")
    source.update(val_fraction=val_fraction, seed=seed)
    tokenized = tokenize(split_documents(ds, val_fraction, seed), column, tokenizer, num_proc)
    # A first pass over the per-document lengths sizes each memmap exactly.
    sizes = {s: int(np.asarray(tokenized[s].with_format("numpy")["len"]).sum(dtype=np.uint64)) for s in tokenized}

    def fill(split_name: str, out: np.ndarray) -> int:
        docs = tokenized[split_name].with_format("numpy", columns=["ids"])
        pos = 0
        batches = docs.iter(batch_size=batch_size)
        total = -(-len(docs) // batch_size)
        for batch in tqdm(batches, total=total, desc=f"writing {split_name}.bin", disable=None):
            chunk = np.concatenate(batch["ids"])
            out[pos:pos + len(chunk)] = chunk
            pos += len(chunk)
        return pos

    return write_dataset(out_dir, dataset=name, tokenizer=tokenizer, source=source, sizes=sizes, fill=fill)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, help="default: data/owt, or data/<dataset> for another --dataset")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--dataset", default=DEFAULT_DATASET, help="Hugging Face dataset name (default: %(default)s)")
    source.add_argument("--files", nargs="+", type=Path, metavar="PATH", help="local UTF-8 text files instead")
    parser.add_argument("--column", default="text", help="the dataset's text column (default: %(default)s)")
    parser.add_argument("--split", default="train", help="the dataset split to load (default: %(default)s)")
    parser.add_argument("--lines", action="store_true", help="with --files: one document per non-blank line")
    parser.add_argument("--val-fraction", type=float, default=0.0005, help="share of documents for val")
    parser.add_argument("--seed", type=int, default=2357, help="seed of the train/val shuffle")
    parser.add_argument("--num-proc", type=int, help="worker processes (default: half the CPU cores)")
    parser.add_argument("--rank-file", help="local GPT-2 rank file (r50k_base.tiktoken) for offline use")
    args = parser.parse_args(argv)
    if args.lines and not args.files:
        parser.error("--lines only applies to --files")
    if args.out_dir is None:
        if args.files:
            parser.error("--files needs --out-dir (so a local corpus never replaces data/owt)")
        name = NAME if args.dataset == DEFAULT_DATASET else args.dataset.replace("/", "_")
        args.out_dir = dataset_dir(name)
    meta = prepare(args.out_dir, dataset=args.dataset, column=args.column, split=args.split, files=args.files,
                   lines=args.lines, val_fraction=args.val_fraction, seed=args.seed, num_proc=args.num_proc,
                   rank_file=args.rank_file)
    print(summary(meta, args.out_dir))


if __name__ == "__main__":
    run_cli(main)
