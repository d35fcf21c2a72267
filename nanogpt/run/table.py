"""The runs table (`python -m nanogpt.runs PATH...`): one row per run, with a short name, its
status, val loss, bits per byte, tokens, FLOPs, wall time, and the settings in which it differs
from the others.

The rows are built from the runs as nanogpt.scaling.collect reads them (`Run`: summary.json,
metrics.jsonl and .hydra/, nothing from logs); this module only names, compares, sorts and
formats them, so it reads any object with those attributes.
"""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from nanogpt.errors import UserError
from nanogpt.run.identity import NOT_IN_RUN_NAME
from nanogpt.run.results import flatten

FORMATS = ("table", "csv", "markdown")
COLUMNS = ("run", "status", "val_loss", "best_val_loss", "val_bpb", "tokens", "flops", "wall_time_s", "differs")
# settings that describe where or how a run was recorded, not what it trained
NOT_A_DIFFERENCE = set(NOT_IN_RUN_NAME) | {"presets", "overrides"}
MAX_NAME = 32


@dataclass
class Row:
    run: str
    status: str
    val_loss: float
    best_val_loss: float
    val_bpb: float
    tokens: float
    flops: float
    wall_time_s: float
    differs: str
    run_dir: str


def rows(runs) -> list[Row]:
    """One Row per run (a nanogpt.scaling.collect.Run), named and compared with the others."""
    names = short_names([r.run_dir for r in runs])
    differences = differing_settings([getattr(r, "config", {}) or {} for r in runs])
    return [Row(run=name, status=r.status, val_loss=r.final_val_loss, best_val_loss=r.best_val_loss,
                val_bpb=r.final_val_bpb, tokens=r.D, flops=r.C, wall_time_s=r.wall_time_s,
                differs=" ".join(f"{k}={_value(v)}" for k, v in diff.items()), run_dir=r.run_dir)
            for name, r, diff in zip(names, runs, differences)]


# ---- names -----------------------------------------------------------------------------------
def short_names(run_dirs: list[str]) -> list[str]:
    """Each run's path below the runs' common folder, each part that is an override string
    ("3_model.n_layer=4,optim.lr=0.001", Hydra's naming) cut to its job number ("3"), or to its
    values' last key parts ("n_layer=4,lr=0.001"), at most MAX_NAME characters."""
    if len(run_dirs) == 1:
        parts = [[Path(run_dirs[0]).name]]
    else:
        common = os.path.commonpath([os.path.abspath(d) for d in run_dirs])
        parts = [Path(os.path.relpath(os.path.abspath(d), common)).parts for d in run_dirs]
    return ["/".join(_short_part(p) for p in path) or "." for path in parts]


def _short_part(part: str) -> str:
    if "=" not in part:
        return _cut(part)
    job = re.match(r"(\d+)_", part)
    if job:
        return job.group(1)
    compact = ",".join(_last_key(item) for item in part.split(","))
    return _cut(compact)


def _last_key(item: str) -> str:
    key, sep, value = item.partition("=")
    return f"{key.rsplit('.', 1)[-1]}{sep}{value}"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_NAME else text[:MAX_NAME - 1] + "…"


# ---- what differs ----------------------------------------------------------------------------
def differing_settings(configs: list[dict]) -> list[dict]:
    """Per config, the settings (dotted keys) whose values are not the same in every config that
    has them (an older run may lack a newer key), in the configs' key order, leaving out those
    that do not change what is trained (where the run was written, the dashboards, threads...)."""
    flat = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flat for k in f))
    varying = [k for k in keys if not _recorded_only(k)
               and len({repr(f[k]) for f in flat if k in f}) > 1]
    names = _shortest_unique(varying)
    return [{names[k]: f.get(k) for k in varying if k in f} for f in flat]


def _recorded_only(key: str) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in NOT_A_DIFFERENCE for i in range(1, len(parts) + 1))


def _shortest_unique(keys: list[str]) -> dict[str, str]:
    """Each dotted key by its shortest tail that no other key shares (optim.lr -> lr)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if sum(k == tail or k.endswith("." + tail) for k in keys) == 1:
                names[key] = tail
                break
        else:
            names[key] = key
    return names


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v)


# ---- sorting and formatting ------------------------------------------------------------------
def sort_rows(table: list[Row], key: str, descending: bool = False) -> list[Row]:
    """By a column (`-column`, or descending: largest first); a missing value goes last either way."""
    descending = descending or key.startswith("-")
    column = key.lstrip("-")
    if column not in COLUMNS:
        raise UserError(f"unknown sort key {column!r}: use one of {', '.join(COLUMNS)} "
                        "(a leading - sorts descending)")
    present = [r for r in table if not _missing(getattr(r, column))]
    absent = [r for r in table if _missing(getattr(r, column))]
    present.sort(key=lambda r: _natural(getattr(r, column)), reverse=descending)
    return present + absent


def _missing(v) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def _natural(v):
    if isinstance(v, str):  # job numbers sort 2 before 10
        return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", v)]
    return v


def render(table: list[Row], fmt: str = "table") -> str:
    if fmt == "csv":  # raw numbers, for a spreadsheet or pandas
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow([*COLUMNS, "run_dir"])
        for r in table:
            writer.writerow(["" if _missing(v) else v for v in (*(getattr(r, c) for c in COLUMNS), r.run_dir)])
        return out.getvalue().rstrip("\n")
    header = ["run", "status", "val loss", "best val", "bits/byte", "tokens", "FLOPs", "wall time", "differs"]
    cells = [[r.run, r.status, _fixed(r.val_loss), _fixed(r.best_val_loss), _fixed(r.val_bpb),
              _count(r.tokens), _count(r.flops), _duration(r.wall_time_s), r.differs] for r in table]
    if fmt == "markdown":
        lines = [header, ["---"] * len(header), *cells]
        return "\n".join("| " + " | ".join(c.replace("|", "\\|") for c in line) + " |" for line in lines)
    if fmt != "table":
        raise UserError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    right = {2, 3, 4, 5, 6, 7}  # numbers line up on the right
    return "\n".join("  ".join(c.rjust(w) if i in right else c.ljust(w)
                               for i, (c, w) in enumerate(zip(line, widths))).rstrip()
                     for line in [header, *cells])


def _fixed(v) -> str:
    return "-" if _missing(v) else f"{v:.4f}"


def _count(v) -> str:
    """512, 51.2k, 1.2M, 3.4e+18: short, and exact below ten thousand."""
    if _missing(v):
        return "-"
    if abs(v) < 1e4 or abs(v) >= 1e15:
        return f"{v:g}" if abs(v) < 1e4 else f"{v:.3g}"
    size, suffix = next((size, suffix) for size, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
                        if abs(v) >= size)
    return f"{v / size:.3g}{suffix}"


def _duration(seconds) -> str:
    if _missing(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return "{}m{:02d}s".format(*divmod(round(seconds), 60))
    hours, m = divmod(round(seconds / 60), 60)
    return f"{hours}h{m:02d}m"


def counts(table: list[Row]) -> str:
    """The runs by status: 5 runs: 3 finished, 1 failed, 1 incomplete."""
    by_status: dict[str, int] = {}
    for r in table:
        by_status[r.status] = by_status.get(r.status, 0) + 1
    return f"{len(table)} run{'s' * (len(table) != 1)}: " + ", ".join(f"{n} {s}" for s, n in by_status.items())
