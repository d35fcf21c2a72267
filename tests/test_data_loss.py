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
