"""Checkpoint files: atomic writes that survive a full disk, resuming from the newest file that
loads, and the clean-up after a killed write."""
from __future__ import annotations

import errno
import logging
import os
import signal
import stat

import pytest
import torch

from nanogpt.checkpoint import single as checkpoint
from nanogpt.training import resume
from nanogpt.run import rundir
from nanogpt.checkpoint.load import load_run
from nanogpt.errors import UserError
from nanogpt.training.optim import AdamWConfig
from nanogpt.model import GPT, GPTConfig
from nanogpt.training.optim import make_adamw


def training_state(it: int, seed: int = 0) -> dict:
    """A small but complete resumable checkpoint at iteration `it`."""
    torch.manual_seed(seed)
    cfg = GPTConfig(block_size=8, vocab_size=16, n_layer=1, n_head=1, n_embd=8)
    model = GPT(cfg)
    opt = make_adamw(model, AdamWConfig())  # the layout training saves (resume checks it)
    return {"model": model.state_dict(), "model_args": cfg.__dict__, "optimizer": opt.state_dict(),
            "iter": it, "best_val_loss": 2.0, "tokenizer": {"kind": "char", "chars": list("abcdefghijklmnop")},
            "config": {}}


def watch_checkpoint_writes(monkeypatch, before=None, after=None):
    """Checkpoint files whose every write calls before(data) and after(data), as a disk or a
    signal can cut a write short (either may raise)."""
    real_open = open

    class WatchedFile:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            if before:
                before(data)
            n = self.f.write(data)
            if after:
                after(data)
            return n

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(checkpoint, "open", lambda *a, **k: WatchedFile(real_open(*a, **k)), raising=False)


def fail_writes_after(monkeypatch, nbytes: int, err: int = errno.ENOSPC):
    """Make checkpoint files raise OSError(err) once `nbytes` have been written, as a disk that
    fills up mid-write does."""
    written = [0]

    def fill(data):
        written[0] += len(data)
        if written[0] > nbytes:
            raise OSError(err, os.strerror(err))

    watch_checkpoint_writes(monkeypatch, before=fill)


def test_a_full_disk_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt" / "last.pt"
    checkpoint.atomic_save(training_state(10), path)
    before = path.read_bytes()

    fail_writes_after(monkeypatch, 4096)
    with pytest.raises(UserError) as e:
        checkpoint.atomic_save(training_state(20, seed=1), path)
    msg = str(e.value)
    assert "No space left on device" in msg and "intact" in msg and "free disk space" in msg
    assert path.read_bytes() == before
    assert checkpoint.load(path)["iter"] == 10
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]  # the temp file is gone


def test_an_unwritable_directory_is_a_clear_error(tmp_path, monkeypatch):
    fail_writes_after(monkeypatch, 0, errno.EACCES)
    with pytest.raises(UserError, match="could not write checkpoint .*Permission denied.*permissions"):
        checkpoint.atomic_save(training_state(1), tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_are_readable_by_the_group_as_the_umask_says(tmp_path):
    old = os.umask(0o022)
    try:
        checkpoint.atomic_save(training_state(1), tmp_path / "last.pt")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "last.pt").stat().st_mode) == 0o644


def test_best_and_last_are_two_real_files(tmp_path, monkeypatch):
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    checkpoint.atomic_save(training_state(5), best)
    checkpoint.copy_checkpoint(best, last)
    assert not os.path.samefile(best, last)  # damage to one in place leaves the other
    assert last.read_bytes() == best.read_bytes()

    def no_copy_file_range(*args):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", no_copy_file_range)
    checkpoint.atomic_save(training_state(6), best)
    checkpoint.copy_checkpoint(best, last)
    assert last.read_bytes() == best.read_bytes()
    assert checkpoint.load(last)["iter"] == 6
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def test_a_full_disk_while_copying_best_to_last_keeps_last(tmp_path, monkeypatch):
    best, last = tmp_path / "best.pt", tmp_path / "last.pt"
    checkpoint.atomic_save(training_state(5), last)
    checkpoint.atomic_save(training_state(6), best)
    before = last.read_bytes()

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "copy_file_range", full)
    with pytest.raises(UserError, match="could not write checkpoint .*last.pt: No space left"):
        checkpoint.copy_checkpoint(best, last)
    assert last.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "last.pt"]


def write_run(tmp_path, last_iter=None, best_iter=None):
    ckpt = tmp_path / "ckpt"
    if last_iter is not None:
        checkpoint.atomic_save(training_state(last_iter), ckpt / "last.pt")
    if best_iter is not None:
        checkpoint.atomic_save(training_state(best_iter), ckpt / "best.pt")
    return ckpt


def truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])


def test_resume_falls_back_to_best_when_last_is_corrupt(tmp_path, caplog):
    ckpt = write_run(tmp_path, last_iter=30, best_iter=20)
    truncate(ckpt / "last.pt")
    with caplog.at_level(logging.WARNING, "nanogpt"):
        path, state = resume.load_latest(tmp_path)
    assert path == ckpt / "best.pt" and state["iter"] == 20
    assert "last.pt is corrupt" in caplog.text and "resuming from" in caplog.text


def test_resume_takes_the_newer_of_best_and_last(tmp_path):
    # a kill between writing best.pt and copying it to last.pt leaves best.pt ahead
    write_run(tmp_path, last_iter=20, best_iter=30)
    path, state = resume.load_latest(tmp_path)
    assert path.name == "best.pt" and state["iter"] == 30
    write_run(tmp_path, last_iter=40)
    assert resume.load_latest(tmp_path)[1]["iter"] == 40


def test_resume_with_no_loadable_checkpoint_names_every_file(tmp_path):
    ckpt = write_run(tmp_path, last_iter=30, best_iter=20)
    truncate(ckpt / "last.pt")
    (ckpt / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError) as e:
        resume.load_latest(tmp_path)
    assert "last.pt" in str(e.value) and "best.pt" in str(e.value) and "new run directory" in str(e.value)
    assert resume.load_latest(tmp_path / "elsewhere") == (None, None)


def test_a_model_only_file_does_not_resume(tmp_path):
    state = training_state(3)
    del state["optimizer"]
    checkpoint.atomic_save(state, tmp_path / "ckpt" / "last.pt")
    with pytest.raises(UserError, match="no training state"):
        resume.load_latest(tmp_path)


def test_stale_temp_files_from_a_killed_write_are_removed(tmp_path):
    ckpt = write_run(tmp_path, last_iter=10)
    (ckpt / ".last.pt.1234abcdef.tmp").write_bytes(b"x" * 1000)
    (ckpt / ".best.pt.99.tmp").write_bytes(b"x")
    (ckpt / "notes.txt").write_text("mine")
    removed = rundir.remove_stale_temps(ckpt)
    assert len(removed) == 2
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.pt", "notes.txt"]


def test_sampling_falls_back_to_last_when_best_is_corrupt(tmp_path, caplog):
    ckpt = write_run(tmp_path, last_iter=30, best_iter=20)
    truncate(ckpt / "best.pt", 0.3)
    with caplog.at_level(logging.WARNING, "nanogpt"):
        model, state, path = load_run(str(tmp_path), "best")
    assert path.name == "last.pt" and state["iter"] == 30
    assert "best.pt is corrupt" in caplog.text


def test_sampling_a_run_whose_checkpoints_are_all_corrupt(tmp_path):
    ckpt = write_run(tmp_path, last_iter=30, best_iter=20)
    for name in ("last.pt", "best.pt"):
        truncate(ckpt / name)
    with pytest.raises(UserError) as e:
        load_run(str(tmp_path), "best")
    assert f"no checkpoint of {tmp_path} loads" in str(e.value)
    assert "best.pt is corrupt" in str(e.value) and "last.pt is corrupt" in str(e.value)


def test_a_second_ctrl_c_stops_at_once():
    from nanogpt.training.guards import StopRequest

    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in the background (nohup, &)
    stop = StopRequest()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGINT) is before



def test_a_ctrl_c_inside_torch_save_stays_a_ctrl_c_and_leaves_no_file(tmp_path, monkeypatch):
    """A second Ctrl-C landing inside torch.save (its signal handler raises from the file's
    write, which the zip writer calls): the writer's exit raised RuntimeError ("unexpected pos")
    over the KeyboardInterrupt, and the run ended with a traceback and exit 1 instead of its
    message and 130 (seen in CI)."""
    import torch

    from nanogpt.checkpoint import single as checkpoint

    class Interrupted(KeyboardInterrupt):
        pass

    writes = [0]

    def third_write_interrupted(data):  # once its bytes are out, as a signal handler raises
        writes[0] += 1
        if writes[0] == 3:
            raise Interrupted()

    watch_checkpoint_writes(monkeypatch, after=third_write_interrupted)
    with pytest.raises(Interrupted):
        checkpoint.atomic_save({"w": torch.zeros(1000), "v": torch.ones(1000)}, tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []
