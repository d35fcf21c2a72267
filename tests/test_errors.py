"""Every bad input a user can give the app, as the user meets it: `python launch.py ...` exits
with a non-zero status and one message that says what to do, no traceback, nothing of an
existing run overwritten, and no run directory left behind by a rejected command.
docs/errors.md lists these cases; keep the two in step."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import QUICK, launch, write_char_dataset
from nanogpt.checkpoint import single as checkpoint



@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, env) -> Path:
    """Ten iterations (checkpoints at 5 and 10), not conftest's four: resumes here start at 10."""
    run = tmp_path_factory.mktemp("trained") / "run"
    launch([*QUICK, "task.max_iters=10", "task.eval_interval=5", f"run={run}"], cwd=run.parent, env=env)
    return run


@pytest.fixture
def run(trained_run, tmp_path) -> Path:
    """A private copy of a finished run."""
    copy = tmp_path / "run"
    shutil.copytree(trained_run, copy)
    return copy


def snapshot(run: Path) -> dict:
    """Every file of a run and its content hash (launch.log only grows; .lock names its holder)."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and p.name not in ("launch.log", ".lock")}


def rejected(args, cwd: Path, env: dict, code: int = 2) -> str:
    """Run a command that must fail; return its stderr."""
    proc = launch(args, cwd=cwd, env=env, check=False)
    assert proc.returncode == code, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr


def assert_no_run_left(cwd: Path):
    assert not (cwd / "runs").exists(), f"a rejected command left {list((cwd / 'runs').rglob('*'))}"


# ---- the command line (rejected before any work: nothing is created)

def test_unknown_key_names_the_valid_ones(tmp_path, env):
    err = rejected([*QUICK, "model.n_layers=4"], tmp_path, env)
    assert "unknown config key 'model.n_layers'. Did you mean 'model.n_layer'?" in err
    assert "n_head" in err and "block_size" in err
    assert_no_run_left(tmp_path)


def test_unknown_group_option_lists_the_options(tmp_path, env):
    err = rejected([*QUICK, "model=gpt3"], tmp_path, env, code=1)
    assert "Could not find 'model/gpt3'" in err and "gpt2_124m" in err and "baby" in err
    assert_no_run_left(tmp_path)


def test_a_value_of_the_wrong_type_names_key_and_type(tmp_path, env):
    err = rejected([*QUICK, "model.n_layer=four"], tmp_path, env, code=1)
    assert "n_layer" in err and "'four'" in err and "Integer" in err
    assert_no_run_left(tmp_path)


def test_unknown_init_from(tmp_path, env):
    err = rejected([*QUICK, "init_from=resum"], tmp_path, env)
    assert "unknown init_from='resum': use scratch, resume or pretrained" in err
    assert_no_run_left(tmp_path)


# values that took the machine down, crashed with a traceback or failed after training
LATE_CRASHES = [
    (["optim.lr=nan"], "optim.lr=nan is not a finite number: use a finite value"),
    (["optim.lr=inf"], "optim.lr=inf is not a finite number: use a finite value"),
    (["optim.weight_decay=nan"], "optim.weight_decay=nan is not a finite number: use a finite value"),
    (["optim=muon", "optim.embed_lr=nan"], "optim.embed_lr=nan is not a finite number: use a finite value"),
    (["task.max_flops=inf"], "task.max_flops=inf is not a finite number: use a finite value"),
    (["model.mlp_ratio=inf"], "model.mlp_ratio=inf is not a finite number: use a finite value"),
    (["model.logit_softcap=inf"], "model.logit_softcap=inf is not a finite number: use a finite value"),
    (["task.temperature=nan", "task.num_samples=1"],
     "task.temperature=nan is not a finite number: use a finite value"),
    ([f"seed={2**64}"], f"seed={2**64} is out of range: it must be <= {2**63 - 1}"),
    (["hardware.num_threads=100000"], "hardware.num_threads=100000 is out of range: this machine has "),
]


@pytest.mark.parametrize("args, message", LATE_CRASHES, ids=[" ".join(a) for a, _ in LATE_CRASHES])
def test_a_value_that_would_crash_late_is_refused_before_any_directory(tmp_path, env, args, message):
    base = [a for a in QUICK if not a.startswith("hardware.num_threads=")]
    err = rejected([*base, *args, "task.max_iters=4", "task.eval_interval=2"], tmp_path, env)
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1, err
    assert_no_run_left(tmp_path)


# ---- data and model that do not fit together

def test_missing_data_names_the_prepare_command(tmp_path, env):
    args = [a for a in QUICK if not a.startswith("data.name=")]
    err = rejected([*args, "data=shakespeare_char", f"data.root={tmp_path / 'empty'}"], tmp_path, env)
    assert "python prepare/shakespeare_char.py" in err
    assert_no_run_left(tmp_path)


def test_a_missing_train_bin_names_the_prepare_command(tmp_path, env):
    data = write_char_dataset(tmp_path / "data", "shakespeare_char")
    (data / "train.bin").unlink()
    err = rejected([*QUICK, "data.name=shakespeare_char", f"data.root={tmp_path / 'data'}"], tmp_path, env)
    assert "train.bin" in err and "python prepare/shakespeare_char.py" in err
    assert_no_run_left(tmp_path)


def test_data_vocabulary_larger_than_the_model(tmp_path, env):
    err = rejected([*QUICK, "model.vocab_size=8"], tmp_path, env)
    assert "the data's vocabulary" in err and "larger than the model's vocab_size (8)" in err
    assert_no_run_left(tmp_path)


def test_block_size_larger_than_a_split(tmp_path, env):
    err = rejected([*QUICK, "model.block_size=20000"], tmp_path, env)
    assert "block_size 20000 is larger than the val split" in err and "smaller model.block_size" in err
    assert_no_run_left(tmp_path)


def test_resume_without_a_checkpoint(tmp_path, env):
    err = rejected([*QUICK, "init_from=resume"], tmp_path, env)
    assert "init_from=resume but" in err and "has no checkpoint" in err and "init_from=scratch" in err
    assert_no_run_left(tmp_path)


# ---- an existing run: nothing of it may change

def test_another_model_shape_leaves_the_run_untouched(run, tmp_path, env):
    before = snapshot(run)
    err = rejected([*QUICK, "model.n_layer=3", "task.max_iters=20", "init_from=resume", f"run={run}"],
                   tmp_path, env)
    assert "made with another model shape (n_layer: checkpoint 2 vs config 3)" in err
    assert snapshot(run) == before  # checkpoints and .hydra/config.yaml as they were


def test_relaunching_a_finished_run_changes_nothing(run, tmp_path, env):
    before = snapshot(run)
    proc = launch([*QUICK, "task.max_iters=10", "task.eval_interval=5", f"run={run}"], cwd=tmp_path, env=env)
    assert "already finished" in proc.stdout and "init_from=resume" in proc.stdout
    # .hydra/ records the latest launch, as for any launch that is not rejected
    results = lambda snap: {k: v for k, v in snap.items() if not k.startswith(".hydra/")}
    assert results(snapshot(run)) == results(before)


def test_corrupt_checkpoints_are_an_error_and_stay_for_inspection(run, tmp_path, env):
    for name in ("last.pt", "best.pt"):
        (run / "ckpt" / name).unlink()  # break the hard link, then write garbage
        (run / "ckpt" / name).write_bytes(b"\0" * 1000)
    before = snapshot(run)
    err = rejected([*QUICK, "task.max_iters=20", "init_from=resume", f"run={run}"], tmp_path, env)
    assert f"no checkpoint of {run} loads" in err and "corrupt" in err and "new run directory" in err
    assert snapshot(run) == before


@pytest.mark.slow
def test_a_corrupt_last_checkpoint_resumes_from_best(run, tmp_path, env):
    last = run / "ckpt" / "last.pt"
    data = last.read_bytes()
    last.unlink()
    last.write_bytes(data[: len(data) // 2])  # torn, as a copy cut short leaves it
    proc = launch([*QUICK, "task.max_iters=15", "task.eval_interval=5", "init_from=resume", f"run={run}"],
                  cwd=tmp_path, env=env)
    assert "last.pt is corrupt or incomplete" in proc.stdout and "resuming from" in proc.stdout
    assert checkpoint.load(last)["iter"] == 15  # and the next save replaced the bad file


@pytest.mark.slow
def test_a_nan_on_resume_stops_and_keeps_the_checkpoints(run, tmp_path, env):
    before = snapshot(run)
    err = rejected([*QUICK, "task.max_iters=30", "task.eval_interval=5", "optim.lr=1e8", "optim.grad_clip=0",
                    "init_from=resume", f"run={run}"], tmp_path, env)
    assert re.search(r"error: the training loss became NaN or infinite at iteration 1\d \(last good "
                     r"training loss: \d", err)
    assert "optim.lr" in err
    after = snapshot(run)
    assert {k: v for k, v in after.items() if k.startswith("ckpt/")} == \
           {k: v for k, v in before.items() if k.startswith("ckpt/")}
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


def test_sampling_a_run_without_checkpoints(tmp_path, env):
    (tmp_path / "empty_run").mkdir()
    err = rejected(["task=sample", "run=empty_run", "hardware=cpu"], tmp_path, env)
    assert "empty_run has no checkpoint" in err and "train it first" in err
    err = rejected(["task=sample", "run=no_such_run", "hardware=cpu"], tmp_path, env)
    assert "run directory no_such_run does not exist" in err
    assert_no_run_left(tmp_path)


# ---- storage: an unwritable place, a full disk (real filesystems: needs root to mount them)

def mount_tmpfs(path: Path, options: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    except OSError as e:  # no mount command
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip() or 'not root'})")


@pytest.fixture
def mounts():
    mounted = []
    yield lambda path, options: (mount_tmpfs(path, options), mounted.append(path))
    for path in reversed(mounted):
        subprocess.run(["umount", str(path)], check=False)


def test_an_unwritable_run_directory_is_refused_before_anything_starts(tmp_path, env, mounts):
    mounts(tmp_path / "ro", "ro,size=1m")
    err = rejected([*QUICK, f"run={tmp_path / 'ro' / 'run'}"], tmp_path, env)
    assert f"cannot write to the run directory {tmp_path / 'ro' / 'run'}" in err
    assert "Read-only file system" in err and "run=DIR" in err


@pytest.mark.slow
def test_a_full_disk_keeps_the_last_checkpoint_and_resumes_once_there_is_room(tmp_path, env, trained_run, mounts):
    # room for best.pt and last.pt (two real files) and the run's small files, not for the temp
    # file of the next checkpoint
    size = (trained_run / "ckpt" / "last.pt").stat().st_size
    disk = tmp_path / "disk"
    mounts(disk, f"size={int(size * 2.5) // 4096 * 4096 + 64 * 1024}")
    run = disk / "run"
    args = [*QUICK, "task.max_iters=20", "task.eval_interval=5", "task.always_save_checkpoint=true"]
    err = rejected([*args, f"run={run}"], tmp_path, env)
    assert "could not write checkpoint" in err and "No space left on device" in err and "intact" in err
    assert checkpoint.load(run / "ckpt" / "last.pt")["iter"] == 5
    assert list((run / "ckpt").glob(checkpoint.TEMP_GLOB)) == []  # the partial file is not left to fill the disk
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"

    subprocess.run(["mount", "-o", f"remount,size={20 * size}", str(disk)], check=True)
    proc = launch([*args, f"run={run}"], cwd=tmp_path, env=env)  # the same command resumes
    assert "resuming from" in proc.stdout
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"


def test_a_full_disk_outside_a_checkpoint_is_a_message_too(tmp_path, env, mounts):
    # the run's own small files fill the disk before any checkpoint: metrics.jsonl hits ENOSPC
    disk = tmp_path / "disk"
    mounts(disk, "size=64k")
    err = rejected([*QUICK, "task.max_iters=100000", "task.eval_interval=100000", f"run={disk / 'run'}"],
                   tmp_path, env)
    assert "error: No space left on device" in err and "Free disk space" in err
    assert "No space left on device: ." not in err  # the message names what it was writing
    assert not list(disk.rglob("*.tmp")), list(disk.rglob("*"))  # no half-written summary or metrics


def test_a_disk_already_full_at_launch_is_a_message_and_leaves_nothing(tmp_path, env, mounts):
    disk = tmp_path / "disk"
    mounts(disk, "size=256k")
    (disk / "filler").write_bytes(b"\0" * (256 * 1024 - 8192))  # a few blocks left: Hydra's .hydra/ may fit
    proc = launch([*QUICK, "task.max_iters=3", f"run={disk / 'run'}"], cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert f"error: no space left on the disk of the run directory {disk / 'run'}: free disk space" in proc.stderr
    assert not (disk / "run").exists()  # nothing left behind: not even .hydra/


def test_ctrl_c_while_the_launcher_imports_is_a_message_not_a_traceback(tmp_path, env):
    import os
    import signal
    import sys
    import time

    from conftest import REPO

    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *QUICK], cwd=tmp_path,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # torch is still importing
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert "error: interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
