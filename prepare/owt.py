"""OpenWebText (or any Hugging Face text dataset, or local text files) with GPT-2's BPE, as nanoGPT does it.

OpenWebText is read from the Parquet files of a pinned revision of Skylion007/openwebtext (its main
branch holds only a loading script, which `datasets` >= 4 no longer runs); meta.json records the
commit that revision resolved to, the files and the document count (8,013,769 expected).

Documents are split with nanoGPT's `train_test_split(test_size=0.0005, seed=2357, shuffle=True)`,
encoded in N processes (each document followed by <|endoftext|> = 50256) and appended to
train.bin / val.bin as they come: the corpus never sits in memory. OpenWebText gives ~9B train
tokens (~17GB) and ~4M val tokens. With --streaming nothing is converted to Arrow first; the split
is then a seeded coin per document (the same val fraction, not nanoGPT's exact documents).

  python prepare/owt.py                                           # OpenWebText -> data/owt
  python prepare/owt.py --data-files 'owt/plain_text/*.parquet'   # a local copy of its files
  python prepare/owt.py --dataset ID [--name C] [--column text]   # another dataset -> data/ID
  python prepare/owt.py --files a.txt b.txt --out-dir DIR         # one document per file (--lines: per line)
"""
from __future__ import annotations

import argparse
import functools
import itertools
import os
import sys
from pathlib import Path

if not __package__:  # run as `python prepare/owt.py`: make `prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from nanogpt.paths import dataset_dir
from nanogpt.run.metrics import progress  # a bar on a terminal, periodic lines in a log
from prepare import hf
from prepare.bpe import encode_batches
from prepare.common import DatasetWriter, PrepareError, gpt2_tokenizer, run_cli, summary

OWT_ID = "Skylion007/openwebtext"
OWT_DOCUMENTS = 8_013_769  # nanoGPT's count, and the original loading script's
NAME = "owt"


def prepare(out_dir: str | Path, *, spec: hf.HFSpec | None = None, files: list[str | Path] | None = None,
            lines: bool = False, streaming: bool = False, val_fraction: float = 0.0005, seed: int = 2357, num_proc: int | None = None,
            rank_file: str | Path | None = None, batch_size: int = 1024, name: str | None = None) -> dict:
    """Tokenizes `spec` (default: OpenWebText), or local text `files`, into out_dir; returns the meta."""
    if not 0 < val_fraction < 1:
        raise PrepareError(f"--val-fraction must be between 0 and 1, got {val_fraction}")
    out_dir = Path(out_dir)
    num_proc = num_proc or max(1, (os.cpu_count() or 2) // 2)
    load_tokenizer = functools.cache(lambda: gpt2_tokenizer(rank_file))
    if files:
        spec = files_spec(files, lines, streaming)
        name = name or out_dir.name
    spec = spec or hf.HFSpec(dataset=OWT_ID, revision=hf.KNOWN_PARQUET_REVISIONS[OWT_ID])
    name = name or (NAME if spec.dataset == OWT_ID else out_dir.name)
    with hf.open_corpus(spec, num_proc=num_proc, scratch_parent=out_dir.parent,
                        before_download=load_tokenizer) as corpus:  # a bad input is named first
        check_document_count(spec, corpus.num_documents)
        if corpus.num_documents == 0:
            raise PrepareError(f"the corpus is empty: {describe(corpus)} holds no text")
        if not spec.streaming and corpus.num_documents < 2:
            raise PrepareError(f"the corpus has {corpus.num_documents} non-empty document(s); a train/val "
                               "split needs at least 2")
        tokenizer = load_tokenizer()
        expected = corpus.text_bytes // 5 if corpus.text_bytes else None  # BPE: < 5 bytes of text per token
        with DatasetWriter(out_dir, tokenizer, expected_tokens=expected) as writer:
            if spec.streaming:
                docs = write_streamed(corpus, writer, tokenizer, val_fraction, seed, num_proc, batch_size)
                split = {"kind": "seeded coin per document", "val_fraction": val_fraction, "seed": seed}
            else:
                docs = write_split(corpus, writer, tokenizer, val_fraction, seed, num_proc, batch_size)
                split = {"kind": "datasets train_test_split (nanoGPT's)", "val_fraction": val_fraction,
                         "seed": seed, "shuffle": True}
            if sum(docs.values()) == 0:
                raise PrepareError(f"the corpus is empty: {describe(corpus)} holds no text")
            if spec.streaming:
                check_document_count(spec, sum(docs.values()))
            source = {**corpus.provenance, "documents": sum(docs.values()), "split": {**split, "documents": docs}}
            return writer.finish(dataset=name, source=source)


def files_spec(files: list[str | Path], lines: bool, streaming: bool = False) -> hf.HFSpec:
    for f in files:
        if not Path(f).is_file():
            raise PrepareError(f"input file {f} does not exist (check the path)")
    return hf.HFSpec(dataset=None, data_files=[str(Path(f).resolve()) for f in files], builder="text",
                     sample_by="line" if lines else "document", streaming=streaming)


def write_split(corpus: hf.Corpus, writer: DatasetWriter, tokenizer, val_fraction: float, seed: int,
                num_proc: int, batch_size: int) -> dict[str, int]:
    """nanoGPT's split (a seeded permutation of the documents), then each split's tokens in that order."""
    n = corpus.num_documents
    try:
        parts = corpus.dataset.train_test_split(test_size=val_fraction, seed=seed, shuffle=True)
    except ValueError as e:  # e.g. the fraction leaves the train split empty
        raise PrepareError(f"cannot split {n} documents with --val-fraction {val_fraction}: {e}") from None
    parts = {"train": parts["train"], "val": parts["test"]}
    column = corpus.spec.column
    items = itertools.chain.from_iterable(
        ((split, [t for t in batch[column] if t is not None]) for batch in parts[split].iter(batch_size=batch_size))
        for split in ("train", "val"))
    docs = {"train": 0, "val": 0}
    with progress(total=n, unit="doc", desc="tokenizing") as bar:
        for split, tokens, lengths in encode_batches(items, tokenizer, num_proc, eot="after"):
            writer.write(split, tokens)
            docs[split] += len(lengths)
            bar.update(len(lengths))
    return docs


def write_streamed(corpus: hf.Corpus, writer: DatasetWriter, tokenizer, val_fraction: float, seed: int,
                   num_proc: int, batch_size: int) -> dict[str, int]:
    """One pass in the stream's order: each document goes to val with probability val_fraction
    (one seeded generator draws a number per document, whatever the batch size)."""
    rng = np.random.default_rng(seed)
    items = ((rng.random(len(texts)) < val_fraction, texts) for texts in hf.iter_texts(corpus, batch_size))
    docs = {"train": 0, "val": 0}
    with progress(total=corpus.num_documents, unit="doc", desc="tokenizing") as bar:
        for is_val, tokens, lengths in encode_batches(items, tokenizer, num_proc, eot="after"):
            in_val = np.repeat(is_val, lengths)
            writer.write("train", tokens[~in_val])
            writer.write("val", tokens[in_val])
            docs["val"] += int(is_val.sum())
            docs["train"] += int((~is_val).sum())
            bar.update(len(lengths))
    return docs


def check_document_count(spec: hf.HFSpec, n: int | None) -> None:
    if spec.dataset == OWT_ID and spec.split == "train" and n is not None and n != OWT_DOCUMENTS:
        print(f"warning: OpenWebText has {OWT_DOCUMENTS:,} documents but {hf.describe_spec(spec)} holds {n:,}: "
              "a partial or different copy (losses will not match nanoGPT's)", file=sys.stderr)


def describe(corpus: hf.Corpus) -> str:
    return hf.describe_spec(corpus.spec)


def source_line(meta: dict) -> str:
    s = meta["source"]
    parts = [f"{s.get('documents', 0):,} documents of {s.get('dataset') or 'local files'}"]
    if s.get("config"):
        parts.append(f"config {s['config']}")
    if s.get("revision") or s.get("commit"):
        parts.append(f"revision {s.get('revision') or '-'} (commit {s.get('commit') or 'unknown'})")
    parts.append(f"{len(s.get('files', []))} file(s)")
    return "from " + ", ".join(parts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, help="default: data/owt, or data/<dataset> for another --dataset")
    hf.add_hf_arguments(parser, dataset=OWT_ID)
    parser.add_argument("--files", nargs="+", type=Path, metavar="PATH", help="local UTF-8 text files instead "
                        "(one document per file)")
    parser.add_argument("--lines", action="store_true", help="with --files: one document per non-blank line")
    parser.add_argument("--val-fraction", type=float, default=0.0005, help="share of documents for val")
    parser.add_argument("--seed", type=int, default=2357, help="seed of the train/val split")
    parser.add_argument("--num-proc", type=int, help="tokenizer processes (default: half the CPU cores)")
    parser.add_argument("--rank-file", help="local GPT-2 rank file (r50k_base.tiktoken) for offline use")
    args = parser.parse_args(argv)
    if args.lines and not args.files:
        parser.error("--lines only applies to --files")
    if args.files and args.data_files:
        parser.error("--files and --data-files are two ways to give local files: use one")
    if args.out_dir is None:
        if args.files:
            parser.error("--files needs --out-dir (so a local corpus never replaces data/owt)")
        args.out_dir = dataset_dir(NAME if args.dataset == OWT_ID else args.dataset.replace("/", "_"))
    spec = None if args.files else hf.spec_from_args(
        args, default_revision=hf.KNOWN_PARQUET_REVISIONS.get(args.dataset))
    meta = prepare(args.out_dir, spec=spec, files=args.files, lines=args.lines, streaming=args.streaming,
                   val_fraction=args.val_fraction,
                   seed=args.seed, num_proc=args.num_proc, rank_file=args.rank_file)
    print(summary(meta, args.out_dir))
    print(source_line(meta))


if __name__ == "__main__":
    run_cli(main)
