"""Hydra's own flags through launch.py: tab completion and --help (issue 25, item 5)."""
from __future__ import annotations

import re

import pytest
from conftest import REPO, USER_ENV, launch


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


def _conf_groups() -> dict[str, list[str]]:
    """Each group under conf/ (but Hydra's own) and its options: the YAML files in its folder."""
    conf = REPO / "conf"
    groups: dict[str, list[str]] = {}
    for f in conf.rglob("*.yaml"):
        group = f.parent.relative_to(conf).as_posix()
        if group != "." and not group.startswith("hydra"):
            groups.setdefault(group, []).append(f.stem)
    return {g: sorted(options) for g, options in groups.items()}


def test_help_lists_only_the_options_a_user_can_choose(tmp_path):
    """--help's groups are exactly the YAML files under conf/<group>/ (the schemas the group files
    extend were once listed too: model: base_model, baby, ...)."""
    proc = launch(["--help"], cwd=tmp_path, env=USER_ENV, check=False)
    assert proc.returncode == 0, proc.stderr
    listed = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = dict(re.findall(r"^(\S+): (.*)$", listed, re.M))
    assert {g: sorted(o.split(", ")) for g, o in groups.items()} == _conf_groups()
    assert "modern_baby" in groups["model"] and "hellaswag" in groups["task"]


def _complete(line: str, cwd) -> list[str]:
    """What bash's tab completion offers for LINE: launch.py -sc query=bash reads it from COMP_LINE."""
    proc = launch(["-sc", "query=bash"], cwd=cwd, env={**USER_ENV, "COMP_LINE": line}, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


@pytest.mark.parametrize("group", ["model", "optim", "task"])
def test_tab_completion_offers_only_the_groups_options(tmp_path, group):
    offered = _complete(f"python launch.py {group}=", tmp_path)
    assert sorted(o.split("=", 1)[1] for o in offered) == _conf_groups()[group], offered


def test_tab_completion_offers_no_schema_as_a_group(tmp_path):
    """The schemas live at the root of Hydra's config store, not in a group of their own (a
    `schema/` group would be offered beside model and data)."""
    offered = _complete("python launch.py ", tmp_path)
    assert "model" in offered and "data=" in offered, offered
    assert not [o for o in offered if "schema" in o or "base_" in o], offered
