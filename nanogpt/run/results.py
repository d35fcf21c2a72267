"""Reading what a run directory records: summary.json, metrics.jsonl, .hydra/config.yaml.

Every tool that reads results (the scaling fits, the plots, the notebooks) reads them through
these functions, never from logs.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

from nanogpt.errors import UserError

RUN_MARKERS = (".hydra", "summary.json", "metrics.jsonl")


def _natural_key(path: Path):
    # Hydra numbers sweep jobs 0_, 1_, ..., 10_: sort 2_ before 10_
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def find_run_dirs(paths) -> list[Path]:
    """Every run directory under `paths` (a directory holding .hydra/, summary.json or
    metrics.jsonl), following symlinks; a path that is itself a run directory counts as one."""
    found, seen = [], set()
    for root in map(Path, paths):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such directory")
        # symlinked runs count (a folder of links picking runs from several sweeps); each real
        # directory is visited once, so a link cycle or a run reached twice is harmless
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:
                dirnames.clear()
                continue
            seen.add(real)
            if any(m in filenames or m in dirnames for m in RUN_MARKERS):
                found.append(Path(dirpath))
                dirnames.clear()  # a run's own subdirectories (.hydra, ckpt) hold no runs
    return sorted(set(found), key=_natural_key)


def read_metrics(run_dir) -> list[dict]:
    """The JSON lines of run_dir/metrics.jsonl ([] when absent). A truncated last line (the run
    died mid-write) is ignored; a corrupt line elsewhere is an error."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON object ({e})") from None
    return records


def read_summary(run_dir, strict: bool = False) -> dict | None:
    """run_dir/summary.json, or None when there is none. A garbled one (a run killed while writing
    it, a hand edit): for a collector (strict=False) a warning, and the run counts as incomplete;
    for a run about to train again (strict=True) a UserError that says what to do."""
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
        if not isinstance(summary, dict):
            raise ValueError("not a JSON object")
        return summary
    except (ValueError, UnicodeDecodeError) as e:
        if strict:
            raise UserError(f"{path} is not a valid summary ({e}). Move it aside (the checkpoints in "
                            f"{Path(run_dir) / 'ckpt'} are what resumes the run) and run the same "
                            "command again") from e
        warnings.warn(f"{path} is not valid JSON ({e}); treating the run as incomplete")
        return None


def read_config(run_dir, summary: dict | None = None) -> dict:
    """The run's config: summary.json's resolved copy, else Hydra's .hydra/config.yaml (whose
    interpolations stay unresolved strings), else {}."""
    summary = read_summary(run_dir) if summary is None else summary
    if summary and isinstance(summary.get("config"), dict):
        return summary["config"]
    path = Path(run_dir) / ".hydra" / "config.yaml"
    if path.exists():
        import yaml
        return yaml.safe_load(path.read_text()) or {}
    return {}


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested config as dotted keys: {"optim": {"lr": 1}} -> {"optim.lr": 1}."""
    flat = {}
    for k, v in d.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat
