"""The four ways a run's data was lost (issue 16, section 0), each reproduced as it happened:
a losing second launch deleting a fresh run, a kill at the end of a run losing its results,
`nanogpt.export --force` into a run, and best.pt/last.pt sharing one file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY, launch
from nanogpt import checkpoint

QUICK = ["data.name=tiny_char", *TINY, "hardware.num_threads=1"]
USER_ENV = {"HYDRA_FULL_ERROR": "0"}


@pytest.fixture
def env(data_root) -> dict:
    return {**USER_ENV, "NANOGPT_DATA_ROOT": str(data_root)}


# ---- the run lock protects a fresh run

def test_a_launch_that_loses_the_lock_leaves_a_fresh_run_alone(tmp_path, env):
    """The winner of two launches on a new directory holds the lock before it has written
    anything else; the loser must neither write into the directory nor remove it."""
    from nanogpt.rundir import lock_run

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


# ---- best.pt and last.pt protect each other

def test_damage_to_last_pt_in_place_falls_back_to_best(tmp_path, data_root):
    """After an improving evaluation both files hold the same iteration; truncating one in
    place (`: > ckpt/last.pt`) must leave the other loadable."""
    from inprocess import train_tiny

    from nanogpt.build import load_run

    run, ckpt = tmp_path / "run", tmp_path / "run" / "ckpt"
    train_tiny(run, "task.max_iters=3", "task.eval_interval=3")
    assert not os.path.samefile(ckpt / "best.pt", ckpt / "last.pt")
    with open(ckpt / "last.pt", "r+b") as f:  # in place: every hard link of it is emptied too
        f.truncate(0)
    path, state = checkpoint.load_latest(run)
    assert path.name == "best.pt" and state["iter"] == 3
    _, state, path = load_run(str(run), "last")
    assert path.name == "best.pt" and state["iter"] == 3


# ---- nanogpt.export never writes into a run

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


def test_export_force_replaces_an_earlier_export_and_nothing_else(small_run, tmp_path, data_root):
    """--force onto the data root replaced every prepared dataset, and onto a run directory that
    held only .hydra/ replaced it: --force only replaces what an export wrote."""
    proc = subprocess.run([sys.executable, "-m", "nanogpt.export", str(small_run), str(data_root), "--force"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"error: {data_root} is not an earlier export") and "Traceback" not in proc.stderr
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
    with pytest.warns(UserWarning, match="records no tokenizer"):
        export_main([str(small_run), str(out)])
        (out / "notes.txt").write_text("added to the export")
        export_main([str(small_run), str(out), "--force"])  # an earlier export: replaced as a whole
    assert (out / "model.safetensors").exists() and not (out / "notes.txt").exists()
