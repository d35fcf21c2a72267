"""Validation loss in bits per byte: by hand on tiny texts, then through training and evaluation."""
from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import GPT2_RANKS, read_metrics
from inprocess import train_tiny
from nanogpt.evals.bpb import bits_per_byte, nats_and_bytes, token_bytes_table
from nanogpt.tokenizer import CharTokenizer


def test_uniform_model_on_a_tiny_text_by_hand():
    """"aé日é" over the alphabet a, é, 日 (+ one padded id): a model with equal logits puts 1/4
    on each of 4 ids, so each token costs ln 4 nats = 2 bits; the text is 1 + 2 + 3 + 2 = 8 UTF-8
    bytes in 4 tokens: 8 bits / 8 bytes = 1 bit per byte."""
    tok = CharTokenizer.from_text("aé日")
    table = torch.tensor(token_bytes_table(tok.to_meta(), vocab_size=4))
    assert table.tolist() == [1, 2, 3, 0]
    targets = torch.tensor([tok.encode("aé日é")])
    nats, nbytes = nats_and_bytes(torch.zeros(1, 4, 4), targets, table).tolist()
    assert nats == pytest.approx(4 * math.log(4)) and nbytes == 8
    assert bits_per_byte(nats, nbytes) == pytest.approx(1.0)


def test_a_confident_model_and_ignored_and_special_targets_by_hand():
    """Logits that give the target probability 1/2 (log 3 on it, 0 on the other three of four
    ids: e^ln3 / (3 + 3) = 1/2): 1 bit per token. A special token (0 bytes, like <|endoftext|>)
    and an ignored target (-1) add neither bits nor bytes."""
    table = torch.tensor([1, 2, 3, 0])  # id 3: a special token
    targets = torch.tensor([[0, 3, 2, -1, 1]])
    logits = torch.zeros(1, 5, 4)
    for t, target in enumerate(targets[0].tolist()):
        logits[0, t, max(target, 0)] = math.log(3)
    nats, nbytes = nats_and_bytes(logits, targets, table).tolist()
    # text targets 0, 2, 1: 3 tokens x ln 2 nats, 1 + 3 + 2 bytes -> 3 bits / 6 bytes
    assert nats == pytest.approx(3 * math.log(2)) and nbytes == 6
    assert bits_per_byte(nats, nbytes) == pytest.approx(0.5)
    assert math.isnan(bits_per_byte(0.0, 0.0))


@pytest.mark.skipif(not GPT2_RANKS.exists(), reason="no GPT-2 rank file (../shared)")
def test_gpt2_table_counts_the_bytes_of_the_decoded_text(monkeypatch):
    monkeypatch.setenv("NANOGPT_GPT2_RANKS", str(GPT2_RANKS))
    table = token_bytes_table({"kind": "gpt2"}, vocab_size=50304)
    assert len(table) == 50304 and table[50256] == 0 and table[50257:] == [0] * 47
    assert table[15496] == 5 and table[995] == 6  # "Hello", " world"


def test_without_the_tokenizer_bpb_is_left_out_with_a_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("NANOGPT_GPT2_RANKS", str(tmp_path / "missing.tiktoken"))
    assert token_bytes_table({"kind": "gpt2"}, vocab_size=50304) is None
    assert "bits per byte not measured" in caplog.text


def test_training_logs_and_summarises_bpb(tmp_path, data_root):
    """tiny_char is ASCII: one byte per token, so bits per byte is the loss over ln 2."""
    run = tmp_path / "run"
    summary = train_tiny(run, "task.max_iters=4", "task.eval_interval=2")
    evals = [r for r in read_metrics(run) if r["kind"] == "eval"]
    assert [r["iter"] for r in evals] == [0, 2, 4]
    for r in evals:
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2), rel=1e-6)
        assert r["train_bpb"] == pytest.approx(r["train_loss"] / math.log(2), rel=1e-6)
    assert summary["final_val_bpb"] == evals[-1]["val_bpb"]
    best = min(evals, key=lambda r: r["val_loss"])
    assert summary["best_val_bpb"] == best["val_bpb"]
    # and it survives a resume
    again = train_tiny(run, "task.max_iters=6", "task.eval_interval=2", "init_from=resume")
    assert again["best_val_bpb"] == pytest.approx(
        min((r for r in read_metrics(run) if r["kind"] == "eval"), key=lambda r: r["val_loss"])["val_bpb"])


def test_eval_task_reports_bpb(tmp_path, data_root):
    from conftest import TINY, launch

    launch([*TINY, "task.max_iters=2", "hydra.run.dir=run"], cwd=tmp_path)
    proc = launch(["task=eval", "run=run", "task.eval_iters=2", "hardware=cpu", "hardware.dtype=float32"], cwd=tmp_path)
    assert "bits/byte" in proc.stdout
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["val"]["bpb"] == pytest.approx(result["val"]["loss"] / math.log(2), rel=1e-6)
