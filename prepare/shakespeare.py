"""Tiny Shakespeare with GPT-2's BPE: nanoGPT's shakespeare dataset (301,966 / 36,059 tokens).

Same corpus and 90/10 character split as shakespeare_char; each part is then encoded on its own.
"""
from __future__ import annotations

import sys
from pathlib import Path

if not __package__:  # run as `python prepare/shakespeare.py`: make `prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from prepare.common import PrepareError, gpt2_tokenizer, run_cli, split_text, summary, write_arrays
from prepare.shakespeare_char import URL, load_corpus, parse_args

NAME = "shakespeare"


def prepare(out_dir: str | Path, input_path: str | Path | None = None, verify: bool = True,
            url: str = URL, rank_file: str | Path | None = None) -> dict:
    # before a download: fail fast without the BPE ranks; after a local --input's checks: its error first
    tokenizer = gpt2_tokenizer(rank_file) if input_path is None else None
    text, source = load_corpus(Path(out_dir), input_path, verify, url)
    if not text:
        raise PrepareError(f"the corpus {source.get('path', url)} is empty")
    if tokenizer is None:
        tokenizer = gpt2_tokenizer(rank_file)
    arrays = {split: np.array(tokenizer.encode_batch([part])[0]) for split, part in split_text(text).items()}
    return write_arrays(out_dir, dataset=NAME, tokenizer=tokenizer, source=source, arrays=arrays)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, NAME, __doc__)
    meta = prepare(args.out_dir, args.input, args.verify, args.url, args.rank_file)
    print(summary(meta, args.out_dir))


if __name__ == "__main__":
    run_cli(main)
