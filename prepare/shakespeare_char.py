"""Tiny Shakespeare, character-level: nanoGPT's shakespeare_char (vocab 65, 1,003,854 / 111,540 tokens).

The corpus comes from --input PATH, else a copy cached in the output dir by an earlier run, else a
download; offline, the read-only copy in shared/data next to the repo stands in for the download.
Every copy is checked against the corpus's sha256 (--no-verify accepts other text given with --input).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

if not __package__:  # run as `python prepare/shakespeare_char.py`: make `prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from nanogpt.paths import SHARED_DATA, dataset_dir
from nanogpt.tokenizer import CharTokenizer
from prepare.common import (
    DownloadError,
    PrepareError,
    check_sha256,
    download,
    read_text,
    run_cli,
    sha256_file,
    split_text,
    summary,
    write_arrays,
)

NAME = "shakespeare_char"
URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHARED_COPY = SHARED_DATA / "tinyshakespeare" / "input.txt"


def load_corpus(out_dir: Path, input_path: str | Path | None = None, verify: bool = True,
                url: str = URL) -> tuple[str, dict]:
    """Returns the corpus text and the meta "source" entry describing where it came from."""
    if input_path is not None:
        path = Path(input_path)
        text = read_text(path)  # first: a missing file is reported as such, not as a hash mismatch
        digest = (check_sha256(path, SHA256, "this is not the tiny Shakespeare corpus; "
                               "pass --no-verify to prepare a different text")
                  if verify else sha256_file(path))
        return text, {"kind": "file", "path": str(path.resolve()), "sha256": digest}

    cached = Path(out_dir) / "input.txt"
    if not (cached.is_file() and sha256_file(cached) == SHA256):
        try:
            download(url, cached, SHA256)
        except DownloadError as e:
            if not SHARED_COPY.is_file():
                raise PrepareError(f"{e}; pass a local copy with --input PATH") from None
            check_sha256(SHARED_COPY, SHA256)  # offline fallback, verified like a download
            return read_text(SHARED_COPY), {"kind": "file", "path": str(SHARED_COPY), "sha256": SHA256}
    return read_text(cached), {"kind": "url", "url": url, "sha256": SHA256}


def prepare(out_dir: str | Path, input_path: str | Path | None = None, verify: bool = True,
            url: str = URL) -> dict:
    text, source = load_corpus(Path(out_dir), input_path, verify, url)
    if not text:
        raise PrepareError(f"the corpus {source.get('path', url)} is empty")
    # nanoGPT builds the vocabulary from the whole text, so every val character is encodable.
    tokenizer = CharTokenizer.from_text(text)
    arrays = {split: np.array(tokenizer.encode(part)) for split, part in split_text(text).items()}
    return write_arrays(out_dir, dataset=NAME, tokenizer=tokenizer, source=source, arrays=arrays)


def parse_args(argv: list[str] | None, name: str, doc: str) -> argparse.Namespace:
    """The command line both Shakespeare scripts share."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=dataset_dir(name), help="default: %(default)s")
    parser.add_argument("--input", type=Path, help="a local copy of the corpus instead of downloading it")
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="accept an --input whose sha256 is not tiny Shakespeare's (another text)")
    parser.add_argument("--url", default=URL, help="where to download the corpus from (default: %(default)s)")
    if name != "shakespeare_char":  # the BPE ones
        parser.add_argument("--rank-file", help="local GPT-2 rank file (r50k_base.tiktoken) for offline use")
    args = parser.parse_args(argv)
    if not args.verify and args.input is None:
        parser.error("--no-verify only applies to --input (a download is always verified)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, NAME, __doc__)
    print(summary(prepare(args.out_dir, args.input, args.verify, args.url), args.out_dir))


if __name__ == "__main__":
    run_cli(main)
