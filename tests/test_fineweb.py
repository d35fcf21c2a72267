"""llm.c shards (nanogpt/data/shards.py) and prepare/fineweb.py on Parquet files the tests write: the
shard rule, streaming or not, a prepare killed (SIGKILL) or failed and then resumed byte for byte,
and the pre-tokenized shards served through a stand-in for the hub."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from nanogpt.data import shards
from nanogpt.data.batches import TokenDataset
from nanogpt.errors import UserError
from prepare import fineweb, hf
from prepare.common import PrepareError
from test_prepare import EOT, RANK_FILE, REPO, needs_ranks
from test_prepare_hf import make_docs, write_parquet_layout

SHARD, VAL = 2000, 3000  # tokens: small shards, so a small corpus makes many


def shard_tokens(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype="<u2", offset=shards.HEADER_BYTES)


def read_split(out: Path, split: str) -> list[np.ndarray]:
    meta = json.loads((out / "meta.json").read_text())
    return [shard_tokens(out / name) for name in meta["shards"][split]]


def files_of(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "meta.json"}


def comparable_meta(out: Path) -> dict:
    meta = json.loads((out / "meta.json").read_text())
    meta["source"].pop("streaming")  # how the files were read, not what was written
    return {k: v for k, v in meta.items() if k not in ("created", "dataset")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("fineweb")
    docs = make_docs(1500, seed=1)
    write_parquet_layout(root, docs, n_files=3, folder="sample/10BT")
    return root / "sample" / "10BT", docs


def spec_for(folder: Path, streaming: bool = True) -> hf.HFSpec:
    return hf.HFSpec(dataset=fineweb.FINEWEB_EDU, data_files=[str(folder / "*.parquet")], streaming=streaming)


def run(out: Path, folder: Path, streaming: bool = True, num_proc: int = 1, **kw) -> dict:
    return fineweb.prepare(out, spec=spec_for(folder, streaming), shard_tokens=SHARD, val_tokens=VAL,
                           num_proc=num_proc, rank_file=RANK_FILE, batch_size=kw.pop("batch_size", 64), **kw)


@pytest.fixture(scope="module")
def reference(corpus, tmp_path_factory) -> Path:
    """One uninterrupted prepare of the corpus (streamed, one process)."""
    out = tmp_path_factory.mktemp("ref") / "fw"
    run(out, corpus[0])
    return out


# ---------------------------------------------------------------- llm.c's format

def test_llmc_shards_read_back_token_for_token(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.integers(0, 50257, n).astype(np.uint16) for n in (500, 300, 0, 700)]
    shards.write_shard(tmp_path / "fineweb_val_000000.bin", parts[0])
    for i, p in enumerate(parts[1:], start=1):
        shards.write_shard(tmp_path / f"fineweb_train_{i:06d}.bin", p)
    raw = (tmp_path / "fineweb_train_000001.bin").read_bytes()
    assert np.frombuffer(raw[:12], "<i4").tolist() == [20240520, 1, 300] and len(raw) == 1024 + 600
    ds = TokenDataset(tmp_path)  # llm.c's own output: no meta.json needed
    assert ds.meta["format"] == "llmc_shards" and ds.vocab_size == 50257
    assert ds.meta["tokens"] == {"val": 500, "train": 1000}
    train = ds.splits["train"].tokens
    expected = np.concatenate(parts[1:])
    assert len(train) == 1000 and np.array_equal(train[:], expected)
    for start in (0, 250, 299, 300, 990):  # windows inside a shard and across the boundaries
        assert np.array_equal(train[start:start + 10], expected[start:start + 10])
    windows = ds.splits["train"].windows(np.array([295, 0, 985]), 15)
    assert np.array_equal(windows[0], expected[295:310]) and windows.shape == (3, 15)
    assert np.array_equal(ds.splits["val"].tokens[:], parts[0])


def test_a_malformed_shard_is_a_clear_error(tmp_path):
    good = np.arange(100, dtype=np.uint16)
    shards.write_shard(tmp_path / "fineweb_val_000000.bin", good)
    bad = tmp_path / "fineweb_train_000001.bin"
    header = np.zeros(256, "<i4")
    header[:3] = (20240521, 1, 100)
    bad.write_bytes(header.tobytes() + good.tobytes())
    with pytest.raises(UserError, match=r"fineweb_train_000001.bin has magic number 20240521, expected 20240520"):
        TokenDataset(tmp_path)
    header[:3] = (20240520, 2, 100)
    bad.write_bytes(header.tobytes() + good.tobytes())
    with pytest.raises(UserError, match="version 2; only version 1"):
        shards.read_header(bad)
    header[:3] = (20240520, 1, 100)
    bad.write_bytes(header.tobytes() + good[:60].tobytes())
    with pytest.raises(UserError, match="header says 100 tokens .* truncated or corrupt"):
        shards.read_header(bad)
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="shorter than the 1024-byte header"):
        shards.read_header(bad)


# ---------------------------------------------------------------- prepare/fineweb.py

@needs_ranks
def test_shards_follow_llmc_with_a_val_split_that_does_not_overlap(reference, corpus):
    _, docs = corpus
    tok = fineweb.gpt2_tokenizer(RANK_FILE)
    stream = [[EOT] + tok.encode_batch([d], 1)[0] for d in docs]  # llm.c: EOT before each document
    flat = np.concatenate(stream)
    val, train = read_split(reference, "val"), read_split(reference, "train")
    assert [len(v) for v in val] == [VAL] and np.array_equal(val[0], flat[:VAL])
    # the document cut at the val boundary does not go on into train
    ends = np.cumsum([len(s) for s in stream])
    cut_doc = int(np.searchsorted(ends, VAL, side="left"))
    rest = flat[ends[cut_doc]:] if ends[cut_doc] > VAL else flat[VAL:]
    assert np.array_equal(np.concatenate(train), rest)
    assert all(len(t) == SHARD for t in train[:-1]) and 0 < len(train[-1]) <= SHARD
    meta = json.loads((reference / "meta.json").read_text())
    assert meta["format"] == "llmc_shards" and meta["source"]["documents"] == len(docs)
    assert meta["shards"]["val"] == ["edu_fineweb_val_000000.bin"]
    assert meta["shards"]["train"][0] == "edu_fineweb_train_000001.bin"
    assert meta["split"]["val_tokens"] == VAL and "no text is in both" in meta["split"]["rule"]
    assert not (reference / shards.PREPARE_MARKER).exists()
    ds = TokenDataset(reference)
    assert len(ds.splits["train"]) == len(rest) and ds.meta["tokens"]["val"] == VAL


@needs_ranks
def test_streamed_or_not_and_any_number_of_processes_give_the_same_bytes(reference, corpus, tmp_path):
    run(tmp_path / "b", corpus[0], streaming=False, num_proc=2, batch_size=37)
    assert files_of(tmp_path / "b") == files_of(reference)


@pytest.mark.slow
@needs_ranks
def test_a_killed_prepare_resumes_to_the_same_bytes(tmp_path):
    """SIGKILL a real prepare after two finished shards; the same command then resumes."""
    docs = make_docs(12_000, seed=2)
    write_parquet_layout(tmp_path / "src", docs, n_files=4, folder="data")
    folder = tmp_path / "src" / "data"
    args = [sys.executable, "prepare/fineweb.py", "--data-files", str(folder / "*.parquet"), "--shard-tokens",
            str(SHARD * 4), "--val-tokens", str(VAL), "--num-proc", "1", "--rank-file", str(RANK_FILE)]
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    fineweb.prepare(tmp_path / "ref", spec=spec_for(folder), shard_tokens=SHARD * 4, val_tokens=VAL, num_proc=1,
                    rank_file=RANK_FILE)  # uninterrupted, as the command runs it
    out = tmp_path / "out"
    proc = subprocess.Popen([*args, "--out-dir", str(out)], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads((out / shards.PREPARE_MARKER).read_text())["shards"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the prepare finished before it could be killed"
    assert not (out / "meta.json").exists()
    with pytest.raises(UserError, match="did not finish .* run the same `python prepare/out.py ...` command again"):
        TokenDataset(out)  # an unfinished prepare never looks like a dataset
    again = subprocess.run([*args, "--out-dir", str(out)], cwd=REPO, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert files_of(out) == files_of(tmp_path / "ref") and comparable_meta(out) == comparable_meta(tmp_path / "ref")


@needs_ranks
def test_a_failed_prepare_keeps_its_finished_shards_and_resumes(reference, corpus, tmp_path, monkeypatch):
    """A full disk at the fourth shard: a clear error, the three finished shards kept, no partial
    file, no meta.json; once there is room the same call resumes (streamed and not)."""
    for streaming in (True, False):
        out = tmp_path / f"out{streaming}"
        real_close, closes = shards.ShardFile.close, []

        def failing_close(self):
            closes.append(self.path)
            if len(closes) == 4:
                raise OSError(errno.ENOSPC, "No space left on device")
            real_close(self)

        monkeypatch.setattr(shards.ShardFile, "close", failing_close)
        with pytest.raises(PrepareError, match="No space left on device while writing .*edu_fineweb_train_000003.bin"):
            run(out, corpus[0], streaming=streaming, batch_size=50)
        monkeypatch.setattr(shards.ShardFile, "close", real_close)
        assert sorted(p.name for p in out.iterdir()) == [shards.PREPARE_MARKER, "edu_fineweb_train_000001.bin",
                                                        "edu_fineweb_train_000002.bin", "edu_fineweb_val_000000.bin"]
        run(out, corpus[0], streaming=streaming, batch_size=50)
        assert files_of(out) == files_of(reference) and comparable_meta(out) == comparable_meta(reference)


@needs_ranks
def test_resuming_refuses_other_settings_and_a_changed_source(corpus, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(fineweb.ShardSink, "finish", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        run(out, corpus[0])
    monkeypatch.undo()
    with pytest.raises(PrepareError, match="unfinished prepare of other settings"):
        fineweb.prepare(out, spec=spec_for(corpus[0]), shard_tokens=SHARD * 2, val_tokens=VAL, rank_file=RANK_FILE)
    # the documents at the resume point are not the ones written before
    changed = tmp_path / "changed"
    write_parquet_layout(changed, make_docs(1500, seed=9), n_files=3, folder="sample/10BT")
    progress = json.loads((out / shards.PREPARE_MARKER).read_text())
    progress["settings"]["data_files"] = [str(changed / "sample" / "10BT" / "*.parquet")]
    (out / shards.PREPARE_MARKER).write_text(json.dumps(progress))
    with pytest.raises(PrepareError, match="the source changed since this prepare started"):
        run(out, changed / "sample" / "10BT")


@needs_ranks
def test_a_finished_dataset_is_left_alone(reference, corpus, capsys):
    before = files_of(reference)
    assert run(reference, corpus[0])["tokens"] == json.loads((reference / "meta.json").read_text())["tokens"]
    assert "already prepared" in capsys.readouterr().out and files_of(reference) == before
    with pytest.raises(PrepareError, match="already holds a finished dataset made otherwise"):
        fineweb.prepare(reference, spec=spec_for(corpus[0]), shard_tokens=SHARD + 1, val_tokens=VAL, rank_file=RANK_FILE)
    assert files_of(reference) == before


@needs_ranks
def test_a_corpus_smaller_than_the_val_split_leaves_nothing(corpus, tmp_path):
    with pytest.raises(PrepareError, match="not more than --val-tokens 10,000,000: .* lower --val-tokens"):
        fineweb.prepare(tmp_path / "o", spec=spec_for(corpus[0]), shard_tokens=10**7, rank_file=RANK_FILE)
    assert not (tmp_path / "o").exists()


def test_output_names():
    assert fineweb.dataset_name(fineweb.FINEWEB_EDU, "sample-10BT") == "fineweb_edu10B"
    assert fineweb.dataset_name(fineweb.FINEWEB, "sample-10BT") == "fineweb10B"
    assert fineweb.dataset_name(fineweb.FINEWEB, "sample-100BT") == "fineweb100B"
    assert fineweb.dataset_name(fineweb.FINEWEB, "CC-MAIN-2024-10") == "fineweb_CC-MAIN-2024-10"


# ---------------------------------------------------------------- --pretokenized

def fake_hub(tmp_path, monkeypatch, n_train: int = 3) -> dict:
    """kjj0/fineweb10B-gpt2 stand-in: llm.c shards in a folder, served by hub_download."""
    hub = tmp_path / "hub"
    hub.mkdir()
    rng = np.random.default_rng(3)
    content = {}
    for split, name in fineweb.pretokenized_files(n_train):
        content[name] = rng.integers(0, 50257, 400 if split == "val" else 1000).astype(np.uint16)
        shards.write_shard(hub / name, content[name])
    calls = []

    def download(repo_id, filename, revision, local_dir):
        assert (repo_id, revision) == (fineweb.PRETOKENIZED_REPO, "c" * 40)
        calls.append(filename)
        if not (hub / filename).exists():
            raise FileNotFoundError(f"404 {filename}")
        (Path(local_dir) / filename).write_bytes((hub / filename).read_bytes())
        return Path(local_dir) / filename

    monkeypatch.setattr(fineweb, "hub_commit", lambda repo, rev: "c" * 40)
    monkeypatch.setattr(fineweb, "hub_download", download)
    return {"hub": hub, "content": content, "calls": calls}


def test_pretokenized_shards_are_served_as_a_dataset(tmp_path, monkeypatch):
    hub = fake_hub(tmp_path, monkeypatch)
    meta = fineweb.fetch_pretokenized(tmp_path / "fineweb10B", shards_wanted=2)
    assert hub["calls"] == ["fineweb_val_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert meta["tokens"] == {"train": 2000, "val": 400} and meta["source"]["commit"] == "c" * 40
    ds = TokenDataset(tmp_path / "fineweb10B")
    expected = np.concatenate([hub["content"]["fineweb_train_000001.bin"], hub["content"]["fineweb_train_000002.bin"]])
    assert np.array_equal(ds.splits["train"].tokens[:], expected)
    assert not (tmp_path / "fineweb10B" / shards.PREPARE_MARKER).exists()
    # more shards later: the new one is added
    fineweb.fetch_pretokenized(tmp_path / "fineweb10B", shards_wanted=3)
    assert len(TokenDataset(tmp_path / "fineweb10B").splits["train"]) == 3000


def test_a_bad_pretokenized_download_is_removed_and_named(tmp_path, monkeypatch):
    hub = fake_hub(tmp_path, monkeypatch)
    (hub["hub"] / "fineweb_train_000001.bin").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(PrepareError, match="fineweb_train_000001.bin is .* shorter than the 1024-byte header.*removed"):
        fineweb.fetch_pretokenized(tmp_path / "fw", shards_wanted=1)
    assert not (tmp_path / "fw" / "fineweb_train_000001.bin").exists() and not (tmp_path / "fw" / "meta.json").exists()
    with pytest.raises(UserError, match="did not finish"):
        TokenDataset(tmp_path / "fw")
    with pytest.raises(PrepareError, match="--shards must be between 1 and 103"):
        fineweb.fetch_pretokenized(tmp_path / "fw", shards_wanted=0)


def test_pretokenized_offline_names_the_way_out(tmp_path, monkeypatch):
    def offline(repo, rev):
        raise ConnectionError("offline")

    monkeypatch.setattr(fineweb, "hub_commit", offline)
    with pytest.raises(PrepareError, match="could not reach kjj0/fineweb10B-gpt2 .*`hf download .* data.name"):
        fineweb.fetch_pretokenized(tmp_path / "fw", shards_wanted=1)
    assert not (tmp_path / "fw").exists()


def test_training_reads_llmc_shards(tmp_path, monkeypatch):
    """A tiny run on a folder of llm.c shards (no meta.json): data.name is all it takes."""
    from inprocess import train_tiny

    rng = np.random.default_rng(4)
    (tmp_path / "data" / "llmc").mkdir(parents=True)
    shards.write_shard(tmp_path / "data" / "llmc" / "fineweb_val_000000.bin", rng.integers(0, 50257, 3000))
    for i in (1, 2):
        shards.write_shard(tmp_path / "data" / "llmc" / f"fineweb_train_{i:06d}.bin", rng.integers(0, 50257, 5000))
    monkeypatch.setenv("NANOGPT_DATA_ROOT", str(tmp_path / "data"))
    summary = train_tiny(tmp_path / "run", "data.name=llmc", "task.max_iters=2", "task.eval_interval=2")
    assert summary["status"] == "finished" and summary["final_val_loss"] > 0
    ckpt = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert ckpt["config"]["data"]["name"] == "llmc"
