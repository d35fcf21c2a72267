"""prepare/owt.py on data in the hub's layout, written by the tests (nothing here reaches the hub):
Parquet through --data-files, streaming and not; meta.json provenance; the partial-conversion
refusal; the script-only message; bad input; a full disk (no SIGBUS, nothing left behind)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nanogpt.tokenizer import load_tokenizer
from prepare import common, hf, owt
from prepare.common import PrepareError
from test_prepare import EOT, RANK_FILE, assert_failed, needs_ranks, read_dataset, run_script, split_docs

WORDS = "the quick brown fox jumps over a lazy dog while seven wizards quietly hex jovial kings".split()


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"Doc {i}. " + " ".join(rng.choice(WORDS, size=int(rng.integers(3, 40)))) for i in range(n)]


def write_parquet_layout(root: Path, docs: list[str], n_files: int = 2, folder: str = "plain_text",
                         split: str = "train") -> list[Path]:
    """Files named as the hub names them: <config>/<split>-0000i-of-0000n.parquet, with an extra column."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for i, chunk in enumerate(np.array_split(np.array(docs, dtype=object), n_files)):
        path = root / folder / f"{split}-{i:05d}-of-{n_files:05d}.parquet"
        pq.write_table(pa.table({"text": list(chunk), "url": [f"u{j}" for j in range(len(chunk))]}), path)
        paths.append(path)
    return paths


@pytest.fixture
def owt_copy(tmp_path) -> tuple[Path, list[str]]:
    docs = make_docs(60)
    write_parquet_layout(tmp_path / "openwebtext", docs)
    return tmp_path / "openwebtext", docs


@needs_ranks
def test_owt_from_parquet_in_the_hub_layout(tmp_path, owt_copy):
    root, docs = owt_copy
    glob = str(root / "plain_text" / "*.parquet")
    proc = run_script("owt", "--data-files", glob, "--out-dir", tmp_path / "o", "--val-fraction", "0.1",
                      "--num-proc", "2", "--rank-file", RANK_FILE)
    assert proc.returncode == 0, proc.stderr
    meta, train, val = read_dataset(tmp_path / "o")
    tok = load_tokenizer(meta, rank_file=RANK_FILE)
    train_docs, val_docs = split_docs(tok, train), split_docs(tok, val)
    # nanoGPT's split of these documents, in the order the hub's files list them
    import datasets

    expected = datasets.Dataset.from_dict({"text": docs}).train_test_split(test_size=0.1, seed=2357, shuffle=True)
    assert val_docs == expected["test"]["text"] and train_docs == expected["train"]["text"]
    src = meta["source"]
    assert meta["dataset"] == "owt" and src["dataset"] == owt.OWT_ID and src["documents"] == 60
    assert src["split"]["documents"] == {"train": 54, "val": 6} and src["column"] == "text"
    assert [Path(f).name for f in src["files"]] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    assert set(src["sha256"].values()) == {common.sha256_file(f) for f in src["files"]}
    assert src["data_files"] == [glob] and src["commit"] is None  # local files: no hub commit
    # the summary names the source; OpenWebText's own count is checked
    assert "60 documents of Skylion007/openwebtext" in proc.stdout and "2 file(s)" in proc.stdout
    assert "warning: OpenWebText has 8,013,769 documents" in proc.stderr
    assert not list(tmp_path.glob(".hf-cache.tmp.*"))  # the transient Arrow copy is gone


@needs_ranks
def test_owt_streaming_reads_every_document_once(tmp_path, owt_copy):
    root, docs = owt_copy
    spec = hf.HFSpec(dataset=owt.OWT_ID, data_files=[str(root / "plain_text" / "*.parquet")], streaming=True)
    meta = owt.prepare(tmp_path / "a", spec=spec, val_fraction=0.2, num_proc=2, rank_file=RANK_FILE, batch_size=7)
    _, train, val = read_dataset(tmp_path / "a")
    tok = load_tokenizer(meta, rank_file=RANK_FILE)
    train_docs, val_docs = split_docs(tok, train), split_docs(tok, val)
    assert sorted(train_docs + val_docs) == sorted(docs)
    # the stream's order within each split, and the same coin as numpy's seeded generator
    coin = np.random.default_rng(2357).random(len(docs)) < 0.2
    assert val_docs == [d for d, v in zip(docs, coin) if v] and train_docs == [d for d, v in zip(docs, coin) if not v]
    assert meta["source"]["streaming"] and meta["source"]["split"]["kind"] == "seeded coin per document"
    # independent of the batch size and the number of processes
    owt.prepare(tmp_path / "b", spec=spec, val_fraction=0.2, num_proc=1, rank_file=RANK_FILE, batch_size=50)
    for split in ("train", "val"):
        assert (tmp_path / "a" / f"{split}.bin").read_bytes() == (tmp_path / "b" / f"{split}.bin").read_bytes()


@needs_ranks
def test_a_partial_conversion_is_refused_unless_allowed(tmp_path):
    root = tmp_path / "converted"
    write_parquet_layout(root, make_docs(20), n_files=1, folder="plain_text/partial-train")
    glob = str(root / "plain_text" / "partial-train" / "*.parquet")
    proc = run_script("owt", "--data-files", glob, "--out-dir", tmp_path / "o", "--rank-file", RANK_FILE)
    assert_failed(proc, "partial Parquet conversion", "partial-train/", "--allow-partial")
    assert not (tmp_path / "o").exists()
    proc = run_script("owt", "--data-files", glob, "--allow-partial", "--out-dir", tmp_path / "o",
                      "--val-fraction", "0.2", "--num-proc", "1", "--rank-file", RANK_FILE)
    assert proc.returncode == 0, proc.stderr
    assert read_dataset(tmp_path / "o")[0]["source"]["documents"] == 20


def test_a_script_only_dataset_names_the_revisions_to_use(tmp_path, monkeypatch):
    # datasets >= 4 refuses loading scripts: a local folder with only one stands in for the hub repo
    (tmp_path / "openwebtext").mkdir()
    (tmp_path / "openwebtext" / "openwebtext.py").write_text("import datasets\n")
    proc = run_script("owt", "--dataset", tmp_path / "openwebtext", "--out-dir", tmp_path / "o")
    assert_failed(proc, "holds only a loading script (openwebtext.py)", "--revision", "--data-files")
    assert not (tmp_path / "o").exists()

    # with the hub reachable, the message lists the refs that hold Parquet files (simulated hub)
    class Ref:
        def __init__(self, ref):
            self.ref = ref

    class FakeApi:
        def list_repo_refs(self, repo_id, repo_type, include_pull_requests):
            assert (repo_id, repo_type) == (owt.OWT_ID, "dataset")
            return type("Refs", (), {"converts": [Ref("refs/convert/parquet")],
                                     "pull_requests": [Ref("refs/pr/21"), Ref("refs/pr/22")]})()

        def list_repo_files(self, repo_id, repo_type, revision):
            return {"refs/convert/parquet": ["plain_text/partial-train/0000.parquet", "README.md"],
                    "refs/pr/21": ["README.md"],
                    "refs/pr/22": [f"plain_text/train-{i:05d}-of-00080.parquet" for i in range(80)]}[revision]

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    message = hf.script_only_message(hf.HFSpec(dataset=owt.OWT_ID), "openwebtext.py")
    assert "--revision refs/pr/22 (80 Parquet files)" in message
    assert "--revision refs/convert/parquet (1 Parquet files, a partial conversion: add --allow-partial" in message
    assert "refs/pr/21" not in message
    # offline, the known conversion of OpenWebText is still named
    monkeypatch.setattr(huggingface_hub, "HfApi", None)
    assert "--revision refs/pr/22 (its Parquet conversion)" in hf.script_only_message(hf.HFSpec(dataset=owt.OWT_ID), "x.py")


def test_owt_defaults_to_its_parquet_revision():
    import argparse

    parser = argparse.ArgumentParser()
    hf.add_hf_arguments(parser, dataset=owt.OWT_ID)
    spec = hf.spec_from_args(parser.parse_args([]), default_revision=hf.KNOWN_PARQUET_REVISIONS[owt.OWT_ID])
    assert (spec.dataset, spec.revision, spec.streaming) == (owt.OWT_ID, "refs/pr/22", False)
    assert hf.spec_from_args(parser.parse_args(["--revision", "abc"]), default_revision="x").revision == "abc"
    with pytest.raises(PrepareError, match="put the revision in the path"):
        hf.spec_from_args(parser.parse_args(["--data-files", "a.parquet", "--revision", "r"]))


def test_the_commit_a_hub_revision_resolved_to_is_recorded():
    files = [f"hf://datasets/{owt.OWT_ID}@{'a' * 40}/plain_text/train-0000{i}-of-00002.parquet" for i in range(2)]
    builder = type("B", (), {"config": type("C", (), {"name": "plain_text"})()})()
    prov = hf._provenance(hf.HFSpec(dataset=owt.OWT_ID, revision="refs/pr/22"), builder, files)
    assert prov["commit"] == "a" * 40 and prov["revision"] == "refs/pr/22" and prov["config"] == "plain_text"
    assert prov["kind"] == "hf" and "sha256" not in prov


def test_bad_column_glob_and_file_type(tmp_path, owt_copy):
    root, _ = owt_copy
    glob = str(root / "plain_text" / "*.parquet")
    proc = run_script("owt", "--data-files", glob, "--column", "body", "--out-dir", tmp_path / "o")
    assert_failed(proc, "no column 'body'", "['text', 'url']", "--column")
    proc = run_script("owt", "--data-files", str(tmp_path / "nowhere" / "*.parquet"), "--out-dir", tmp_path / "o")
    assert_failed(proc, "matched no file", "nowhere")
    proc = run_script("owt", "--data-files", str(tmp_path / "x.docx"), "--out-dir", tmp_path / "o")
    assert_failed(proc, "unknown file type", ".parquet")
    proc = run_script("owt", "--data-files", glob, "--split", "validation", "--out-dir", tmp_path / "o")
    assert_failed(proc, "no split 'validation'", "train", "--split")
    assert not (tmp_path / "o").exists()


def test_the_tokenizer_is_loaded_before_a_download_and_after_local_checks(tmp_path, monkeypatch, owt_copy):
    """A prepare's `before_download` (its tokenizer load) stops a hub dataset before any file is
    fetched; with local files it is not needed there, so a bad local input is named first."""
    fetched = []

    class HubBuilder:  # what datasets resolves a hub dataset to: hf:// files, fetched on demand
        config = type("Config", (), {"data_files": {"train": ["hf://datasets/someone/corpus@abc/train.parquet"]}})()

        def download_and_prepare(self, **kwargs):
            fetched.append("download")

    monkeypatch.setattr(hf, "_load_builder", lambda path, kwargs: HubBuilder())

    def missing_ranks():
        raise PrepareError("no GPT-2 rank file")

    with pytest.raises(PrepareError, match="no GPT-2 rank file"):
        hf.open_corpus(hf.HFSpec(dataset="someone/corpus"), before_download=missing_ranks)
    assert fetched == []
    monkeypatch.undo()
    root, docs = owt_copy
    spec = hf.HFSpec(dataset=None, data_files=[str(root / "plain_text" / "*.parquet")])
    with hf.open_corpus(spec, scratch_parent=tmp_path, before_download=missing_ranks) as corpus:
        assert corpus.num_documents == len(docs)  # local files: read without calling it


def test_an_empty_or_corrupt_shard_is_named(tmp_path):
    write_parquet_layout(tmp_path / "e", make_docs(10), n_files=1)
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "e" / "plain_text" / "train-x.parquet")
    proc = run_script("owt", "--data-files", tmp_path / "e" / "plain_text" / "*.parquet", "--out-dir", tmp_path / "o")
    assert_failed(proc, "train-x.parquet holds no rows (an empty shard)", "download it again")
    (tmp_path / "e" / "plain_text" / "train-x.parquet").write_bytes(b"PAR1 cut off")
    proc = run_script("owt", "--data-files", tmp_path / "e" / "plain_text" / "*.parquet", "--out-dir", tmp_path / "o")
    assert_failed(proc, "train-x.parquet is not a readable Parquet file")
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- a full disk

from test_errors import mounts  # noqa: E402,F401  (the tmpfs fixture: skips where mounting is not allowed)


@needs_ranks
def test_a_full_disk_is_an_error_not_a_sigbus(tmp_path, mounts):  # noqa: F811
    """Before: the memmap was preallocated (sparse) on a disk without room, and writing into it
    killed the process with SIGBUS (exit -7), leaving train.bin.tmp.PID behind."""
    docs = make_docs(3000)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(docs) + "\n")
    disk = tmp_path / "disk"
    mounts(disk, "size=64k")
    good = disk / "good"
    common.write_arrays(good, dataset="t", tokenizer=load_tokenizer({"kind": "char", "chars": ["a"]}),
                        source={}, arrays={"train": np.zeros(10), "val": np.zeros(2)})
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    # streamed: the size is not known up front, so the writes themselves meet the full disk
    proc = run_script("owt", "--files", corpus, "--lines", "--streaming", "--out-dir", good, "--num-proc", "1",
                      "--rank-file", RANK_FILE)
    assert_failed(proc, "No space left on device", "--out-dir", "nothing was kept")
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before  # the good dataset is untouched
    # not streamed: refused up front, before converting anything
    proc = run_script("owt", "--files", corpus, "--lines", "--out-dir", disk / "new", "--rank-file", RANK_FILE)
    assert_failed(proc, "needs about", "KiB free", "--streaming")
    assert sorted(p.name for p in disk.iterdir()) == ["good"]


def test_a_disk_that_fills_during_the_write_leaves_nothing(tmp_path, mounts, monkeypatch):  # noqa: F811
    disk = tmp_path / "disk"
    mounts(disk, "size=32k")
    monkeypatch.setattr(common, "check_free_space", lambda *a: None)  # as if the estimate had been too low
    tok = load_tokenizer({"kind": "char", "chars": ["a", "b"]})
    with pytest.raises(PrepareError, match="No space left on device while writing .*train.bin"):
        common.write_arrays(disk / "d", dataset="t", tokenizer=tok, source={},
                            arrays={"train": np.zeros(100_000, dtype=np.uint16), "val": np.zeros(5)})
    assert list(disk.iterdir()) == []
    assert subprocess.run(["df", str(disk)], capture_output=True).returncode == 0


def test_free_space_is_checked_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(common.shutil, "disk_usage", lambda p: type("U", (), {"free": 1000})())
    tok = load_tokenizer({"kind": "char", "chars": ["a"]})
    with pytest.raises(PrepareError, match=r"needs about 1\.2 MiB but .* has 1,000 B free"):
        common.write_arrays(tmp_path / "d", dataset="t", tokenizer=tok, source={},
                            arrays={"train": np.zeros(600_000), "val": np.zeros(2)})
    assert not (tmp_path / "d").exists()


def test_every_document_ends_with_the_separator(tmp_path):
    # the EOT convention of nanoGPT (after each document) vs llm.c (before): prepare/bpe.py does both
    if not RANK_FILE.is_file():
        pytest.skip("no GPT-2 rank file")
    from prepare.bpe import encode_batches

    tok = common.gpt2_tokenizer(RANK_FILE)
    (_, after, la), = encode_batches([(0, ["ab", "c d"])], tok, 1, eot="after")
    (_, before, lb), = encode_batches([(0, ["ab", "c d"])], tok, 1, eot="before")
    assert after[-1] == EOT and before[0] == EOT and la.tolist() == lb.tolist() == [2, 3]
    assert after.tolist() == tok.encode("ab") + [EOT] + tok.encode("c d") + [EOT]
    assert before.tolist() == [EOT] + tok.encode("ab") + [EOT] + tok.encode("c d") and after.dtype == np.uint16


def test_a_config_the_dataset_lacks_lists_its_configs(tmp_path):
    """A local folder in the hub's layout, with the configs its README declares (as FineWeb's does)."""
    write_parquet_layout(tmp_path / "fw", make_docs(5), n_files=1, folder="sample/10BT")
    (tmp_path / "fw" / "README.md").write_text("---\nconfigs:\n- config_name: sample-10BT\n  data_files:\n"
                                               "  - split: train\n    path: sample/10BT/*.parquet\n---\n")
    with pytest.raises(PrepareError, match=r"there is no config 'sample-1BT'; choose --name from \['sample-10BT'\]"):
        hf.open_corpus(hf.HFSpec(dataset=str(tmp_path / "fw"), name="sample-1BT", streaming=True))
    corpus = hf.open_corpus(hf.HFSpec(dataset=str(tmp_path / "fw"), name="sample-10BT", streaming=True))
    assert corpus.provenance["config"] == "sample-10BT" and len(corpus.provenance["files"]) == 1


def test_a_parquet_stream_resumes_at_any_row(tmp_path):
    """The streamed reader holds one row group; a saved position, reloaded, goes on at the same row
    (inside a row group, at a group or file boundary)."""
    docs = make_docs(50)
    (tmp_path / "d").mkdir()
    for i, part in enumerate((docs[:23], docs[23:24], docs[24:])):
        pq.write_table(pa.table({"text": part}), tmp_path / "d" / f"train-{i}.parquet", row_group_size=5)
    files = sorted(str(p) for p in (tmp_path / "d").iterdir())
    spec = hf.HFSpec(dataset=None, data_files=files, streaming=True)
    stream = hf.ParquetStream(files, "text", spec)
    assert stream.num_rows == 50 and stream.text_bytes > 0 and stream.column_names == ["text"]
    rows, seen = iter(stream), []
    for stop in (0, 3, 5, 22, 23, 24, 31, 49):
        while len(seen) < stop:
            seen.append(next(rows)["text"])
        state = stream.state_dict()
        other = hf.ParquetStream(files, "text", spec)
        other.load_state_dict(state)
        assert [r["text"] for r in other] == docs[stop:], stop
    assert [t for b in hf.ParquetStream(files, "text", spec).iter(7) for t in b["text"]] == docs
    with pytest.raises(PrepareError, match="no column 'body'"):
        hf.ParquetStream(files, "body", spec)
