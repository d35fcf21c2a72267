"""A rejected command leaves an existing run as it was (issue 16, section 5): whatever the
failure, a clear error or a bug with its traceback, the run's .hydra/ files and summary.json
are what they were before the command, and so are its checkpoints."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QUICK, REPO, launch, write_char_dataset


# launch.py with a bug planted in the model's forward pass: the command fails at its first step
BUGGY_LAUNCH = f"""
import runpy, sys
import nanogpt.model
def forward(self, *args, **kwargs):
    raise RuntimeError("a planted bug in the training step")
nanogpt.model.GPT.forward = forward
sys.argv[0] = {str(REPO / 'launch.py')!r}
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("data")
    write_char_dataset(root)
    write_char_dataset(root, "other_char", text="tac eht no tas a tam dna god nar raf yawa\n" * 400)
    return {"HYDRA_FULL_ERROR": "0", "NANOGPT_DATA_ROOT": str(root)}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, env) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    launch([*QUICK, "task.max_iters=4", "task.eval_interval=2", f"run={run}"], cwd=run.parent, env=env)
    return run


def record(run: Path) -> dict:
    """What a failed command must not change: .hydra/, summary.json, checkpoints, metrics."""
    files = [*(run / ".hydra").iterdir(), run / "summary.json", *(run / "ckpt").iterdir(), run / "metrics.jsonl"]
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(files)}


@pytest.mark.parametrize("failure", ["a bug in the first step", "a refused resume", "a bad override value"])
def test_a_failed_command_leaves_the_run_as_it_was(trained_run, tmp_path, env, failure):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = record(run)
    args = [*QUICK, "task.max_iters=8", "task.eval_interval=2", "init_from=resume", f"run={run}"]
    if failure == "a bug in the first step":
        (tmp_path / "buggy.py").write_text(BUGGY_LAUNCH)
        proc = subprocess.run([sys.executable, str(tmp_path / "buggy.py"), *args], cwd=tmp_path,
                              env={**os.environ, **env}, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1 and "a planted bug" in proc.stderr, proc.stderr[-3000:]
    else:
        bad = "data.name=other_char" if failure == "a refused resume" else "hardware.micro_batch_size=3"
        extra = ["task.tokens_per_step=128"] if failure == "a bad override value" else []
        proc = launch([*args, bad, *extra], cwd=tmp_path, env=env, check=False)
        assert proc.returncode == 2 and proc.stderr.startswith("error:"), proc.stderr[-3000:]
    assert record(run) == before
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
