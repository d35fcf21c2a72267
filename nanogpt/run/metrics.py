"""Where numbers go: the console, metrics.jsonl (always), summary.json, and the dashboards asked
for (`logger=wandb`, `logger=tensorboard`, `logger=mlflow`, or several: nanogpt/run/loggers.py).
Only rank 0 writes; other ranks get a logger that does nothing. Progress
bars (`progress`) show in a terminal on rank 0 only, never in log files or batch jobs."""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
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


def write_task_record(record: dict, name: str, out: str | None, run: str | None, out_dir: Path) -> Path:
    """An evaluation task's JSON: task.out if given, else beside the run it scored (RUN/name), else
    in the task's own output directory."""
    path = Path(out) if out else (Path(run) / name if run else Path(out_dir) / name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    log.info("wrote %s", path)
    return path


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


# ----------------------------------------------------------------------------------------------
# progress: the one place that says how far a job is and how long it has left

PROGRESS_EVERY_S = 30.0  # a plain progress line in a log file at most this often (env NANOGPT_PROGRESS_EVERY)
HEARTBEAT_EVERY_S = 10.0  # inside a long optimizer step: a line at most this often


def duration(seconds: float) -> str:
    """45s, 29m58s, 3h07m, 2d04h: a time left or taken, to the precision a person reads."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def compact(n: float) -> str:
    """920, 12.3k, 4.1M: a rate or a count, short."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{suffix}"
    return f"{n:.0f}" if abs(n) >= 10 else f"{n:.1f}"


def fraction(done: int, total: int | None) -> str:
    """'50/2000 (2.5%)', or '50' when the total is unknown."""
    if not total:
        return f"{done}"
    return f"{done}/{total} ({100 * done / total:.1f}%)"


def eta(done: float, total: float | None, seconds: float) -> str | None:
    """The time left at the pace so far (`seconds` for `done` units), or None before any."""
    if not total or done <= 0 or seconds <= 0:
        return None
    return duration((total - done) * seconds / done)


def _progress_every() -> float:
    try:
        return float(os.environ.get("NANOGPT_PROGRESS_EVERY", PROGRESS_EVERY_S))
    except ValueError:
        return PROGRESS_EVERY_S


def say(line: str) -> None:
    """A progress line: to the logging handlers inside a launch (the console and the run's log
    file), else to stderr (the prepare scripts, python -m tools, a notebook)."""
    if _in_launch():
        log.info(line)
    else:
        print(line, file=sys.stderr, flush=True)


class Progress:
    """How far a job of `total` units is: a live tqdm bar when stderr is a terminal (rank 0), and
    otherwise (a log file, a SLURM log) a plain line at most every NANOGPT_PROGRESS_EVERY
    seconds (30): `hellaswag: 400/10,042 (4.0%), 12.3 ex/s, ETA 13m04s`. Other ranks: silent.
    `plain=False` leaves log files to the caller (training logs its own periodic lines)."""

    def __init__(self, iterable=None, *, total=None, desc=None, is_main=True, leave=True, unit="it",
                 initial=0, plain=True):
        from tqdm.auto import tqdm

        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc or "progress", unit
        self.terminal = is_main and _is_terminal()
        self.plain = plain and is_main and not self.terminal
        self.bar = tqdm(iterable, total=total, desc=desc, leave=leave, unit=unit, dynamic_ncols=True,
                        initial=initial, disable=not self.terminal)
        self.n, self.initial, self.every = initial, initial, _progress_every()
        self.t0 = self.t_said = time.perf_counter()
        self.said = False

    def __iter__(self):
        for item in (self.iterable if self.iterable is not None else ()):
            yield item
            self.update(1)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.terminal:
            self.bar.update(n)
        elif self.plain and time.perf_counter() - self.t_said >= self.every:
            self._say()

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        done = self.n - self.initial
        parts = [f"{self.desc}: {fraction(self.n, self.total)}"]
        if elapsed > 0 and done > 0:
            parts.append(f"{compact(done / elapsed)} {self.unit}/s")
            left = eta(done, (self.total or 0) - self.initial, elapsed)
            if left is not None and self.n < (self.total or 0):
                parts.append(f"ETA {left}")
        return ", ".join(parts)

    def _say(self) -> None:
        say(self.line())
        self.t_said, self.said = time.perf_counter(), True

    def close(self) -> None:
        self.bar.close()
        if self.plain and self.said:  # a job that printed progress says when it is done
            say(self.line() + f", done in {duration(time.perf_counter() - self.t0)}")
            self.said = False

    def __getattr__(self, name):  # set_postfix, refresh, ...: the bar's (a no-op when disabled)
        if "bar" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.__dict__["bar"], name)


def _in_launch() -> bool:
    """Is this a `python launch.py` job (Hydra configured its logging)?"""
    if "hydra" not in sys.modules:
        return False
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.initialized()


def _is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable=None, *, total=None, desc=None, is_main=True, leave=True, unit="it", initial=0,
             plain=True) -> Progress:
    """A `Progress` (tqdm bar on a terminal, plain periodic lines in logs): iterate it, or
    `with progress(total=N) as bar: bar.update(k)`."""
    return Progress(iterable, total=total, desc=desc, is_main=is_main, leave=leave, unit=unit,
                    initial=initial, plain=plain)


class Heartbeat:
    """Inside an optimizer step of many micro-batches (32,768 tokens/step on a CPU: over a minute
    per step), a line at most every HEARTBEAT_EVERY_S seconds, so a log never goes quiet for
    minutes: `iter 3/20: micro-batch 12/32, 11s into the step`. Call it before each micro-batch."""

    def __init__(self, max_iters: int, every: float | None = None):
        self.max_iters = max_iters
        self.every = min(HEARTBEAT_EVERY_S, _progress_every()) if every is None else every
        self.t_step = self.t_said = time.perf_counter()

    def __call__(self, it: int, micro: int, accum: int) -> None:
        now = time.perf_counter()
        if micro == 0:
            self.t_step = self.t_said = now
        elif now - self.t_said >= self.every:
            say(f"iter {it + 1}/{self.max_iters}: micro-batch {micro + 1}/{accum}, "
                f"{duration(now - self.t_step)} into the step")
            self.t_said = now


class SweepTally:
    """A sweep's points as they finish: `sweep: 3 of 6 points done, 1 failed, ETA 12m04s`
    (the SLURM launcher and the local one, nanogpt.run.sweep, print it as each point ends)."""

    def __init__(self, total: int | None):
        self.total, self.done, self.failed = total, 0, 0
        self.t0 = time.perf_counter()

    def add(self, failed: bool = False) -> str:
        self.done += 1
        self.failed += bool(failed)
        return self.line()

    def line(self) -> str:
        of = f" of {self.total}" if self.total else ""
        left = eta(self.done, self.total, time.perf_counter() - self.t0)
        more = f", ETA {left}" if left and self.total and self.done < self.total else ""
        return f"sweep: {self.done}{of} points done, {self.failed} failed{more}"


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
