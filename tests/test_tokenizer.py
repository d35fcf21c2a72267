"""Tokenizers: char-level round trips and errors; GPT-2 BPE against tiktoken's r50k_base, offline."""
from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest
import tiktoken

from nanogpt import tokenizer as tk
from nanogpt.tokenizer import CharTokenizer, GPT2Tokenizer, TokenizerError, load_tokenizer

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
RANK_FILE = SHARED / "data" / "gpt2_bpe" / "gpt2.tiktoken"
needs_ranks = pytest.mark.skipif(not RANK_FILE.is_file(), reason=f"no GPT-2 rank file at {RANK_FILE}")

SAMPLE = (
    "Hello world! It's 2024: naïve café, Ünïcödé, 日本語, emoji 🤖🚀,\n\ttabs   and  spaces, "
    "numbers 1234567 3.14159, code `x += y**2;` and a literal <|endoftext|> marker."
)


# ---------------------------------------------------------------- char-level

def test_char_round_trip_and_sorted_vocab():
    text = "to be, or not to be: that is the question\n"
    tok = CharTokenizer.from_text(text)
    assert tok.chars == sorted(set(text))
    assert tok.vocab_size == len(set(text))
    assert tok.eot_token is None
    ids = tok.encode(text)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.encode("\n ") == [0, 1]  # ids are positions in the sorted alphabet
    assert tok.decode(ids) == text


def test_char_decode_accepts_numpy_ids():
    np = pytest.importorskip("numpy")
    tok = CharTokenizer.from_text("abc")
    assert tok.decode(np.array([2, 0, 1], dtype=np.uint16)) == "cab"


def test_char_unknown_characters_are_named():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match=r"2 character\(s\).*'x', 'z'"):
        tok.encode("abxcz")


def test_char_out_of_range_ids_are_rejected():
    tok = CharTokenizer.from_text("abc")
    for bad in (3, -1):
        with pytest.raises(ValueError, match=f"token id {bad} is out of range"):
            tok.decode([0, bad])


@pytest.mark.parametrize("chars", [[], ["b", "a"], ["a", "a"], ["ab"]])
def test_char_rejects_malformed_alphabets(chars):
    with pytest.raises(ValueError):
        CharTokenizer(chars)


def test_char_meta_round_trip():
    tok = CharTokenizer.from_text("hello, world")
    meta = tok.to_meta()
    assert meta == {"kind": "char", "chars": sorted(set("hello, world"))}
    for spec in (meta, {"dataset": "x", "tokenizer": meta}):  # the entry, or the whole meta.json
        again = load_tokenizer(spec)
        assert isinstance(again, CharTokenizer) and again.chars == tok.chars


def test_load_tokenizer_rejects_unknown_kinds():
    with pytest.raises(TokenizerError, match="unknown tokenizer"):
        load_tokenizer({"tokenizer": {"kind": "sentencepiece"}})


# ---------------------------------------------------------------- GPT-2 BPE

def reference_encoding() -> tiktoken.Encoding:
    """r50k_base built independently: our own parse of the rank file, tiktoken's own pattern."""
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = {}
    for line in RANK_FILE.read_bytes().splitlines():
        token, rank = line.split()
        ranks[base64.b64decode(token)] = int(rank)
    return tiktoken.Encoding(name="r50k_ref", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 50256})


@needs_ranks
def test_gpt2_matches_r50k_base():
    tok = GPT2Tokenizer(RANK_FILE)
    ref = reference_encoding()
    assert tok.encode(SAMPLE) == ref.encode(SAMPLE, allowed_special={"<|endoftext|>"})
    assert tok.encode_batch([SAMPLE, "a b"]) == ref.encode_ordinary_batch([SAMPLE, "a b"])
    # Known GPT-2 ids, independent of any construction.
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262]
    assert tok.encode("<|endoftext|>") == [50256]


@needs_ranks
def test_gpt2_round_trip_and_properties():
    tok = GPT2Tokenizer(RANK_FILE)
    assert tok.vocab_size == 50257 and tok.eot_token == 50256
    assert tok.to_meta() == {"kind": "gpt2"}
    assert tok.rank_file == str(RANK_FILE.resolve())
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    [ids] = tok.encode_batch([SAMPLE])
    assert tok.decode(ids) == SAMPLE


@needs_ranks
def test_gpt2_batch_encoding_keeps_special_text_ordinary():
    tok = GPT2Tokenizer(RANK_FILE)
    [ids] = tok.encode_batch(["a <|endoftext|> b"], num_threads=1)
    assert 50256 not in ids  # corpus text never smuggles in a separator
    assert tok.decode(ids) == "a <|endoftext|> b"


@needs_ranks
def test_gpt2_rank_file_from_environment(monkeypatch):
    monkeypatch.setenv(tk.RANKS_ENV, str(RANK_FILE))
    assert GPT2Tokenizer().rank_file == str(RANK_FILE.resolve())
    assert isinstance(load_tokenizer({"tokenizer": {"kind": "gpt2"}}), GPT2Tokenizer)


def test_gpt2_missing_rank_file_is_reported(monkeypatch, tmp_path):
    missing = tmp_path / "nope.tiktoken"
    with pytest.raises(TokenizerError, match="does not exist"):
        GPT2Tokenizer(missing)
    monkeypatch.setenv(tk.RANKS_ENV, str(missing))  # an explicit setting never falls back silently
    with pytest.raises(TokenizerError, match="nope.tiktoken does not exist"):
        GPT2Tokenizer()


@needs_ranks
def test_gpt2_rank_file_hash_mismatch(tmp_path):
    corrupt = tmp_path / "gpt2.tiktoken"
    shutil.copyfile(RANK_FILE, corrupt)
    with open(corrupt, "ab") as f:
        f.write(b"IQ== 50256\n")
    with pytest.raises(TokenizerError, match=f"sha256 .*expected {tk.R50K_SHA256}"):
        GPT2Tokenizer(corrupt)


def _offline(monkeypatch):
    monkeypatch.delenv(tk.RANKS_ENV, raising=False)

    def no_network(name):
        raise ConnectionError("offline")

    monkeypatch.setattr(tk.tiktoken, "get_encoding", no_network)


@needs_ranks
def test_gpt2_offline_falls_back_to_shared_rank_file(monkeypatch):
    _offline(monkeypatch)
    tok = GPT2Tokenizer()
    assert tok.rank_file == str(tk.SHARED_RANK_FILE)
    assert tok.encode("Hello world") == [15496, 995]


def test_gpt2_offline_without_any_rank_file_says_what_to_do(monkeypatch, tmp_path):
    _offline(monkeypatch)
    monkeypatch.setattr(tk, "SHARED_RANK_FILE", tmp_path / "absent.tiktoken")
    with pytest.raises(TokenizerError, match=f"offline.*rank_file.*{tk.RANKS_ENV}"):
        GPT2Tokenizer()


# ---------------------------------------------------------------- bytes per token (bits per byte)

def test_char_token_bytes_are_utf8_lengths():
    tok = CharTokenizer.from_text("aé日🤖")
    assert tok.chars == ["a", "é", "日", "🤖"] and tok.token_bytes() == [1, 2, 3, 4]
    ids = tok.encode("日a🤖éa")
    assert sum(tok.token_bytes()[i] for i in ids) == len("日a🤖éa".encode("utf-8")) == 11


@needs_ranks
def test_gpt2_token_bytes_sum_to_the_decoded_texts_bytes():
    tok = GPT2Tokenizer(RANK_FILE)
    table = tok.token_bytes()
    assert len(table) == 50257 and table[50256] == 0 and min(table[:50256]) >= 1
    text = SAMPLE.replace("<|endoftext|>", "")
    ids = tok.encode_batch([text])[0]
    assert sum(table[i] for i in ids) == len(text.encode("utf-8"))
    assert table[tok.encode(" the")[0]] == 4 
    robot = tok.encode("🤖")  # 4 bytes in tokens that are not whole characters
    assert len(robot) > 1 and sum(table[i] for i in robot) == 4
