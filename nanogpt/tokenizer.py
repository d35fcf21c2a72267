"""Tokenizers: character-level (tiny corpora) and GPT-2 byte-level BPE (through tiktoken).

A prepared dataset records its tokenizer in meta.json; `load_tokenizer(meta)` rebuilds it, so
training, evaluation and sampling always decode with the tokenizer the data was made with.

GPT-2 BPE works offline: besides tiktoken's own download cache it can load the r50k_base rank file
from a local path (argument, NANOGPT_GPT2_RANKS, or the shared data folder next to the repo),
verified against the same sha256 tiktoken checks.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Iterable, Sequence

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from nanogpt.errors import UserError
from nanogpt.paths import SHARED_DATA

# GPT-2's pre-tokenization regex, as tiktoken_ext.openai_public.r50k_pat_str defines it.
R50K_PAT_STR = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# sha256 of r50k_base.tiktoken, the hash tiktoken itself checks after downloading it.
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
EOT = "<|endoftext|>"
EOT_ID = 50256
RANKS_ENV = "NANOGPT_GPT2_RANKS"
SHARED_RANK_FILE = SHARED_DATA / "gpt2_bpe" / "gpt2.tiktoken"


class TokenizerError(UserError, RuntimeError):
    """A tokenizer could not be built (missing or corrupt rank file, unknown kind)."""


class CharTokenizer:
    """Maps each character of a fixed, sorted alphabet to its index."""

    eot_token = None  # char datasets have no document separator

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if not chars:
            raise ValueError("CharTokenizer needs at least one character")
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer chars must be single-character strings")
        if chars != sorted(set(chars)):
            raise ValueError("CharTokenizer chars must be sorted and unique (use CharTokenizer.from_text)")
        self.chars = chars
        self._stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        stoi = self._stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            missing = sorted(set(text) - stoi.keys())
            shown = ", ".join(repr(c) for c in missing[:20]) + (", ..." if len(missing) > 20 else "")
            raise ValueError(
                f"{len(missing)} character(s) not in the vocabulary of this char tokenizer: {shown}"
            ) from None

    def decode(self, ids: Iterable[int]) -> str:
        chars, n = self.chars, len(self.chars)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < n:  # a negative id would silently index from the end
                raise ValueError(f"token id {i} is out of range for vocab_size {n}")
            out.append(chars[i])
        return "".join(out)

    def to_meta(self) -> dict:
        return {"kind": "char", "chars": list(self.chars)}

    def token_bytes(self) -> list[int]:
        """UTF-8 bytes of each id's text (bits per byte: nanogpt.evals.loss)."""
        return [len(c.encode("utf-8")) for c in self.chars]

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _encoding_from_rank_file(path: str) -> tiktoken.Encoding:
    if not os.path.isfile(path):
        raise TokenizerError(f"GPT-2 rank file {path} does not exist")
    actual = sha256_file(path)
    if actual != R50K_SHA256:
        raise TokenizerError(
            f"GPT-2 rank file {path} has sha256 {actual}, expected {R50K_SHA256} (r50k_base.tiktoken); "
            "the file is corrupt or not GPT-2's: fetch it again from "
            "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
        )
    ranks = load_tiktoken_bpe(path, expected_hash=R50K_SHA256)
    return tiktoken.Encoding(
        name="gpt2", pat_str=R50K_PAT_STR, mergeable_ranks=ranks, special_tokens={EOT: EOT_ID}
    )


def _resolve_encoding(rank_file: str | os.PathLike | None) -> tuple[tiktoken.Encoding, str | None]:
    """Returns the encoding and the local rank file it came from (None: tiktoken's own copy)."""
    explicit = rank_file if rank_file is not None else os.environ.get(RANKS_ENV) or None
    if explicit is not None:
        path = str(Path(explicit).expanduser().resolve())
        return _encoding_from_rank_file(path), path
    try:
        return tiktoken.get_encoding("gpt2"), None
    except Exception as online_error:  # offline: requests/urllib errors, or a read-only cache
        if SHARED_RANK_FILE.is_file():
            path = str(SHARED_RANK_FILE)
            return _encoding_from_rank_file(path), path
        raise TokenizerError(
            f"could not load the GPT-2 BPE ranks: tiktoken.get_encoding('gpt2') failed ({online_error}) "
            f"and there is no local copy at {SHARED_RANK_FILE}. Pass a local r50k_base.tiktoken file "
            f"(GPT2Tokenizer(rank_file=...), or --rank-file in the prepare scripts) or set {RANKS_ENV}=PATH"
        ) from online_error


class GPT2Tokenizer:
    """GPT-2's byte-level BPE (r50k_base): 50,257 ids, `<|endoftext|>` = 50256."""

    def __init__(self, rank_file: str | os.PathLike | None = None):
        self.enc, self.rank_file = _resolve_encoding(rank_file)
        if self.enc.n_vocab != EOT_ID + 1 or self.enc.eot_token != EOT_ID:
            raise TokenizerError(f"expected GPT-2's vocabulary of {EOT_ID + 1}, got {self.enc.n_vocab}")

    vocab_size = EOT_ID + 1
    eot_token = EOT_ID

    def encode(self, text: str) -> list[int]:
        # A literal "<|endoftext|>" in a prompt means the separator, as in nanoGPT's sample.py.
        return self.enc.encode(text, allowed_special={EOT})

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        # Ordinary encoding: corpus text that happens to contain "<|endoftext|>" stays plain text.
        return self.enc.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode([int(i) for i in ids])

    def to_meta(self) -> dict:
        return {"kind": "gpt2"}

    def token_bytes(self) -> list[int]:
        """Bytes of each id's text: a BPE token is a byte string, so the decoded text of a
        sequence has their sum (before UTF-8 repair). <|endoftext|> separates documents and is
        no text: 0 bytes (nanochat's convention; its loss is left out of bits per byte)."""
        return [len(self.enc.decode_single_token_bytes(i)) for i in range(EOT_ID)] + [0]

    def __repr__(self) -> str:
        return f"GPT2Tokenizer(rank_file={self.rank_file!r})"


def load_tokenizer(meta: dict, rank_file: str | os.PathLike | None = None) -> CharTokenizer | GPT2Tokenizer:
    """Rebuilds a tokenizer from a meta.json dict, or from its "tokenizer" entry alone."""
    spec = meta.get("tokenizer", meta)
    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "char":
        return CharTokenizer(spec["chars"])
    if kind == "gpt2":
        return GPT2Tokenizer(rank_file)
    raise TokenizerError(f"unknown tokenizer spec {spec!r}: expected kind 'char' or 'gpt2'")
