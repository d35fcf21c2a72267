"""Progress and time left: training's log lines, a long step's micro-batches, evaluation and
preparation bars that become plain periodic lines in a log file (issue 25, items 2 and 4)."""
from __future__ import annotations

import io
import re
import sys

import pytest
from conftest import QUICK, launch, needs_slurm
from test_prepare import RANK_FILE, needs_ranks, run_script

from nanogpt.run.metrics import Progress, duration, progress


def test_training_lines_show_iteration_of_max_percent_rate_and_eta(tmp_path, data_root):
    proc = launch([*QUICK, "task.max_iters=4", "task.eval_interval=4", f"run={tmp_path / 'run'}"], cwd=tmp_path)
    lines = [line for line in proc.stdout.splitlines() if ": loss " in line]
    assert len(lines) == 4, proc.stdout
    assert re.search(r"iter 2/4 \(50\.0%\): loss [\d.]+, lr \S+, [\d.]+ ms/iter, [\d.]+k? tok/s(, mfu [\d.]+%)?, ETA \d+s$",
                     lines[1]), lines[1]
    assert "iter 4/4 (100.0%)" in lines[3] and "ETA" not in lines[3]  # nothing left at the end


def test_a_step_of_many_micro_batches_says_how_far_it_is(tmp_path, data_root):
    """32,768 tokens/step on a CPU is over a minute per step: the log must not go quiet. Here
    every micro-batch line is due at once (NANOGPT_PROGRESS_EVERY=0; by default ~10 s apart)."""
    proc = launch([*QUICK, "task.max_iters=1", "task.eval_interval=1", "task.tokens_per_step=384",
                   f"run={tmp_path / 'run'}"], cwd=tmp_path, env={"NANOGPT_PROGRESS_EVERY": "0"})
    assert "iter 1/1: micro-batch 2/3, 0s into the step" in proc.stdout, proc.stdout
    assert "iter 1/1: micro-batch 3/3" in proc.stdout


def test_bars_become_plain_periodic_lines_in_a_log_file(monkeypatch):
    log_file = io.StringIO()  # not a terminal: a log file, a SLURM log
    monkeypatch.setattr(sys, "stderr", log_file)
    monkeypatch.setenv("NANOGPT_PROGRESS_EVERY", "0")
    with progress(total=4, desc="hellaswag", unit="ex") as bar:
        for _ in range(4):
            bar.update(1)
    lines = log_file.getvalue().splitlines()
    assert lines[0].startswith("hellaswag: 1/4 (25.0%), ") and " ex/s, ETA " in lines[0], lines
    assert "\r" not in log_file.getvalue()
    assert lines[-1].startswith("hellaswag: 4/4 (100.0%)") and ", done in " in lines[-1]

    monkeypatch.setenv("NANOGPT_PROGRESS_EVERY", "30")  # the default pace: a short job prints nothing
    log_file.truncate(0)
    list(progress(range(3), desc="eval val"))
    assert log_file.getvalue() == ""


def test_durations_read_as_a_person_writes_them():
    assert [duration(s) for s in (4.6, 61, 1798, 11300, 200000)] == ["5s", "1m01s", "29m58s", "3h08m", "2d07h"]
    assert isinstance(progress(total=1), Progress)


@needs_ranks
def test_preparation_shows_progress_in_a_log(tmp_path):
    """prepare/owt.py tokenizing, its stderr a file: plain progress lines, no carriage returns."""
    from test_prepare_hf import make_docs, write_parquet_layout

    write_parquet_layout(tmp_path / "owt", make_docs(30))
    proc = run_script("owt", "--data-files", str(tmp_path / "owt" / "plain_text" / "*.parquet"),
                      "--out-dir", tmp_path / "o", "--num-proc", "1", "--rank-file", RANK_FILE,
                      env={"NANOGPT_PROGRESS_EVERY": "0"})
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^tokenizing: \d+/30 \([\d.]+%\)", proc.stderr, re.M), proc.stderr
    assert "tokenizing: 30/30 (100.0%)" in proc.stderr and ", done in " in proc.stderr and "\r" not in proc.stderr


def test_a_local_sweep_says_how_many_points_are_done_and_failed(tmp_path, data_root):
    """Point 0 fails (a batch that is no multiple of the micro-batch), point 1 trains."""
    proc = launch(["-m", *QUICK, "task.max_iters=2", "task.eval_interval=2", "sweep_name=s",
                   "task.tokens_per_step=100,128"], cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out  # the failed point fails the sweep, as before
    assert "sweep: 1 of 2 points done, 1 failed" in out, out[-3000:]
    assert "sweep: 2 of 2 points done, 1 failed" in out, out[-3000:]


class FakeJob:
    def __init__(self, done_at: int, fails: bool):
        self.polls, self.done_at, self.fails = 0, done_at, fails

    def done(self):
        self.polls += 1
        return self.polls >= self.done_at

    def results(self):
        from hydra.core.utils import JobReturn, JobStatus

        if self.fails == "cancelled":
            raise RuntimeError("no result: the job was cancelled")
        return [JobReturn(status=JobStatus.FAILED if self.fails else JobStatus.COMPLETED)]


def test_a_slurm_sweep_reports_points_in_the_order_they_finish():
    from hydra_plugins.nanogpt_slurm_launcher import wait_for_jobs

    lines = []
    wait_for_jobs([FakeJob(3, False), FakeJob(1, True), FakeJob(2, False), FakeJob(4, "cancelled")], poll_s=0,
                  report=lines.append)
    assert [line.split(", ETA")[0] for line in lines] == [
        "sweep: 1 of 4 points done, 1 failed", "sweep: 2 of 4 points done, 1 failed",
        "sweep: 3 of 4 points done, 1 failed", "sweep: 4 of 4 points done, 2 failed"]


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_training_draws_a_live_bar_on_a_terminal_only(tmp_path, data_root, monkeypatch):
    from inprocess import train_tiny

    monkeypatch.setattr(sys, "stderr", Terminal())
    train_tiny(tmp_path / "run", "task.max_iters=4", "task.eval_interval=4")
    assert re.search(r"train: 100%.*4/4", sys.stderr.getvalue()), sys.stderr.getvalue()[-2000:]

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: the periodic lines only
    train_tiny(tmp_path / "run2", "task.max_iters=4", "task.eval_interval=4")
    assert "train:" not in sys.stderr.getvalue()


@pytest.mark.slurm
@needs_slurm
def test_a_slurm_sweep_says_how_many_points_are_done_and_failed(tmp_path, data_root):
    """Before: the job list, then nothing until the sweep returned."""
    proc = launch(["-m", "hydra/launcher=slurm_cpu", *QUICK, "task.max_iters=2", "task.eval_interval=2",
                   "sweep_name=s", "task.tokens_per_step=100,128"], cwd=tmp_path, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]  # point 0 fails, and fails the sweep as before
    assert "sweep: 1 of 2 points done" in out and "sweep: 2 of 2 points done, 1 failed" in out, out[-3000:]
