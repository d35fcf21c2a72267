"""docs/researchers_day.md, executed: every line of its bash blocks, in order, in an empty
directory, shrunk by its `# tiny:` settings, so the page cannot drift from the commands."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess

import pytest
from conftest import REPO

PAGE = REPO / "docs" / "researchers_day.md"


def page_commands(text: str) -> list[str]:
    """The page's commands as the test runs them: each line of its ```bash blocks, with the
    settings of its `# tiny:` comment applied."""
    commands = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, re.S | re.M):
        for line in block.splitlines():
            command, _, tiny = line.partition("# tiny:")
            if command.strip() and not command.lstrip().startswith("#"):
                commands.append(shrink(command.strip(), tiny.split()))
    return commands


def shrink(command: str, tiny: list[str]) -> str:
    """COMMAND with each tiny setting: `key=value` replaces the line's setting of that key, and
    `--flag value` the flag's value; a setting the line lacks is added."""
    words = shlex.split(command)
    i = 0
    while i < len(tiny):
        setting = tiny[i]
        if setting.startswith("--"):
            value, i = tiny[i + 1], i + 2
            if setting in words:
                words[words.index(setting) + 1] = value
            else:
                words += [setting, value]
            continue
        key, i = setting.split("=", 1)[0] + "=", i + 1
        same = [j for j, w in enumerate(words) if w.startswith(key)]
        if same:
            words[same[0]] = setting
        else:
            words.append(setting)
    # quoted again for bash, but a glob (sweeps/A/0_*) stays a glob
    return " ".join(w if re.fullmatch(r"[\w./=*-]+", w) else shlex.quote(w) for w in words)


def test_tiny_settings_replace_the_pages_and_add_the_rest():
    assert shrink("python launch.py -m model=baby 'seed=range(3)' sweep_name=s", ["seed=range(2)", "task.max_iters=5"]) == \
        "python launch.py -m model=baby 'seed=range(2)' sweep_name=s task.max_iters=5"
    assert shrink("python -m nanogpt.scaling compare a b --target 1.5", ["--target", "4.5", "--loss", "best"]) == \
        "python -m nanogpt.scaling compare a b --target 4.5 --loss best"
    assert shrink("python -m nanogpt.plot s/0_* --out x.png", []) == "python -m nanogpt.plot s/0_* --out x.png"


def test_the_page_walks_the_whole_day():
    """Each step of the day is on the page (and so run by the slow test below)."""
    text = "\n".join(page_commands(PAGE.read_text()))
    for step in ("python prepare/pydoc_char.py", "logger=tensorboard", "task=eval run=", "nanogpt.export",
                 "model.path=hf_out", "-m experiment=scaling/", "nanogpt.scaling collect", "nanogpt.scaling fit",
                 "nanogpt.runs", "seed=range(2)", "nanogpt.scaling compare", "nanogpt.plot"):
        assert step in text, step


@pytest.mark.slow
def test_a_researchers_day_runs_as_the_page_says(tmp_path):
    """The page's commands, in order, in an empty directory (launch.py, conf/ and prepare/ linked
    in, as in a clone; data under it): each exits 0, and what the page says each writes is there."""
    for name in ("launch.py", "conf", "prepare"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "PYTHONPATH": str(REPO), "NANOGPT_DATA_ROOT": str(tmp_path / "data"),
           "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline"}
    for command in page_commands(PAGE.read_text()):
        proc = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    sweep = tmp_path / "sweeps" / "isoflop_tiny"
    written = ["data/pydoc_char/meta.json", "runs/baseline/eval.json", "hf_out/config.json",
               "runs/finetuned/summary.json", sweep / "runs.csv", sweep / "isoflops.png", "recipes.png"]
    for path in written:
        assert (tmp_path / path).is_file(), path
    assert list((tmp_path / "runs" / "baseline" / "tensorboard").glob("events.out.tfevents.*"))
    finetuned = json.loads((tmp_path / "runs" / "finetuned" / "summary.json").read_text())
    assert finetuned["config"]["model"]["n_embd"] == 32  # the exported baseline's shape, not the preset's 768
    assert len(list((tmp_path / "sweeps" / "seeds_modern").glob("*/summary.json"))) == 2
