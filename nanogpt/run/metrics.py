"""Where numbers go: the console, metrics.jsonl (always), summary.json, and the dashboards asked
for (`logger=wandb`, `logger=tensorboard`, `logger=mlflow`, or several: nanogpt/run/loggers.py).
Only rank 0 writes; other ranks get a logger that does nothing. Progress
bars (`progress`) show in a terminal on rank 0 only, never in log files or batch jobs."""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from nanogpt.config import one_of
from nanogpt.io import replace_atomically
from nanogpt.run import loggers

log = logging.getLogger("nanogpt")


@dataclass
class LoggerConfig:
    """metrics.jsonl is always written; `logger=wandb`, `logger=tensorboard`, `logger=mlflow` (or
    the keys logger.wandb=true ...) add dashboards, several at once with `logger=[wandb,mlflow]`."""
    wandb: bool = False
    tensorboard: bool = False  # event files in RUN/tensorboard
    mlflow: bool = False
    mode: Optional[str] = None  # wandb: online | offline | disabled; None: $WANDB_MODE, else online
    project: str = "nanogpt"  # the wandb project, the MLflow experiment
    entity: Optional[str] = None  # wandb
    name: Optional[str] = None  # None: the run directory's name
    tags: list = field(default_factory=list)
    tracking_uri: Optional[str] = None  # MLflow; None: $MLFLOW_TRACKING_URI, else MLflow's default

    def __post_init__(self):
        if self.mode is not None:
            one_of("logger.mode", self.mode, ("online", "offline", "disabled"))


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float | None,
        world_size: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak (per device)."""
    if not peak_flops:
        return None
    return flops_per_token * tokens_per_s / (peak_flops * world_size)


def write_json_atomic(path: Path, obj: dict) -> None:
    replace_atomically(Path(path), json.dumps(obj, indent=2, default=_jsonable) + "\n", ".json.tmp")


def write_text_atomic(path: Path, text: str) -> None:
    """path holds text, whole, or what it held before: never a part (samples.txt)."""
    path = Path(path)
    replace_atomically(path, text, path.suffix + ".tmp")


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def progress(iterable=None, *, total=None, desc=None, is_main=True, leave=True, unit="it"):
    """A tqdm bar on rank 0 when stderr is a terminal; silent otherwise (disable=None asks tqdm
    to check for a TTY), so logs and batch jobs get no carriage-return noise."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=leave, unit=unit, dynamic_ncols=True,
                disable=None if is_main else True)


class MetricsLogger:
    """start_iter: the iteration a run starts (or resumes) at. metrics.jsonl keeps the records of
    iterations up to a resumed checkpoint and drops the later ones, which the run is about to
    redo, so the file reads as if the run had never stopped. A resume record of start_iter goes
    too: it described a session whose steps are redone now (this session records its own).
    logger_cfg (a LoggerConfig) adds the dashboards (nanogpt/run/loggers.py), each given `config`."""

    def __init__(self, run_dir: Path, enabled: bool = True, logger_cfg=None, config: dict | None = None,
                 start_iter: int = 0):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.sinks: list[loggers.Sink] = []
        if not enabled:
            return
        path = self.run_dir / "metrics.jsonl"
        _keep_until(path, start_iter)
        self.file = open(path, "a", buffering=1)
        if logger_cfg is not None:
            self.sinks = loggers.start_sinks(logger_cfg, self.run_dir, config or {}, start_iter)

    @property
    def wandb(self):
        """The wandb run, or None."""
        return next((s.run for s in self.sinks if isinstance(s, loggers.WandbSink)), None)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: _finite_or_none(v) for k, v in record.items()}
        self.file.write(json.dumps(record, default=_jsonable) + "\n")
        if self.sinks:
            kind = record.get("kind", "train")
            scalars = {f"{kind}/{k}": v for k, v in record.items()  # a resume's changes stay in the file
                       if k not in ("kind", "iter") and isinstance(v, (int, float, str))}
            if scalars:
                self.sinks = loggers.call_each(self.sinks, "scalars", scalars, record.get("iter"))

    def summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        write_json_atomic(self.run_dir / "summary.json", summary)
        # the figures; the config went to each dashboard as it started
        self.sinks = loggers.call_each(self.sinks, "summary", json.loads(json.dumps(summary, default=_jsonable)))

    def samples(self, texts: list[str]) -> None:
        """samples.txt: the run's samples, all at once (atomically: a kill leaves all or none)."""
        if not self.enabled:
            return
        write_text_atomic(self.run_dir / "samples.txt", "".join(text + "\n" for text in texts))
        self.sinks = loggers.call_each(self.sinks, "samples", texts)

    def close(self, failed: bool = False) -> None:
        if not self.enabled or self.file.closed:
            return
        self.file.close()
        loggers.call_each(self.sinks, "finish", failed)
        self.sinks = []


def _keep_until(path: Path, start_iter: int) -> None:
    """Rewrite metrics.jsonl with the records of iterations <= start_iter of a resumed run (none for
    a fresh start; no resume record of start_iter), also dropping a line torn by a crash (the last
    one, silently) and any line that is not a record (with a warning: one bad line must not stop
    every resume of the run)."""
    if not path.exists():
        return
    kept = []
    if start_iter > 0:
        lines = path.read_text(errors="replace").splitlines()
        for number, line in enumerate(lines, 1):
            record = _record(line)
            if record is None:
                if line.strip() and number < len(lines):
                    log.warning("%s line %d is not a metrics record (a JSON object with an integer iter): "
                                "left out: %.80s", path, number, line)
                continue
            it = record.get("iter", 0)
            if it < start_iter or (it == start_iter and record.get("kind") != "resume"):
                kept.append(line + "\n")
    replace_atomically(path, "".join(kept), ".jsonl.tmp")


def _record(line: str) -> dict | None:
    """A metrics.jsonl line as a record, or None: not JSON, not an object, or an iter that is no
    whole number."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    it = record.get("iter", 0)
    return record if isinstance(it, int) and not isinstance(it, bool) else None
