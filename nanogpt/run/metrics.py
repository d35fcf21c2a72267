"""Where numbers go: the console, metrics.jsonl (always), summary.json, and Weights & Biases (if
asked: `logger=wandb`). Only rank 0 writes; other ranks get a logger that does nothing. Progress
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

log = logging.getLogger("nanogpt")


@dataclass
class LoggerConfig:
    """metrics.jsonl is always written; `logger=wandb` (or logger.wandb=true) adds Weights & Biases."""
    wandb: bool = False
    mode: Optional[str] = None  # online | offline | disabled; None: $WANDB_MODE, else online
    project: str = "nanogpt"
    entity: Optional[str] = None
    name: Optional[str] = None  # None: the run directory's name
    tags: list = field(default_factory=list)

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
    too: it described a session whose steps are redone now (this session records its own)."""

    def __init__(self, run_dir: Path, enabled: bool = True, wandb_cfg=None, config: dict | None = None,
                 start_iter: int = 0):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.wandb = None
        if not enabled:
            return
        path = self.run_dir / "metrics.jsonl"
        _keep_until(path, start_iter)
        self.file = open(path, "a", buffering=1)
        if wandb_cfg is not None and wandb_cfg.wandb:
            self.wandb = _start_wandb(wandb_cfg, self.run_dir, config)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: _finite_or_none(v) for k, v in record.items()}
        self.file.write(json.dumps(record, default=_jsonable) + "\n")
        if self.wandb is not None:
            kind = record.get("kind", "train")
            scalars = {f"{kind}/{k}": v for k, v in record.items()  # a resume's changes stay in the file
                       if k not in ("kind", "iter") and isinstance(v, (int, float, str))}
            if scalars:
                self.wandb.log(scalars, step=record.get("iter"))

    def summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        write_json_atomic(self.run_dir / "summary.json", summary)
        if self.wandb is not None:  # the figures; the config went to wandb.init
            self.wandb.summary.update({k: v for k, v in summary.items()
                                       if k != "config" and not isinstance(v, (dict, list))})

    def samples(self, texts: list[str]) -> None:
        """samples.txt: the run's samples, all at once (atomically: a kill leaves all or none)."""
        if not self.enabled:
            return
        write_text_atomic(self.run_dir / "samples.txt", "".join(text + "\n" for text in texts))
        if self.wandb is not None:
            import wandb

            for text in texts:
                self.wandb.log({"samples": wandb.Html(f"<pre>{_escape(text)}</pre>")})

    def close(self, failed: bool = False) -> None:
        if not self.enabled or self.file.closed:
            return
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish(exit_code=1 if failed else 0)
            self.wandb = None


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


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _start_wandb(cfg, run_dir: Path, config: dict | None):
    """A wandb run, or None (with a warning) when wandb is missing or does not start: metrics.jsonl
    has everything, and a days-long run is not worth stopping for a dashboard."""
    try:
        import wandb
    except ImportError:
        log.warning("logger.wandb=true but wandb is not installed (pip install wandb): logging to "
                    "metrics.jsonl only")
        return None
    # the run id is stable per run directory, so a resumed run continues the same wandb run
    run_id = "".join(c if c.isalnum() else "-" for c in run_dir.resolve().as_posix())[-64:].strip("-")
    try:
        return wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.name,
                          tags=list(cfg.tags), config=config, dir=str(run_dir), id=run_id,
                          resume="allow", mode=cfg.mode)
    except Exception as e:  # not logged in, no network, a bad entity...
        log.warning("could not start Weights & Biases (%s: %s): logging to metrics.jsonl only. "
                    "Run `wandb login`, or log offline with logger.mode=offline and `wandb sync` "
                    "later", type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        return None
