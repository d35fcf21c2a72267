"""task=eval run=RUN writes into the run and leaves no runs/_eval/<overrides>/ beside it (issue 25, item 9)."""
from __future__ import annotations

import shutil

from conftest import launch


def test_eval_of_a_run_leaves_no_extra_folder(tmp_path, trained_run, env):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    proc = launch(["task=eval", f"run={run}", "hardware=cpu", "task.eval_iters=2"], cwd=tmp_path, env=env)
    assert (run / "eval.json").is_file(), proc.stdout
    assert not (tmp_path / "runs").exists(), sorted(p.relative_to(tmp_path) for p in (tmp_path / "runs").rglob("*"))

