"""The offline default corpus: the Python docs that ship with the interpreter, character-level.

`pydoc_data.topics.topics` (~465k characters of reference documentation) is part of the standard
library, so this needs no download and takes about a second; the launcher runs it on first use.
The text depends on the Python version, which meta.json records.
"""
from __future__ import annotations

import argparse
import hashlib
import platform
import sys
from pathlib import Path

if not __package__:  # run as `python prepare/pydoc_char.py`: make `prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from nanogpt.paths import dataset_dir
from nanogpt.tokenizer import CharTokenizer
from prepare.common import run_cli, split_text, summary, write_arrays

NAME = "pydoc_char"


def corpus_text() -> str:
    from pydoc_data.topics import topics

    # Sorted keys: the same text (hence the same dataset) on every run of a given Python.
    return "\n".join(topics[key] for key in sorted(topics))


def prepare(out_dir: str | Path) -> dict:
    text = corpus_text()
    tokenizer = CharTokenizer.from_text(text)
    arrays = {split: np.array(tokenizer.encode(part)) for split, part in split_text(text).items()}
    source = {
        "kind": "python",
        "name": "pydoc_data.topics",
        "python": platform.python_version(),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
    }
    return write_arrays(out_dir, dataset=NAME, tokenizer=tokenizer, source=source, arrays=arrays)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=dataset_dir(NAME), help="default: %(default)s")
    args = parser.parse_args(argv)
    print(summary(prepare(args.out_dir), args.out_dir))


if __name__ == "__main__":
    run_cli(main)
