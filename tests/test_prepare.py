"""Dataset preparation: the on-disk format, every script on small local data, the real Shakespeare
counts, and bad input (clear error, exit code 2, nothing half-written, a good dataset left intact)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanogpt.tokenizer import CharTokenizer, load_tokenizer
from prepare import common, owt, pydoc_char, shakespeare, shakespeare_char
from prepare.common import DownloadError, PrepareError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
RANK_FILE = SHARED / "data" / "gpt2_bpe" / "gpt2.tiktoken"
needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"no corpus at {SHAKESPEARE}")
needs_ranks = pytest.mark.skipif(not RANK_FILE.is_file(), reason=f"no GPT-2 rank file at {RANK_FILE}")
EOT = 50256
SMALL_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 3


def read_dataset(out_dir: Path) -> tuple[dict, np.ndarray, np.ndarray]:
    meta = json.loads((out_dir / "meta.json").read_text())
    train, val = (np.fromfile(out_dir / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val"))
    assert meta["tokens"] == {"train": len(train), "val": len(val)}
    assert set(meta) >= {"dataset", "tokenizer", "vocab_size", "dtype", "tokens", "source", "created"}
    assert not [p.name for p in out_dir.iterdir() if ".tmp." in p.name or ".part." in p.name]
    return meta, train, val


def run_script(name: str, *args, module: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs a prepare script the way a user does; HF offline so nothing waits on the network."""
    cmd = [sys.executable, "-m", f"prepare.{name}"] if module else [sys.executable, f"prepare/{name}.py"]
    full_env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([*cmd, *map(str, args)], cwd=REPO, env=full_env, capture_output=True, text=True,
                          timeout=120)


def assert_failed(proc: subprocess.CompletedProcess, *phrases: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    for phrase in phrases:
        assert phrase in proc.stderr, proc.stderr


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- common helpers

def test_token_dtype():
    assert common.token_dtype(65) == np.uint16
    assert common.token_dtype(50257) == np.uint16
    assert common.token_dtype(100277) == np.uint32


def test_download_keeps_only_a_verified_file(tmp_path):
    src = write(tmp_path / "src.txt", "hello")
    good = common.sha256_file(src)
    dest = common.download(src.as_uri(), tmp_path / "out" / "input.txt", good)
    assert dest.read_text() == "hello"

    bad_dest = tmp_path / "bad" / "input.txt"
    with pytest.raises(PrepareError, match=f"sha256 {good}, expected {'0' * 64}"):
        common.download(src.as_uri(), bad_dest, "0" * 64)
    assert not bad_dest.parent.exists()  # neither the bad file nor the folder made for it is kept

    with pytest.raises(DownloadError, match="could not download"):
        common.download((tmp_path / "missing.txt").as_uri(), tmp_path / "x" / "input.txt", good)


def test_failed_write_leaves_the_previous_dataset_intact(tmp_path):
    tok = CharTokenizer.from_text("ab")
    arrays = {"train": np.array([0, 1, 0]), "val": np.array([1])}
    first = common.write_arrays(tmp_path, dataset="t", tokenizer=tok, source={"kind": "python"}, arrays=arrays)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    with pytest.raises(KeyboardInterrupt):
        with common.DatasetWriter(tmp_path, tok) as writer:
            writer.write("train", np.ones(5))
            raise KeyboardInterrupt  # even an interrupt mid-write cleans up
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert read_dataset(tmp_path)[0] == first


def test_failed_write_into_a_new_dir_removes_it(tmp_path):
    with pytest.raises(PrepareError, match="val split of t would be empty"):
        with common.DatasetWriter(tmp_path / "new", CharTokenizer(["a"])) as writer:
            writer.write("train", np.zeros(3))
            writer.finish(dataset="t", source={})  # nothing written to val: refused before any rename
    assert not (tmp_path / "new").exists()


def test_empty_split_is_refused_before_writing(tmp_path):
    tok = CharTokenizer(["a"])
    with pytest.raises(PrepareError, match="val split of t would be empty"):
        common.write_arrays(tmp_path / "d", dataset="t", tokenizer=tok, source={},
                            arrays={"train": np.zeros(3), "val": np.zeros(0)})
    assert not (tmp_path / "d").exists()


# ---------------------------------------------------------------- pydoc_char (the offline default)

def test_pydoc_char(tmp_path):
    meta = pydoc_char.prepare(tmp_path)
    meta2, train, val = read_dataset(tmp_path)
    assert meta == meta2
    text = pydoc_char.corpus_text()
    assert len(text) > 400_000
    assert meta["dataset"] == "pydoc_char" and meta["dtype"] == "uint16"
    assert meta["source"]["kind"] == "python" and meta["source"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert len(train) == int(len(text) * 0.9) and len(train) + len(val) == len(text)
    tok = load_tokenizer(meta)
    assert meta["vocab_size"] == tok.vocab_size == len(set(text))
    assert tok.decode(train) + tok.decode(val) == text


def test_pydoc_char_is_deterministic_and_runs_as_a_script(tmp_path):
    pydoc_char.prepare(tmp_path / "a")
    proc = run_script("pydoc_char", env={"NANOGPT_DATA_ROOT": str(tmp_path / "root")})  # default --out-dir
    assert proc.returncode == 0, proc.stderr
    for split in ("train", "val"):
        a, b = (tmp_path / d / f"{split}.bin" for d in ("a", "root/pydoc_char"))
        assert a.read_bytes() == b.read_bytes()
    proc = run_script("pydoc_char", "--out-dir", tmp_path / "m", module=True)
    assert proc.returncode == 0, proc.stderr
    meta, train, _ = read_dataset(tmp_path / "m")
    assert f"train {len(train):,}" in proc.stdout and meta["dataset"] == "pydoc_char"


# ---------------------------------------------------------------- Shakespeare, char-level and BPE

def test_shakespeare_char_on_local_text(tmp_path):
    src = write(tmp_path / "small.txt", SMALL_TEXT)
    meta = shakespeare_char.prepare(tmp_path / "out", src, verify=False)
    _, train, val = read_dataset(tmp_path / "out")
    assert meta["source"] == {"kind": "file", "path": str(src), "sha256": common.sha256_file(src)}
    assert (len(train), len(val)) == (int(len(SMALL_TEXT) * 0.9), len(SMALL_TEXT) - int(len(SMALL_TEXT) * 0.9))
    tok = load_tokenizer(meta)
    assert tok.decode(train) + tok.decode(val) == SMALL_TEXT


@needs_shakespeare
def test_shakespeare_char_real_counts(tmp_path):
    meta = shakespeare_char.prepare(tmp_path, SHAKESPEARE)
    _, train, val = read_dataset(tmp_path)
    assert (len(train), len(val)) == (1_003_854, 111_540)
    assert meta["vocab_size"] == 65 and meta["dtype"] == "uint16"
    assert meta["source"]["sha256"] == shakespeare_char.SHA256
    tok = load_tokenizer(meta)
    assert tok.decode(train[:14]) == "First Citizen:"
    assert tok.decode(train) + tok.decode(val) == SHAKESPEARE.read_text()


@needs_shakespeare
def test_shakespeare_download_is_verified_and_cached(tmp_path):
    meta = shakespeare_char.prepare(tmp_path / "d", url=SHAKESPEARE.as_uri())
    assert meta["source"] == {"kind": "url", "url": SHAKESPEARE.as_uri(), "sha256": shakespeare_char.SHA256}
    assert common.sha256_file(tmp_path / "d" / "input.txt") == shakespeare_char.SHA256
    # The cached copy is used next time: an unreachable URL no longer matters.
    meta = shakespeare_char.prepare(tmp_path / "d", url=(tmp_path / "gone.txt").as_uri())
    assert meta["tokens"] == {"train": 1_003_854, "val": 111_540}


@needs_shakespeare
def test_shakespeare_offline_falls_back_to_the_shared_copy(tmp_path, monkeypatch):
    unreachable = (tmp_path / "gone.txt").as_uri()
    meta = shakespeare_char.prepare(tmp_path / "a", url=unreachable)
    assert meta["source"]["path"] == str(SHAKESPEARE) and meta["tokens"]["val"] == 111_540
    monkeypatch.setattr(shakespeare_char, "SHARED_COPY", tmp_path / "absent.txt")
    with pytest.raises(PrepareError, match="could not download .*--input PATH"):
        shakespeare_char.prepare(tmp_path / "b", url=unreachable)
    assert not (tmp_path / "b").exists()


@needs_ranks
def test_shakespeare_bpe_on_local_text(tmp_path):
    src = write(tmp_path / "small.txt", SMALL_TEXT)
    meta = shakespeare.prepare(tmp_path / "out", src, verify=False, rank_file=RANK_FILE)
    _, train, val = read_dataset(tmp_path / "out")
    assert meta["tokenizer"] == {"kind": "gpt2"} and meta["vocab_size"] == 50257 and meta["dtype"] == "uint16"
    tok = load_tokenizer(meta, rank_file=RANK_FILE)
    cut = int(len(SMALL_TEXT) * 0.9)
    assert tok.decode(train) == SMALL_TEXT[:cut] and tok.decode(val) == SMALL_TEXT[cut:]
    assert train[:3].tolist() == [5962, 22307, 25]  # "First Citizen:"


@needs_ranks
@needs_shakespeare
def test_shakespeare_bpe_real_counts(tmp_path):
    proc = run_script("shakespeare", "--out-dir", tmp_path, "--input", SHAKESPEARE, "--rank-file", RANK_FILE)
    assert proc.returncode == 0, proc.stderr
    meta, train, val = read_dataset(tmp_path)
    assert (len(train), len(val)) == (301_966, 36_059)
    assert meta["dataset"] == "shakespeare" and int(train.max()) < 50257
    assert EOT not in train and EOT not in val


# ---------------------------------------------------------------- owt pipeline on local files

DOCS = [f"Document {i}: " + " ".join(["the quick brown fox", "jumps over", "the lazy dog"][: 1 + i % 3]) * (1 + i % 4)
        for i in range(40)]


def split_docs(tok, ids: np.ndarray) -> list[str]:
    assert ids[-1] == EOT  # every document, the last included, ends with the separator
    cuts = np.flatnonzero(ids == EOT)
    return [tok.decode(doc) for doc in np.split(ids, cuts + 1)[:-1] for doc in [doc[:-1]]]


@pytest.fixture
def corpus(tmp_path) -> list[Path]:
    (tmp_path / "corpus").mkdir()
    return [write(tmp_path / "corpus" / f"doc{i:02d}.txt", doc) for i, doc in enumerate(DOCS)]


@needs_ranks
def test_owt_files_pipeline(tmp_path, corpus):
    meta = owt.prepare(tmp_path / "a", files=corpus, val_fraction=0.1, num_proc=2, rank_file=RANK_FILE)
    _, train, val = read_dataset(tmp_path / "a")
    tok = load_tokenizer(meta, rank_file=RANK_FILE)
    train_docs, val_docs = split_docs(tok, train), split_docs(tok, val)
    assert len(val_docs) == 4 and len(train_docs) == 36
    assert sorted(train_docs + val_docs) == sorted(DOCS)
    assert meta["dataset"] == "a" and meta["source"]["kind"] == "file" and meta["source"]["split"]["seed"] == 2357
    assert meta["source"]["sha256"] == {str(p.resolve()): common.sha256_file(p) for p in corpus}
    assert meta["source"]["documents"] == 40 and meta["source"]["split"]["documents"] == {"train": 36, "val": 4}

    # nanoGPT's split exactly: the documents (and order) datasets' seeded train_test_split picks.
    import datasets

    expected = datasets.Dataset.from_dict({"text": DOCS}).train_test_split(test_size=0.1, seed=2357, shuffle=True)
    assert val_docs == expected["test"]["text"] and train_docs == expected["train"]["text"]

    # Deterministic: a second run (single process, tiny write batches) gives the same bytes.
    owt.prepare(tmp_path / "b", files=corpus, val_fraction=0.1, num_proc=1, rank_file=RANK_FILE, batch_size=3)
    for split in ("train", "val"):
        assert (tmp_path / "a" / f"{split}.bin").read_bytes() == (tmp_path / "b" / f"{split}.bin").read_bytes()
    owt.prepare(tmp_path / "c", files=corpus, val_fraction=0.1, seed=1, num_proc=1, rank_file=RANK_FILE)
    assert (tmp_path / "c" / "val.bin").read_bytes() != (tmp_path / "a" / "val.bin").read_bytes()


@needs_ranks
def test_owt_lines_mode_cli(tmp_path):
    src = write(tmp_path / "lines.txt", "\n".join(DOCS[:20]) + "\n\n   \n")  # blank lines are not documents
    proc = run_script("owt", "--files", src, "--lines", "--out-dir", tmp_path / "o", "--val-fraction", "0.25",
                      "--num-proc", "1", "--rank-file", RANK_FILE)
    assert proc.returncode == 0, proc.stderr
    meta, train, val = read_dataset(tmp_path / "o")
    tok = load_tokenizer(meta, rank_file=RANK_FILE)
    assert sorted(split_docs(tok, train) + split_docs(tok, val)) == sorted(DOCS[:20])
    assert len(split_docs(tok, val)) == 5


# ---------------------------------------------------------------- bad input, end to end

def test_missing_input_file(tmp_path):
    for script in ("shakespeare_char", "shakespeare"):
        proc = run_script(script, "--input", tmp_path / "nope.txt", "--out-dir", tmp_path / script)
        assert_failed(proc, "nope.txt does not exist")
        assert not (tmp_path / script).exists()
    proc = run_script("owt", "--files", tmp_path / "nope.txt", "--out-dir", tmp_path / "owt")
    assert_failed(proc, "nope.txt does not exist")
    assert not (tmp_path / "owt").exists()


@needs_shakespeare
def test_hash_mismatch_keeps_the_good_dataset(tmp_path):
    out = tmp_path / "sc"
    assert run_script("shakespeare_char", "--input", SHAKESPEARE, "--out-dir", out).returncode == 0
    good = {p.name: p.read_bytes() for p in out.iterdir()}
    other = write(tmp_path / "other.txt", SMALL_TEXT)
    assert_failed(run_script("shakespeare_char", "--input", other, "--out-dir", out), "sha256", "--no-verify")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == good
    # With --no-verify the same file is accepted, and replaces the dataset.
    assert run_script("shakespeare_char", "--input", other, "--no-verify", "--out-dir", out).returncode == 0
    assert read_dataset(out)[0]["vocab_size"] == len(set(SMALL_TEXT))


def test_download_hash_mismatch(tmp_path):
    bad = write(tmp_path / "bad.txt", "<html>rate limited</html>")
    proc = run_script("shakespeare_char", "--url", bad.as_uri(), "--out-dir", tmp_path / "d")
    assert_failed(proc, f"expected {shakespeare_char.SHA256}", "discarded")
    assert not (tmp_path / "d").exists()


def test_empty_corpus(tmp_path):
    empty = write(tmp_path / "empty.txt", "")
    assert_failed(run_script("shakespeare_char", "--input", empty, "--no-verify", "--out-dir", tmp_path / "a"),
                  "is empty")
    blank = write(tmp_path / "blank.txt", "\n \n")
    proc = run_script("owt", "--files", empty, blank, "--lines", "--out-dir", tmp_path / "b")
    assert_failed(proc, "the corpus is empty", "empty.txt")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_corpus_too_small_to_split(tmp_path):
    tiny = write(tmp_path / "tiny.txt", "abc")  # 90% of 3 characters: 2 train, 1 val; 1 is too few
    assert_failed(run_script("shakespeare_char", "--input", write(tmp_path / "one.txt", "a"), "--no-verify",
                             "--out-dir", tmp_path / "a"), "train split", "too small")
    assert run_script("shakespeare_char", "--input", tiny, "--no-verify", "--out-dir", tmp_path / "b").returncode == 0
    assert_failed(run_script("owt", "--files", tiny, "--out-dir", tmp_path / "c"), "at least 2")


def test_unknown_hf_dataset_fails_fast_offline(tmp_path):
    proc = run_script("owt", "--dataset", "no-such-user/no-such-dataset", "--out-dir", tmp_path / "o")
    assert_failed(proc, "'no-such-user/no-such-dataset'", "--data-files")
    assert not (tmp_path / "o").exists()


def test_corrupt_rank_file(tmp_path):
    ranks = write(tmp_path / "gpt2.tiktoken", "IQ== 0\n")
    proc = run_script("shakespeare", "--input", write(tmp_path / "t.txt", SMALL_TEXT), "--no-verify",
                      "--rank-file", ranks, "--out-dir", tmp_path / "o")
    assert_failed(proc, "sha256", "r50k_base")
    assert not (tmp_path / "o").exists()


def test_usage_errors(tmp_path):
    proc = run_script("owt", "--files", tmp_path / "x.txt")
    assert proc.returncode == 2 and "--files needs --out-dir" in proc.stderr
    proc = run_script("shakespeare_char", "--no-verify")
    assert proc.returncode == 2 and "--no-verify only applies to --input" in proc.stderr
