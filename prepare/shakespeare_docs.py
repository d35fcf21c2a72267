"""Tiny Shakespeare as documents, GPT-2 BPE: one document per speech, <|endoftext|> before each.

The corpus is split at its blank lines (each block is one speech: the speaker's name, then the
lines) and every speech is encoded on its own after an <|endoftext|>, as llm.c and
prepare/fineweb.py write documents: data.packing=bos|bestfit and model.doc_mask=true need such
boundaries (docs/modern.md). The first 90% of the speeches (by characters) train, the rest validate.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python prepare/shakespeare_docs.py`: make `prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from prepare.common import PrepareError, gpt2_tokenizer, run_cli, summary, write_arrays
from prepare.shakespeare_char import URL, load_corpus, parse_args

NAME = "shakespeare_docs"


def speeches(text: str) -> list[str]:
    """The corpus's blocks between blank lines, each without its surrounding newlines."""
    return [block.strip("\n") for block in text.split("\n\n") if block.strip()]


def split_documents(docs: list[str], train_fraction: float = 0.9) -> dict[str, list[str]]:
    """The first documents holding train_fraction of the characters train, the others validate."""
    sizes = np.cumsum([len(d) for d in docs])
    n = int(np.searchsorted(sizes, train_fraction * sizes[-1]))
    return {"train": docs[:n], "val": docs[n:]}


def prepare(out_dir: str | Path, input_path: str | Path | None = None, verify: bool = True,
            url: str = URL, rank_file: str | Path | None = None) -> dict:
    tokenizer = gpt2_tokenizer(rank_file) if input_path is None else None
    text, source = load_corpus(Path(out_dir), input_path, verify, url)
    docs = speeches(text)
    if len(docs) < 2:
        raise PrepareError(f"the corpus {source.get('path', url)} has {len(docs)} blank-line-separated "
                           "block(s): at least 2 documents are needed (one per split)")
    if tokenizer is None:
        tokenizer = gpt2_tokenizer(rank_file)
    arrays = {}
    for split, part in split_documents(docs).items():
        encoded = tokenizer.encode_batch(part)
        arrays[split] = np.concatenate([np.array([tokenizer.eot_token] + ids, dtype=np.int64) for ids in encoded])
    return write_arrays(out_dir, dataset=NAME, tokenizer=tokenizer, source=source, arrays=arrays)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, NAME, __doc__)
    meta = prepare(args.out_dir, args.input, args.verify, args.url, args.rank_file)
    print(summary(meta, args.out_dir))


if __name__ == "__main__":
    run_cli(main)
