"""Document-aware batches (data.packing=window|bos|bestfit, nanogpt/data/packing.py) and the
document mask (model.doc_mask): what the rows hold, that they are a function of the iteration
(resume, DDP ranks, llm.c shards), that a masked document's logits ignore what precedes it, and
the bad input refused before any work (docs/errors.md, "Document-aware batches")."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import GPT2_RANKS, QUICK, SHAKESPEARE, launch, write_char_dataset
from nanogpt.config import ConfigError, DataConfig
from nanogpt.data import packing, shards
from nanogpt.data.batches import Batches, Prefetcher, TokenDataset
from nanogpt.model import GPT, GPTConfig, document_ids, document_mask, document_positions, masked_attention
from nanogpt.tokenizer import EOT_ID

CPU = torch.device("cpu")
GPT2_META = {"tokenizer": {"kind": "gpt2"}, "vocab_size": EOT_ID + 1, "dtype": "uint16"}


def documents(seed: int, n_docs: int, longest: int = 80) -> list[np.ndarray]:
    """Documents as prepare/fineweb.py writes them: <|endoftext|>, then the text's tokens."""
    rng = np.random.default_rng(seed)
    return [np.concatenate([[EOT_ID], rng.integers(0, 1000, size=rng.integers(3, longest))]).astype(np.uint16)
            for _ in range(n_docs)]


def write_docs_dataset(root: Path, name: str = "docs", longest: int = 80) -> Path:
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    for split, (seed, n) in {"train": (0, 600), "val": (1, 80)}.items():
        np.concatenate(documents(seed, n, longest)).tofile(out / f"{split}.bin")
    (out / "meta.json").write_text(json.dumps({"dataset": name, **GPT2_META}))
    return out


def write_docs_shards(root: Path, flat: Path) -> Path:
    """The same tokens as llm.c shards (train in two shards, so rows read across a shard boundary)."""
    out = root / "docs_shards"
    out.mkdir(parents=True, exist_ok=True)
    train = np.fromfile(flat / "train.bin", dtype=np.uint16)
    half = len(train) // 2 + 7  # mid-document
    shards.write_shard(out / "docs_train_000001.bin", train[:half])
    shards.write_shard(out / "docs_train_000002.bin", train[half:])
    shards.write_shard(out / "docs_val_000000.bin", np.fromfile(flat / "val.bin", dtype=np.uint16))
    return out


@pytest.fixture(scope="module")
def docs(tmp_path_factory) -> TokenDataset:
    return TokenDataset(write_docs_dataset(tmp_path_factory.mktemp("data")))


def split_rows(row: np.ndarray) -> list[np.ndarray]:
    """A row cut at each <|endoftext|> (each piece a document, or a document's beginning)."""
    cuts = np.flatnonzero(row == EOT_ID)
    return [row[a:b] for a, b in zip(cuts, list(cuts[1:]) + [len(row)])]


def corpus_documents(dataset: TokenDataset, split: str = "train") -> dict[int, np.ndarray]:
    tokens = np.asarray(dataset.splits[split].tokens[:])
    starts = np.flatnonzero(tokens == EOT_ID)
    return {int(a): tokens[a:b] for a, b in zip(starts, list(starts[1:]) + [len(tokens)])}


# ---- window: today's batches, unchanged

def test_window_batches_are_bit_identical_to_before_packing(tmp_path):
    """The default packing reads the very windows nanoGPT-style batches read before it existed
    (the digest was taken from the code before data.packing), with and without document ids."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50257, size=20000).astype(np.uint16)
    d = tmp_path / "ds"
    d.mkdir()
    ids[:18000].tofile(d / "train.bin")
    ids[18000:].tofile(d / "val.bin")
    (d / "meta.json").write_text(json.dumps({"dataset": "ds", **GPT2_META}))
    b = Batches(TokenDataset(d), 16, 4, seed=1337, device=CPU, rank=1, world_size=2)
    h = hashlib.sha256()
    for it in range(5):
        h.update(b.cpu_windows("train", b.train_index(it, 1, 2)).numpy().tobytes())
        h.update(b.cpu_windows("val", it, purpose=1).numpy().tobytes())
    assert h.hexdigest() == "d0862dede8c38976804adcdd2d5dc791750851268149999ee4448db077011a34"


def test_window_with_doc_mask_reads_the_same_windows_and_their_document_ids(docs):
    """window + model.doc_mask: the same windows, masked at the separators found in them."""
    plain = Batches(docs, 32, 4, seed=9, device=CPU)
    masked = Batches(docs, 32, 4, seed=9, device=CPU, doc_mask=True)
    for i in range(4):
        x, y = plain.cpu_batch("train", i)
        x2, y2, d = masked.cpu_batch("train", i)
        assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(d, document_ids(x, EOT_ID))


def test_a_packing_typo_names_the_valid_ones():
    assert DataConfig().packing == "window"
    with pytest.raises(ConfigError, match="unknown data.packing='bestfti': use window, bos or bestfit"):
        DataConfig(packing="bestfti")


# ---- bos and bestfit: what the rows hold

def test_bos_rows_each_start_at_a_document(docs):
    b = Batches(docs, 64, 8, seed=3, device=CPU, packing="bos")
    tokens = np.asarray(docs.splits["train"].tokens[:])
    for i in range(5):
        packed = b.packer.rows("train", 0, i)
        assert (packed.rows[:, 0] == EOT_ID).all()
        for start, row in zip(packed.starts, packed.rows):
            assert np.array_equal(row, tokens[start:start + 65])  # reads on across the boundaries after
    x, y = b.cpu_batch("train", 0)
    assert x.shape == (8, 64) and torch.equal(x[:, 1:], y[:, :-1])


def test_bos_visits_every_document_start_once_per_epoch(docs):
    b = Batches(docs, 64, 8, seed=3, device=CPU, packing="bos")
    starts = b.packer.starts["train"]
    n_batches = len(starts) // 8
    seen = np.concatenate([b.packer.rows("train", 0, i).starts for i in range(n_batches)])
    assert len(np.unique(seen)) == len(seen) == n_batches * 8


def test_bestfit_rows_hold_whole_documents_and_at_most_one_crop(docs):
    """Every row is full, starts at a document, and holds whole documents of the corpus except its
    last, which may be cropped; the crop rate counts exactly what the crops dropped."""
    whole = corpus_documents(docs)
    b = Batches(docs, 64, 8, seed=5, device=CPU, packing="bestfit")
    read = dropped = 0
    for i in range(6):
        packed = b.packer.rows("train", 0, i)
        assert packed.rows.shape == (8, 65) and (packed.rows[:, 0] == EOT_ID).all()
        used = iter(packed.starts)
        for row in packed.rows:
            pieces = split_rows(row)
            for k, piece in enumerate(pieces):
                doc = whole[int(next(used))]
                if k < len(pieces) - 1:
                    assert np.array_equal(piece, doc)
                else:  # the last may be cropped to fill the row
                    assert np.array_equal(piece, doc[:len(piece)])
                read += len(doc)
                dropped += len(doc) - len(piece)
        assert packed.read == sum(len(whole[int(s)]) for s in packed.starts)
        b.cpu_windows("train", i)
    assert (b.tokens_read, b.tokens_dropped) == (read, dropped)
    assert dropped > 0 and b.crop_rate == pytest.approx(dropped / read)


def test_bestfit_crops_what_does_not_fit(tmp_path):
    """Documents longer than a row can only be cropped: the crop rate says how much was lost."""
    long_docs = TokenDataset(write_docs_dataset(tmp_path, "long", longest=400))
    b = Batches(long_docs, 32, 4, seed=0, device=CPU, packing="bestfit")
    for i in range(10):
        b.cpu_windows("train", i)
    assert 0.3 < b.crop_rate < 1.0


# ---- a function of (seed, iteration): resume, DDP ranks, shards

@pytest.mark.parametrize("mode", ["bos", "bestfit"])
def test_a_resumed_prefetcher_reads_the_unbroken_runs_batches(docs, mode):
    accum, resume_at = 2, 3
    unbroken = Prefetcher(Batches(docs, 32, 4, seed=7, device=CPU, packing=mode, doc_mask=True), 0, accum)
    # a new process: a fresh Batches, started mid-run
    resumed = Prefetcher(Batches(docs, 32, 4, seed=7, device=CPU, packing=mode, doc_mask=True), resume_at, accum)
    try:
        for it in range(6):
            for m in range(accum):
                x, y, d = unbroken.get(it, m)
                if it >= resume_at:
                    x2, y2, d2 = resumed.get(it, m)
                    assert torch.equal(x, x2) and torch.equal(y, y2) and torch.equal(d, d2)
    finally:
        unbroken.close()
        resumed.close()
    other_seed = Batches(docs, 32, 4, seed=8, device=CPU, packing=mode)
    assert not torch.equal(other_seed.cpu_windows("train", 0), unbroken.batches.cpu_windows("train", 0))


@pytest.mark.parametrize("mode", ["bos", "bestfit"])
def test_ddp_ranks_read_disjoint_documents_and_together_one_processs_batches(docs, mode):
    one = Batches(docs, 32, 4, seed=1, device=CPU, packing=mode)
    ranks = [Batches(docs, 32, 4, seed=1, device=CPU, rank=r, world_size=2, packing=mode) for r in (0, 1)]
    used = {0: set(), 1: set()}
    for it in range(8):
        for r, b in enumerate(ranks):
            index = b.train_index(it, 0, 1)
            packed = b.packer.rows("train", 0, index)
            used[r] |= set(packed.starts.tolist())
            # rank r of 2 at iteration it = one process's micro-step r of 2
            assert np.array_equal(packed.rows, one.packer.rows("train", 0, one.train_index(it, r, 2)).rows)
    assert used[0] and used[1] and not used[0] & used[1]


@pytest.mark.parametrize("mode", ["bos", "bestfit"])
def test_llmc_shards_give_the_same_rows_as_flat_files(docs, tmp_path, mode):
    sharded = TokenDataset(write_docs_shards(tmp_path, docs.path))
    assert sharded.meta["format"] == shards.FORMAT
    a = Batches(docs, 48, 6, seed=2, device=CPU, packing=mode)
    b = Batches(sharded, 48, 6, seed=2, device=CPU, packing=mode)
    for i in range(12):
        for split in ("train", "val"):
            assert torch.equal(a.cpu_windows(split, i), b.cpu_windows(split, i))


# ---- the document mask

def test_document_ids_and_positions():
    x = torch.tensor([[5, 6, EOT_ID, 7, 8, 9, EOT_ID, 1], [EOT_ID, 2, 3, 4, 5, 6, 7, 8]])
    docs = document_ids(x, EOT_ID)
    assert docs.tolist() == [[0, 0, 1, 1, 1, 1, 2, 2], [1] * 8]
    assert document_positions(docs).tolist() == [[0, 1, 0, 1, 2, 3, 0, 1], list(range(8))]
    mask = document_mask(docs, flex=False)[0, 0]
    assert mask[3].tolist() == [False, False, True, True, False, False, False, False]


@pytest.mark.parametrize("pos_emb", ["learned", "rope"])
def test_a_masked_documents_logits_ignore_what_precedes_it_in_its_row(pos_emb):
    torch.manual_seed(0)
    doc = torch.cat([torch.tensor([EOT_ID]), torch.randint(0, 500, (12,))])[None]
    rows = [torch.cat([torch.randint(0, 500, (1, n)), doc], dim=1) for n in (3, 20)]  # other text before it
    rows[1][0, 5] = EOT_ID  # and another document boundary
    logits = {}
    for doc_mask in (True, False):
        config = GPTConfig(block_size=40, vocab_size=EOT_ID + 1, n_layer=2, n_head=2, n_embd=32,
                           pos_emb=pos_emb, doc_mask=doc_mask)
        torch.manual_seed(1)
        model = GPT(config).eval()
        logits[doc_mask] = [model(r, r, docs=document_ids(r, EOT_ID))[0][0, -doc.size(1):] for r in rows]
    torch.testing.assert_close(logits[True][0], logits[True][1], atol=1e-5, rtol=1e-5)
    assert (logits[False][0] - logits[False][1]).abs().max() > 1e-3  # the check can fail


def test_doc_mask_without_document_ids_is_gpt2s_attention():
    torch.manual_seed(0)
    x = torch.randint(0, 50, (2, 16))
    models = []
    for doc_mask in (False, True):
        torch.manual_seed(1)
        models.append(GPT(GPTConfig(block_size=16, vocab_size=50, n_layer=1, n_head=2, n_embd=16, doc_mask=doc_mask)))
    assert torch.equal(models[0](x, x)[0], models[1](x, x)[0])
    # one document per row: the mask is GPT-2's causal one
    assert torch.allclose(models[0](x, x)[0], models[1](x, x, docs=torch.zeros_like(x))[0], atol=1e-6)


@pytest.mark.slow
def test_flex_attention_block_mask_equals_the_sdpa_mask():
    """The CUDA path (FlexAttention's block mask), run through torch.compile on the CPU (~25 s)."""
    torch.manual_seed(0)
    x = torch.randint(0, 5, (2, 128))
    docs = document_ids(x, 0)
    q, k, v = (torch.randn(2, 2, 128, 16) for _ in range(3))
    flex = masked_attention(q, k, v, document_mask(docs, flex=True), scale=0.3)
    sdpa = masked_attention(q, k, v, document_mask(docs, flex=False), scale=0.3)
    torch.testing.assert_close(flex, sdpa, atol=1e-5, rtol=1e-5)


# ---- training runs, and what a run refuses

DOCS_RUN = [*QUICK, "data.name=docs", "model.vocab_size=null", "model.block_size=32"]


@pytest.fixture(scope="module")
def docs_env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    write_docs_dataset(root)
    write_char_dataset(root)
    plain = root / "plain_bpe"  # GPT-2 tokens, no <|endoftext|>
    plain.mkdir()
    for split, n in (("train", 3000), ("val", 400)):
        np.random.default_rng(0).integers(0, 1000, size=n).astype(np.uint16).tofile(plain / f"{split}.bin")
    (plain / "meta.json").write_text(json.dumps({"dataset": "plain_bpe", **GPT2_META}))
    return {"HYDRA_FULL_ERROR": "0", "NANOGPT_DATA_ROOT": str(root)}


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def train_losses(run: Path) -> dict[int, float]:
    return {m["iter"]: m["loss"] for m in metrics(run) if m.get("kind") == "train" and "loss" in m}


@pytest.mark.slow
def test_bestfit_with_doc_mask_trains_reports_its_crop_rate_and_resumes_bit_exactly(tmp_path, docs_env):
    args = [*DOCS_RUN, "data.packing=bestfit", "model.doc_mask=true", "task.eval_interval=3"]
    whole = launch([*args, "task.max_iters=6", f"run={tmp_path / 'whole'}"], cwd=tmp_path, env=docs_env)
    summary = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["packing"] == "bestfit" and 0 < summary["crop_rate"] < 1
    assert "data.packing=bestfit: crops dropped" in whole.stdout + whole.stderr
    launch([*args, "task.max_iters=3", f"run={tmp_path / 'split'}"], cwd=tmp_path, env=docs_env)
    launch([*args, "task.max_iters=6", "init_from=resume", f"run={tmp_path / 'split'}"], cwd=tmp_path, env=docs_env)
    a, b = train_losses(tmp_path / "whole"), train_losses(tmp_path / "split")
    assert len(a) == 6 and all(a[i] == b[i] for i in a), (a, b)


def rejected(args, cwd: Path, env: dict) -> str:
    proc = launch(args, cwd=cwd, env=env, check=False)
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr
    assert not list(cwd.glob("runs/*/ckpt")) and not list(cwd.rglob("metrics.jsonl"))
    return proc.stderr


@pytest.mark.parametrize("args,message", [
    (["data.name=tiny_char", "data.packing=bos"],
     "error: data.packing=bos starts rows at documents, but tiny_char has no document separator "
     "(its char tokenizer has no end-of-text token"),
    (["data.name=tiny_char", "model.doc_mask=true"],
     "error: model.doc_mask=true masks attention at document boundaries, but tiny_char has no document separator"),
    (["data.name=plain_bpe", "model.vocab_size=null", "data.packing=bestfit"],
     "error: data.packing=bestfit packs whole documents into rows, but the train split of plain_bpe holds no "
     "<|endoftext|> (id 50256): it is not split into documents; train with data.packing=window"),
    (["data.packing=bestfti"], "unknown data.packing='bestfti': use window, bos or bestfit"),
])
def test_a_packing_or_mask_the_data_cannot_give_is_refused_before_any_work(args, message, tmp_path, docs_env):
    assert message in rejected([*QUICK, *args], tmp_path, docs_env)


@pytest.mark.slow
def test_an_existing_run_is_left_untouched_by_a_refused_packing(tmp_path, docs_env):
    run = tmp_path / "run"
    launch([*QUICK, "task.max_iters=2", f"run={run}"], cwd=tmp_path, env=docs_env)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name not in ("launch.log", ".lock")}
    proc = launch([*QUICK, "task.max_iters=4", "init_from=resume", "data.packing=bos", f"run={run}"],
                  cwd=tmp_path, env=docs_env, check=False)
    assert proc.returncode == 2 and "data.packing=bos starts rows at documents" in proc.stderr
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name not in ("launch.log", ".lock")}
    assert after == before


@pytest.mark.skipif(not (SHAKESPEARE.exists() and GPT2_RANKS.exists()), reason="needs ../shared's tiny "
                    "Shakespeare and GPT-2 rank file")
def test_shakespeare_docs_has_one_document_per_speech(tmp_path):
    from prepare.shakespeare_docs import prepare

    meta = prepare(tmp_path / "sd", SHAKESPEARE, rank_file=GPT2_RANKS)
    assert meta["tokenizer"] == {"kind": "gpt2"}
    dataset = TokenDataset(tmp_path / "sd")
    starts = packing.documents(dataset, EOT_ID)
    text = SHAKESPEARE.read_text()
    assert len(starts["train"]) + len(starts["val"]) == len([b for b in text.split("\n\n") if b.strip()])
    assert all(len(a) and a[0] == 0 for a in starts.values())  # each split opens with a document


def test_document_starts_of_a_large_file_are_kept_beside_it_and_rescanned_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(packing, "CACHE_MIN_BYTES", 0)  # every file counts as large
    monkeypatch.setattr(packing, "SETTLE_SECONDS", -1)
    path = write_docs_dataset(tmp_path)
    first = packing.documents(TokenDataset(path), EOT_ID)
    assert (path / f".train.bin.docs-{EOT_ID}.npz").is_file()

    def no_scan(*args):
        raise AssertionError("scanned again")

    with monkeypatch.context() as m:
        m.setattr(packing, "_scan", no_scan)
        kept = packing.documents(TokenDataset(path), EOT_ID)  # a new process: read from the records
    assert all(np.array_equal(first[s], kept[s]) for s in first)
    tokens = np.fromfile(path / "train.bin", dtype=np.uint16)
    tokens[1:4] = EOT_ID  # the same size, other documents
    tokens.tofile(path / "train.bin")
    os.utime(path / "train.bin", ns=(1, 1))
    again = packing.documents(TokenDataset(path), EOT_ID)
    assert np.array_equal(again["train"][:4], [0, 1, 2, 3])
