"""Resuming with other settings is not silent (issue 16, section 4): a run keeps its data, a
change to what is trained (batch, learning rate, seed, dropout...) is warned about and recorded
in metrics.jsonl, the token and FLOP counts stay true across such a change, and init_from=scratch
on a run that has checkpoints is an error (re-running the same command still resumes)."""
from __future__ import annotations

import json
import logging

import pytest

from conftest import TINY, launch, read_metrics, write_char_dataset
from inprocess import train_tiny
from nanogpt.errors import UserError


def summary(run):
    return json.loads((run / "summary.json").read_text())


def test_a_different_batch_keeps_tokens_and_flops_true(tmp_path, data_root, caplog):
    run = tmp_path / "run"
    train_tiny(run, "task.max_iters=4", "task.eval_interval=4")  # 4 iters x 4 x 32 tokens
    with caplog.at_level(logging.WARNING, "nanogpt"):
        done = train_tiny(run, "task.max_iters=8", "task.eval_interval=4", "init_from=resume",
                          "hardware.micro_batch_size=2")  # then 4 iters x 2 x 32
    assert done["tokens"] == 4 * 4 * 32 + 4 * 2 * 32
    assert done["flops"] == done["tokens"] * done["flops_per_token"]
    assert "hardware.micro_batch_size: 4 -> 2" in caplog.text
    resume = [m for m in read_metrics(run) if m["kind"] == "resume"]
    assert resume == [{"kind": "resume", "iter": 4, "changed": {"hardware.micro_batch_size": [4, 2],
                                                                "task.max_iters": [4, 8]}}]
    evals = [m for m in read_metrics(run) if m["kind"] == "eval"]
    assert [e["tokens"] for e in evals] == [0, 512, 768]


def test_a_token_budget_counts_what_was_trained_before_a_batch_change(tmp_path, data_root):
    """Resumed with half the batch, a budget of 1024 tokens trains the 512 it has left (8 steps of
    64), not 1024 / 64 = 16 steps more than the 4 it had (1,280 tokens in all)."""
    run = tmp_path / "run"
    first = train_tiny(run, "task.max_tokens=512", "task.eval_interval=100")
    assert (first["iters"], first["tokens"]) == (4, 512)  # 4 steps of 4 x 32 tokens
    done = train_tiny(run, "task.max_tokens=1024", "task.eval_interval=100", "init_from=resume",
                      "hardware.micro_batch_size=2")
    assert (done["iters"], done["tokens"]) == (12, 1024)


def test_a_flop_budget_counts_what_was_trained_before_a_batch_change():
    from types import SimpleNamespace

    from nanogpt.training.setup import plan_steps

    task = SimpleNamespace(tokens_per_step=None, max_iters=None, max_tokens=None, max_flops=1024 * 1000)
    checkpoint = {"iter": 4, "tokens": 512}  # 4 steps of 128 tokens, then the batch halves
    assert plan_steps(task, 64, 1, 2, 1000)[2] == 16  # fresh: 1024 tokens (of 1000 FLOPs), 64 a step
    assert plan_steps(task, 64, 1, 2, 1000, checkpoint)[2] == 4 + 8  # the 512 left
    spent = {"iter": 8, "tokens": 1024}
    assert plan_steps(task, 64, 1, 2, 1000, spent)[2] == 8  # nothing left: no more steps


@pytest.mark.parametrize("override, key", [("optim.lr=0.0005", "optim.lr"), ("seed=7", "seed"),
                                           ("model.dropout=0.1", "model.dropout")])
def test_a_changed_training_setting_is_warned_about_and_recorded(tmp_path, data_root, caplog, override, key):
    run = tmp_path / "run"
    train_tiny(run, "task.max_iters=2", "task.eval_interval=2")
    with caplog.at_level(logging.WARNING, "nanogpt"):
        train_tiny(run, "task.max_iters=4", "task.eval_interval=2", "init_from=resume", override)
    assert f"resuming {run} with settings it was not trained with" in caplog.text and key in caplog.text
    resume = [m for m in read_metrics(run) if m["kind"] == "resume"]
    assert key in resume[0]["changed"]


class Killed(BaseException):
    """A SIGKILL, simulated: nothing of the run handles it."""


def kill_at_step(monkeypatch, n: int) -> None:
    """The n-th training step of the next session dies before it starts (n=1: as soon as the
    session has set up, its resume record written if it writes one then)."""
    import nanogpt.training.loop

    real, calls = nanogpt.training.loop.train_step, {"n": 0}

    def step(*args):
        calls["n"] += 1
        if calls["n"] == n:
            raise Killed
        return real(*args)

    monkeypatch.setattr(nanogpt.training.loop, "train_step", step)


def test_a_resume_record_says_only_what_steps_ran_with(tmp_path, data_root, monkeypatch):
    """A resume with optim.lr=0.01 killed before its first step recorded the change although no
    step ran at that rate; one killed after a step (before any checkpoint) left a record that the
    next resume repeated. The record is written once a step ran, and a resume that redoes those
    steps drops it with them."""
    run = tmp_path / "run"
    args = ("task.max_iters=4", "task.eval_interval=2")
    train_tiny(run, "task.max_iters=2", "task.eval_interval=2")
    resumes = lambda: [m for m in read_metrics(run) if m["kind"] == "resume"]

    with monkeypatch.context() as m:
        kill_at_step(m, 1)
        with pytest.raises(Killed):
            train_tiny(run, *args, "init_from=resume", "optim.lr=0.01")
    assert resumes() == []  # no step ran at 0.01

    with monkeypatch.context() as m:
        kill_at_step(m, 2)  # one step at 0.01, then killed before the next checkpoint
        with pytest.raises(Killed):
            train_tiny(run, *args, "init_from=resume", "optim.lr=0.01")
    assert [r["changed"] for r in resumes()] == [{"optim.lr": [0.001, 0.01], "task.max_iters": [2, 4]}]

    done = train_tiny(run, *args, "init_from=resume")  # the step at 0.01 is redone at the old rate
    assert done["status"] == "finished" and done["iters"] == 4
    assert [r["changed"] for r in resumes()] == [{"task.max_iters": [2, 4]}]


def test_a_resume_with_the_same_settings_records_nothing(tmp_path, data_root, caplog):
    run = tmp_path / "run"
    train_tiny(run, "task.max_iters=2", "task.eval_interval=2")
    with caplog.at_level(logging.WARNING, "nanogpt"):
        train_tiny(run, "task.max_iters=2", "task.eval_interval=2", "init_from=resume", "hardware.num_threads=1")
    assert "not trained with" not in caplog.text
    assert not [m for m in read_metrics(run) if m["kind"] == "resume"]


def test_another_dataset_of_the_same_vocabulary_is_refused(tmp_path, data_root):
    meta = json.loads((data_root / "tiny_char" / "meta.json").read_text())
    other = "".join(reversed(meta["tokenizer"]["chars"])) * 3000  # the same characters, other text
    write_char_dataset(data_root, "other_char", text=other)
    run = tmp_path / "run"
    train_tiny(run, "task.max_iters=2", "task.eval_interval=2")
    with pytest.raises(UserError, match=r"trained on 'tiny_char'.*data.name=other_char.*new run directory"):
        train_tiny(run, "task.max_iters=4", "task.eval_interval=2", "init_from=resume", "data.name=other_char")


def test_another_dataset_of_another_vocabulary_is_refused_as_a_dataset_not_a_shape(tmp_path, data_root):
    """A char run resumed on data of another alphabet (as data=shakespeare on a char run): its
    vocabulary differs, and the model's shape with it, but what the user changed is the data."""
    write_char_dataset(data_root, "other_char", text="xyz XYZ 0123456789\n" * 2000)
    run = tmp_path / "run"
    train_tiny(run, "task.max_iters=2", "task.eval_interval=2")
    with pytest.raises(UserError) as e:
        train_tiny(run, "task.max_iters=4", "task.eval_interval=2", "init_from=resume", "data.name=other_char")
    assert "trained on 'tiny_char'; this command has data.name=other_char" in str(e.value)
    assert "model shape" not in str(e.value)


def test_init_from_scratch_on_a_run_with_checkpoints_is_an_error(tmp_path, data_root):
    env = {"HYDRA_FULL_ERROR": "0", "NANOGPT_DATA_ROOT": str(data_root)}
    args = ["data.name=tiny_char", *TINY, "hardware.num_threads=1", "task.max_iters=4", "task.eval_interval=2"]
    launch([*args, "run=r"], cwd=tmp_path, env=env)
    stopped = {**summary(tmp_path / "r"), "status": "interrupted"}  # as a stopped run's says
    (tmp_path / "r" / "summary.json").write_text(json.dumps(stopped))
    before = (tmp_path / "r" / ".hydra" / "overrides.yaml").read_text()
    proc = launch([*args, "init_from=scratch", "run=r"], cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "init_from=scratch but " in proc.stderr and "r already has checkpoints (ckpt/last.pt" in proc.stderr
    assert "run=NEW_DIR" in proc.stderr and "leave out init_from=scratch" in proc.stderr
    assert (tmp_path / "r" / ".hydra" / "overrides.yaml").read_text() == before
    assert summary(tmp_path / "r") == stopped
    # the same command without init_from still resumes the run
    launch([*args, "run=r"], cwd=tmp_path, env=env)
    assert summary(tmp_path / "r")["status"] == "finished" and summary(tmp_path / "r")["iters"] == 4
