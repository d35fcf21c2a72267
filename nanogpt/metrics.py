"""Where numbers go: the console, metrics.jsonl (always), summary.json, and Weights & Biases (if
asked). Only rank 0 writes; other ranks get a logger that does nothing."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

log = logging.getLogger("nanogpt")


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float | None,
        world_size: int = 1) -> float | None:
    """Model FLOPs utilisation: achieved training FLOP/s over the hardware's peak (per device)."""
    if not peak_flops:
        return None
    return flops_per_token * tokens_per_s / (peak_flops * world_size)


def write_json_atomic(path: Path, obj: dict) -> None:
    tmp = Path(path).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(x):
    if hasattr(x, "item"):
        return x.item()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x)}")


def _finite_or_none(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool = True, wandb_cfg=None, config: dict | None = None):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.wandb = None
        if not enabled:
            return
        self.file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)
        if wandb_cfg is not None and wandb_cfg.wandb:
            self.wandb = _start_wandb(wandb_cfg, self.run_dir, config)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        record = {k: _finite_or_none(v) for k, v in record.items()}
        self.file.write(json.dumps(record, default=_jsonable) + "\n")
        if self.wandb is not None:
            kind = record.get("kind", "train")
            self.wandb.log({f"{kind}/{k}": v for k, v in record.items()
                            if k not in ("kind", "iter") and v is not None}, step=record.get("iter"))

    def summary(self, summary: dict) -> None:
        if not self.enabled:
            return
        write_json_atomic(self.run_dir / "summary.json", summary)
        if self.wandb is not None:
            for k, v in summary.items():
                if k != "config" and not isinstance(v, (dict, list)):
                    self.wandb.summary[k] = v

    def samples(self, text: str) -> None:
        if not self.enabled:
            return
        with open(self.run_dir / "samples.txt", "a") as f:
            f.write(text + "\n")
        if self.wandb is not None:
            import wandb

            self.wandb.log({"samples": wandb.Html(f"<pre>{_escape(text)}</pre>")})

    def close(self) -> None:
        if not self.enabled:
            return
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _start_wandb(cfg, run_dir: Path, config: dict | None):
    try:
        import wandb
    except ImportError:  # never required: say so once and go on without it
        log.warning("logger.wandb=true but wandb is not installed: pip install wandb")
        return None
    # the run id is stable per run directory, so a resumed run continues the same wandb run
    run_id = "".join(c if c.isalnum() else "-" for c in run_dir.resolve().as_posix())[-64:].strip("-")
    return wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.name,
                      tags=list(cfg.tags), config=config, dir=str(run_dir), id=run_id, resume="allow")
