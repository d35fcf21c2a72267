"""The four ways a run's data was lost (issue 16, section 0), each reproduced as it happened:
a losing second launch deleting a fresh run, a kill at the end of a run losing its results,
`nanogpt.hf.export --force` into a run, and best.pt/last.pt sharing one file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QUICK, REPO, USER_ENV, launch
from nanogpt.checkpoint import single as checkpoint
from nanogpt.training import resume



@pytest.fixture
def env(data_root) -> dict:
    return {**USER_ENV, "NANOGPT_DATA_ROOT": str(data_root)}


# ---- the run lock protects a fresh run

def test_a_launch_that_loses_the_lock_leaves_a_fresh_run_alone(tmp_path, env):
    """The winner of two launches on a new directory holds the lock before it has written
    anything else; the loser must neither write into the directory nor remove it."""
    from nanogpt.run.rundir import lock_run

    run = tmp_path / "fresh"
    with lock_run(run):  # the winner, in its first second: its lock and its own .hydra/
        (run / ".hydra").mkdir()
        (run / ".hydra" / "config.yaml").write_text("the winner's config\n")
        proc = launch([*QUICK, "task.max_iters=2", f"run={run}"], cwd=tmp_path, env=env, check=False)
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "is already training in" in proc.stderr and "Traceback" not in proc.stderr
        assert (run / ".lock").exists(), "the loser removed the winner's lock"
        assert (run / ".hydra" / "config.yaml").read_text() == "the winner's config\n"
        assert sorted(p.name for p in (run / ".hydra").iterdir()) == ["config.yaml"]


@pytest.mark.slow
def test_two_launches_on_a_new_directory_at_once_one_trains(tmp_path, env):
    run = tmp_path / "fresh"
    args = [sys.executable, str(REPO / "launch.py"), *QUICK, "task.max_iters=20", "task.eval_interval=10",
            f"run={run}"]
    full_env = {**os.environ, **env, "WANDB_MODE": "offline"}
    procs = [subprocess.Popen(args, cwd=tmp_path, env=full_env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    assert "is already training in" in loser and "Traceback" not in loser
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["iters"] == 20
    assert (run / ".hydra" / "config.yaml").exists()


# ---- the end-of-run window: a kill after the final evaluation

def _summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_a_run_killed_after_its_final_evaluation_keeps_its_final_losses(tmp_path, data_root):
    """A kill between the final evaluation and the summary that says "finished": the same
    command resumes at max_iters and must still report the final losses (not null)."""
    from inprocess import train_tiny

    run = tmp_path / "run"
    args = ("task.max_iters=6", "task.eval_interval=3")
    done = train_tiny(run, *args)
    assert done["status"] == "finished" and done["final_val_loss"] is not None
    summary = _summary(run)
    summary["status"] = "running"  # what the kill leaves: the eval's summary, not the final one
    (run / "summary.json").write_text(json.dumps(summary))
    again = train_tiny(run, *args)
    assert again["status"] == "finished" and again["iters"] == 6
    assert again["final_val_loss"] == done["final_val_loss"]
    assert again["final_train_loss"] == done["final_train_loss"]


def test_a_kill_between_best_and_last_does_not_leave_last_stale(tmp_path, data_root):
    """best.pt is written first, then last.pt: a kill between them leaves last.pt at the
    previous evaluation. Resuming finds the run at max_iters and must bring last.pt up to date."""
    from inprocess import train_tiny

    run, ckpt = tmp_path / "run", tmp_path / "run" / "ckpt"
    train_tiny(run, "task.max_iters=3", "task.eval_interval=3")
    stale = (ckpt / "last.pt").read_bytes()
    args = ("task.max_iters=6", "task.eval_interval=3", "init_from=resume")
    train_tiny(run, *args)
    assert checkpoint.load(ckpt / "best.pt")["iter"] == 6, "the final evaluation must improve here"
    (ckpt / "last.pt").unlink()
    (ckpt / "last.pt").write_bytes(stale)  # as the kill left it
    summary = _summary(run)
    summary["status"] = "running"
    (run / "summary.json").write_text(json.dumps(summary))
    train_tiny(run, *args)
    assert checkpoint.load(ckpt / "last.pt")["iter"] == 6
    assert _summary(run)["status"] == "finished"


class Killed(BaseException):
    """A SIGKILL, simulated in the process: nothing of the run handles it."""


SAMPLED = ("task.max_iters=4", "task.eval_interval=2", "task.num_samples=4", "task.sample_tokens=60")


def _kill_while_generating(monkeypatch):
    import nanogpt.training.loop

    def generate(*args, **kwargs):
        raise Killed
    monkeypatch.setattr(nanogpt.training.loop, "generate_texts", generate)


def _kill_between_printed_samples(monkeypatch):
    import builtins

    real_print, printed = builtins.print, []

    def print_(*args, **kwargs):
        if args and str(args[0]).startswith("---------- sample"):
            printed.append(args[0])
            if len(printed) == 2:
                raise Killed
        real_print(*args, **kwargs)
    monkeypatch.setattr(builtins, "print", print_)


@pytest.mark.parametrize("kill", [_kill_while_generating, _kill_between_printed_samples])
def test_a_run_killed_while_it_writes_its_samples_is_completed_by_the_same_command(tmp_path, data_root,
                                                                                 monkeypatch, kill):
    """The summary said finished before the samples were written: a kill then left a run whose
    re-run had "nothing to do" and no samples.txt, or a samples.txt cut after some samples.
    samples.txt is written whole, and the summary says finished only after it."""
    from inprocess import train_tiny

    reference, run = tmp_path / "reference", tmp_path / "run"
    train_tiny(reference, *SAMPLED)
    with monkeypatch.context() as m:
        kill(m)
        with pytest.raises(Killed):
            train_tiny(run, *SAMPLED)
    assert _summary(run)["status"] != "finished"
    if (run / "samples.txt").exists():  # all of them or none
        assert (run / "samples.txt").read_text() == (reference / "samples.txt").read_text()
    done = train_tiny(run, *SAMPLED)
    assert done["status"] == "finished" and done["final_val_loss"] == _summary(reference)["final_val_loss"]
    assert (run / "samples.txt").read_text() == (reference / "samples.txt").read_text()
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def test_a_finished_run_of_an_older_version_without_its_samples_gets_them(tmp_path, data_root):
    """Its summary says finished (written before the samples), samples.txt is missing: the same
    command writes them rather than saying there is nothing to do."""
    from inprocess import train_tiny

    run = tmp_path / "run"
    train_tiny(run, *SAMPLED)
    samples = (run / "samples.txt").read_text()
    (run / "samples.txt").unlink()
    assert _summary(run)["status"] == "finished"
    again = train_tiny(run, *SAMPLED)
    assert again["status"] == "finished" and (run / "samples.txt").read_text() == samples


def test_a_sharded_run_killed_before_its_consolidation_is_completed_by_the_same_command(tmp_path, data_root,
                                                                                      monkeypatch):
    """FSDP: the summary said finished before ckpt/*.pt were consolidated from the sharded saves,
    so a kill between the two left a finished run that sample, eval and export cannot read."""
    from inprocess import train_tiny

    from nanogpt.checkpoint import sharded as dcp

    run, args = tmp_path / "run", ("task.max_iters=4", "task.eval_interval=2", "hardware.strategy=fsdp")
    with monkeypatch.context() as m:
        def consolidate(run_dir):
            raise Killed
        m.setattr(dcp, "consolidate", consolidate)
        with pytest.raises(Killed):
            train_tiny(run, *args)
    assert _summary(run)["status"] != "finished"
    assert not (run / "ckpt" / "last.pt").exists()
    done = train_tiny(run, *args)
    assert done["status"] == "finished"
    assert dcp.stale_consolidation(run, "last") is None and dcp.stale_consolidation(run, "best") is None
    assert checkpoint.load(run / "ckpt" / "last.pt")["iter"] == 4


# ---- a second Ctrl-C: the summary agrees with the newest checkpoint

def _second_ctrl_c_when(monkeypatch, moment: str) -> None:
    """The first Ctrl-C after the 5th step; the second at `moment` of the stop that follows."""
    import signal

    import torch

    import nanogpt.run.metrics
    import nanogpt.training.loop

    stopping = {"yes": False}
    ctrl_c = lambda: os.kill(os.getpid(), signal.SIGINT)
    real_step, steps = nanogpt.training.loop.train_step, {"n": 0}

    def step(*args):
        loss = real_step(*args)
        steps["n"] += 1
        if steps["n"] == 5:
            stopping["yes"] = True
            ctrl_c()
        return loss
    monkeypatch.setattr(nanogpt.training.loop, "train_step", step)

    def once(real, when):
        def wrapped(*args, **kwargs):
            if stopping["yes"] and when(*args):
                stopping["yes"] = False
                if moment == "before the summary":
                    ctrl_c()
                    return real(*args, **kwargs)
                result = real(*args, **kwargs)
                ctrl_c()
                return result
            return real(*args, **kwargs)
        return wrapped

    if moment == "while last.pt is written":  # its bytes are out, not yet renamed into place
        monkeypatch.setattr(torch, "save", once(torch.save, lambda obj, f: True))
    elif moment == "after last.pt is renamed into place":
        monkeypatch.setattr(checkpoint, "fsync_dir", once(checkpoint.fsync_dir, lambda d: True))
    else:  # before the summary that says interrupted is written
        real = nanogpt.run.metrics.write_json_atomic
        monkeypatch.setattr(nanogpt.run.metrics, "write_json_atomic",
                            once(real, lambda path, obj: obj.get("status") == "interrupted"))


def _newest_checkpoint_iter(run: Path) -> int:
    return max(checkpoint.load(run / "ckpt" / n)["iter"] for n in ("last.pt", "best.pt"))


@pytest.mark.parametrize("moment", ["while last.pt is written", "after last.pt is renamed into place",
                                    "before the summary"])
def test_a_second_ctrl_c_leaves_a_summary_that_agrees_with_the_newest_checkpoint(tmp_path, data_root,
                                                                                 monkeypatch, moment):
    """A second Ctrl-C 50 ms after the first left summary.json at `running, 700` (the last
    evaluation's) while last.pt held iteration 799; at another moment, `failed` at an iteration
    no checkpoint holds. Whatever the moment, it says interrupted at the newest checkpoint's."""
    from inprocess import train_tiny

    run = tmp_path / "run"
    with monkeypatch.context() as m:
        _second_ctrl_c_when(m, moment)
        with pytest.raises(KeyboardInterrupt) as e:
            train_tiny(run, "task.max_iters=20", "task.eval_interval=4")
    newest = _newest_checkpoint_iter(run)
    assert newest == (4 if moment == "while last.pt is written" else 5)
    summary = _summary(run)
    assert (summary["status"], summary["iters"], summary["stop_signal"]) == ("interrupted", newest, "SIGINT")
    assert f"the newest checkpoint (iteration {newest}) is intact" in getattr(e.value, "message", "")
    assert list((run / "ckpt").glob(".*.tmp")) == []
    done = train_tiny(run, "task.max_iters=20", "task.eval_interval=4")  # and it resumes from there
    assert done["status"] == "finished" and done["iters"] == 20


# ---- a signal after the run directory exists, before training

def _start(args: list[str], cwd: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args], cwd=cwd,
                            env={**os.environ, **env, "WANDB_MODE": "offline"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _signal_once(proc: subprocess.Popen, sig, ready) -> tuple[str, str]:
    import time

    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.001)
    proc.send_signal(sig)
    return proc.communicate(timeout=120)


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_before_training_leaves_no_new_run_directory_and_says_so(tmp_path, env, sig):
    """Hydra has made the run directory and written .hydra/; setup is under way. Ctrl-C said
    "checkpoints already written are intact" (there were none) and SIGTERM exited silently, both
    leaving .hydra/, .lock and launch.log behind."""
    import signal

    run = tmp_path / "fresh"
    proc = _start([*QUICK, "task.max_iters=50", f"run={run}"], tmp_path, env)
    _, err = _signal_once(proc, getattr(signal, sig), (run / ".hydra" / "overrides.yaml").exists)
    assert proc.returncode == 128 + getattr(signal, sig), err[-3000:]
    # before the task started (Hydra's set-up) or before training started (nanogpt's)
    assert f"error: interrupted ({sig}) before" in err and "started: no training was done" in err
    assert f"{run}, which this command created, was removed" in err
    assert "Traceback" not in err and "checkpoints already written" not in err
    assert not run.exists()


@pytest.mark.slow
def test_a_signal_before_a_resumed_run_trains_leaves_it_as_it_was(tmp_path, env):
    import signal

    run = tmp_path / "run"
    args = [*QUICK, "task.max_iters=4", "task.eval_interval=2", f"run={run}"]
    launch(args, cwd=tmp_path, env=env)
    (run / "summary.json").write_text(json.dumps({**_summary(run), "status": "interrupted"}))
    kept = lambda: {k: v for k, v in _snapshot(run).items() if k not in ("launch.log", ".lock")}
    before, written = kept(), (run / ".hydra" / "overrides.yaml").stat().st_mtime_ns
    proc = _start([*args, "task.eval_iters=3"], tmp_path, env)  # .hydra/ records another command
    _, err = _signal_once(proc, signal.SIGTERM,
                          lambda: (run / ".hydra" / "overrides.yaml").stat().st_mtime_ns != written)
    assert proc.returncode == 143, err[-3000:]
    assert "error: interrupted (SIGTERM) before" in err and "Traceback" not in err
    assert f"started: no training was done; {run} is as it was, and the same command resumes it from " \
           "its checkpoints" in err
    assert kept() == before


# ---- best.pt and last.pt protect each other

def test_damage_to_last_pt_in_place_falls_back_to_best(tmp_path, data_root):
    """After an improving evaluation both files hold the same iteration; truncating one in
    place (`: > ckpt/last.pt`) must leave the other loadable."""
    from inprocess import train_tiny

    from nanogpt.checkpoint.load import load_run

    run, ckpt = tmp_path / "run", tmp_path / "run" / "ckpt"
    train_tiny(run, "task.max_iters=3", "task.eval_interval=3")
    assert not os.path.samefile(ckpt / "best.pt", ckpt / "last.pt")
    with open(ckpt / "last.pt", "r+b") as f:  # in place: every hard link of it is emptied too
        f.truncate(0)
    path, state = resume.load_latest(run)
    assert path.name == "best.pt" and state["iter"] == 3
    _, state, path = load_run(str(run), "last")
    assert path.name == "best.pt" and state["iter"] == 3


# ---- nanogpt.hf.export never writes into a run

def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture
def small_run(tmp_path) -> Path:
    """A run directory as training leaves it: ckpt/best.pt, ckpt/last.pt, summary.json."""
    import torch

    from nanogpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=1, n_head=2, n_embd=16))
    state = {"model": model.state_dict(), "model_args": vars(model.config), "iter": 10,
             "optimizer": {}, "best_val_loss": 3.0, "config": {"data": {"name": "tiny"}}, "tokenizer": None}
    run = tmp_path / "runs" / "a"
    for name in ("best.pt", "last.pt"):
        checkpoint.atomic_save(state, run / "ckpt" / name)
    (run / "summary.json").write_text('{"status": "finished", "iters": 10}\n')
    return run


def test_export_onto_its_own_run_with_force_is_refused_and_deletes_nothing(small_run):
    before = _snapshot(small_run)
    proc = subprocess.run([sys.executable, "-m", "nanogpt.export", str(small_run), str(small_run), "--force"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert "run directory" in proc.stderr and "outside" in proc.stderr
    assert _snapshot(small_run) == before


@pytest.mark.parametrize("target", ["ckpt", "hf", "..", "../b"])
def test_export_into_beside_or_above_a_run_is_refused(small_run, target):
    from nanogpt.errors import UserError
    from nanogpt.export import main as export_main

    other = small_run.parent / "b"  # another run: "../b" must not replace it either
    (other / "ckpt").mkdir(parents=True)
    (other / "ckpt" / "last.pt").write_bytes(b"b's checkpoint")
    before, before_other = _snapshot(small_run), _snapshot(other)
    with pytest.raises(UserError, match="run directory"):
        export_main([str(small_run), str(small_run / target), "--force"])
    assert _snapshot(small_run) == before and _snapshot(other) == before_other


@pytest.mark.filterwarnings("ignore:.*records no tokenizer")
def test_export_next_to_the_runs_still_works(small_run, tmp_path):
    from nanogpt.export import main as export_main

    out = export_main([str(small_run), str(tmp_path / "exports" / "a")])
    assert (out / "model.safetensors").exists() and (small_run / "ckpt" / "best.pt").exists()


@pytest.mark.filterwarnings("ignore:.*records no tokenizer")
def test_export_force_replaces_an_earlier_export_and_nothing_else(small_run, tmp_path, data_root):
    """--force onto the data root replaced every prepared dataset, and onto a run directory that
    held only .hydra/ replaced it: --force only replaces what an export wrote."""
    proc = subprocess.run([sys.executable, "-m", "nanogpt.export", str(small_run), str(data_root), "--force"],
                          capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {data_root} is not an earlier export")
    assert "Traceback" not in proc.stderr
    assert "--force only replaces a directory that python -m nanogpt.export wrote" in proc.stderr
    assert (data_root / "tiny_char" / "train.bin").exists()

    from nanogpt.errors import UserError
    from nanogpt.export import main as export_main

    starting = tmp_path / "runs" / "starting"  # a run directory as Hydra makes it, before training
    (starting / ".hydra").mkdir(parents=True)
    (starting / ".hydra" / "config.yaml").write_text("a run's config\n")
    with pytest.raises(UserError, match="is not an earlier export"):
        export_main([str(small_run), str(starting), "--force"])
    assert (starting / ".hydra" / "config.yaml").read_text() == "a run's config\n"

    out = tmp_path / "exports" / "a"
    export_main([str(small_run), str(out)])
    (out / "notes.txt").write_text("added to the export")
    export_main([str(small_run), str(out), "--force"])  # an earlier export: replaced as a whole
    assert (out / "model.safetensors").exists() and not (out / "notes.txt").exists()
