"""Hydra's own flags through launch.py: tab completion and --help (issue 25, item 5)."""
from __future__ import annotations

import re

from conftest import USER_ENV, launch


def test_shell_completion_install_is_not_taken_for_a_config_key(tmp_path):
    proc = launch(["-sc", "install=bash"], cwd=tmp_path, env=USER_ENV, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "unknown config key" not in proc.stderr
    assert "complete" in proc.stdout  # bash's `complete -o nospace -o default -F ...` line


def test_flags_with_arguments_are_hydras(tmp_path):
    """The argument of a Hydra flag (--config-name NAME, -cn NAME) is not a key; a typo after
    the flags is still caught."""
    proc = launch(["--cfg", "job", "-p", "model", "model.n_layer=3"], cwd=tmp_path, env=USER_ENV, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "n_layer: 3" in proc.stdout
    proc = launch(["--cfg", "job", "model.n_layers=3"], cwd=tmp_path, env=USER_ENV, check=False)
    assert proc.returncode == 2 and "Did you mean 'model.n_layer'?" in proc.stderr


def test_help_lists_only_the_options_a_user_can_choose(tmp_path):
    proc = launch(["--help"], cwd=tmp_path, env=USER_ENV, check=False)
    assert proc.returncode == 0, proc.stderr
    groups = proc.stdout.split("== Config ==")[0]
    assert re.search(r"^model: .*modern_baby", groups, re.M), groups
    assert re.search(r"^task: .*hellaswag", groups, re.M), groups
    assert "base_" not in groups, groups
