"""The training loop under failure: a loss that turns NaN, a disk that fills up. Whatever
happens, a good checkpoint is never replaced by a bad one, and the message says what to do."""
from __future__ import annotations

import errno
import json
import logging
import math
import os

import pytest
import torch

from conftest import read_metrics
from inprocess import train_tiny
from nanogpt.checkpoint import single as checkpoint
from nanogpt.errors import UserError
from nanogpt.model import GPT


def poison_training_loss(monkeypatch, from_step: int, steps: int = 10**9, into_weights: bool = True):
    """From the `from_step`-th training forward pass on (for `steps` passes), the loss is NaN.
    into_weights: the NaN flows into the gradients (as a real divergence does); otherwise only
    the reported value is NaN and the weights stay good."""
    real_forward = GPT.forward
    calls = {"n": 0}

    def forward(self, idx, targets=None, cache=None, docs=None):
        logits, loss = real_forward(self, idx, targets, cache, docs)
        if self.training and targets is not None:
            calls["n"] += 1
            if from_step <= calls["n"] < from_step + steps:
                nan = torch.tensor(float("nan"))
                loss = loss * nan if into_weights else loss + nan  # d(loss + c)/dw = dloss/dw
        return logits, loss

    monkeypatch.setattr(GPT, "forward", forward)


def ckpt_iter(run, name="last.pt"):
    return checkpoint.load(run / "ckpt" / name)["iter"]


def params_finite(run, name="last.pt"):
    return all(torch.isfinite(t).all() for t in checkpoint.load(run / "ckpt" / name)["model"].values())


def test_a_diverging_loss_stops_the_run_and_keeps_the_good_checkpoints(tmp_path, data_root, monkeypatch):
    run = tmp_path / "run"
    poison_training_loss(monkeypatch, from_step=13)  # iteration 13 (1-based) goes bad
    with pytest.raises(UserError) as e:
        train_tiny(run, "task.max_iters=30", "task.eval_interval=10", "task.log_interval=5")
    msg = str(e.value)
    assert "NaN or infinite between iterations 10 and 15" in msg
    assert "last good training loss: 2." in msg
    assert "optim.lr" in msg and "float16" in msg and "task.on_nan=skip" in msg
    assert ckpt_iter(run) == 10 and ckpt_iter(run, "best.pt") == 10
    assert params_finite(run) and params_finite(run, "best.pt")
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


def test_a_nan_between_log_steps_never_reaches_a_checkpoint(tmp_path, data_root, monkeypatch):
    # logging every 100 steps leaves the NaN at step 14 unseen until the save at 20: the
    # on-device guard catches it there, so last.pt stays at 10
    run = tmp_path / "run"
    poison_training_loss(monkeypatch, from_step=14, steps=1, into_weights=False)
    with pytest.raises(UserError, match="between iterations 10 and 20"):
        train_tiny(run, "task.max_iters=30", "task.eval_interval=10", "task.log_interval=100")
    assert ckpt_iter(run) == 10


def test_on_nan_skip_skips_bad_steps_and_finishes(tmp_path, data_root, monkeypatch, caplog):
    run = tmp_path / "run"
    poison_training_loss(monkeypatch, from_step=5, steps=3)
    with caplog.at_level(logging.WARNING, "nanogpt"):
        summary = train_tiny(run, "task.max_iters=20", "task.eval_interval=10", "task.on_nan=skip")
    assert summary["status"] == "finished" and math.isfinite(summary["final_val_loss"])
    assert caplog.text.count("update skipped") == 3
    assert params_finite(run)


def test_on_nan_skip_still_stops_after_ten_bad_steps_in_a_row(tmp_path, data_root, monkeypatch):
    run = tmp_path / "run"
    poison_training_loss(monkeypatch, from_step=15)
    with pytest.raises(UserError, match="With task.on_nan=skip, 10 steps in a row were skipped") as e:
        train_tiny(run, "task.max_iters=40", "task.eval_interval=10", "task.on_nan=skip")
    assert "instead of stopping" not in str(e.value)  # no advice to turn on what is on
    # skipped steps leave the weights alone: the checkpoint at 20 is good
    assert ckpt_iter(run) == 20 and params_finite(run)


def test_an_unknown_on_nan_choice_is_rejected(tmp_path, data_root):
    with pytest.raises(UserError, match="task.on_nan='ignore'.*stop or skip"):
        train_tiny(tmp_path / "run", "task.on_nan=ignore")


def test_a_disk_that_fills_mid_run_stops_it_with_the_last_checkpoint_intact(tmp_path, data_root, monkeypatch):
    run = tmp_path / "run"
    real_save, saves = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        saves["n"] += 1
        if saves["n"] >= 2:  # the second checkpoint runs out of space halfway
            f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(UserError, match="No space left on device.*intact"):
        train_tiny(run, "task.max_iters=30", "task.eval_interval=10")
    assert ckpt_iter(run) == 10
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["best.pt", "last.pt"]
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


def test_save_interval_checkpoints_between_evaluations(tmp_path, data_root, monkeypatch):
    run = tmp_path / "run"
    poison_training_loss(monkeypatch, from_step=18)
    with pytest.raises(UserError):
        train_tiny(run, "task.max_iters=40", "task.eval_interval=10", "task.save_interval=4")
    # saved at 10 (eval), 12 and 16 (save_interval); 20 would hold the NaN
    assert ckpt_iter(run) == 16 and ckpt_iter(run, "best.pt") == 10


def test_metrics_of_a_resumed_run_hold_each_iteration_once(tmp_path, data_root):
    run = tmp_path / "run"
    train_tiny(run, "task.max_iters=10", "task.eval_interval=5")
    # what a kill at iteration 13 leaves: records past the checkpoint (10), a torn last line
    with open(run / "metrics.jsonl", "a") as f:
        for it in (11, 12, 13):
            f.write(json.dumps({"kind": "train", "iter": it, "loss": 9.9}) + "\n")
        f.write('{"kind": "train", "it')
    train_tiny(run, "task.max_iters=20", "task.eval_interval=5", "init_from=resume")
    records = read_metrics(run)
    train_iters = [r["iter"] for r in records if r["kind"] == "train"]
    assert train_iters == list(range(1, 21))
    assert [r["iter"] for r in records if r["kind"] == "eval"] == [0, 5, 10, 15, 20]
    assert 9.9 not in [r["loss"] for r in records if r["kind"] == "train"]
