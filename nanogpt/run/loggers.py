"""The dashboards a run can also log to, beside metrics.jsonl: Weights & Biases (`logger=wandb`),
TensorBoard (`logger=tensorboard`) and MLflow (`logger=mlflow`), any of them at once
(`logger=[wandb,tensorboard,mlflow]`, or the keys logger.wandb=true logger.tensorboard=true ...).

Each is a `Sink` with the same four calls (scalars, summary, samples, finish), started by
`start_sinks`. A dashboard is never worth stopping a run for: one that is not installed or does
not start is a warning, and one whose call fails later (a tracking server gone away) is a warning
and is dropped; metrics.jsonl and summary.json keep everything.

Each is given the same record of the run (`run_record`): the resolved config with the device and
dtype the runtime chose (not `auto`), the presets chosen for each config group, and the overrides
typed on the command line.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from nanogpt.io import replace_atomically
from nanogpt.run.results import flatten

log = logging.getLogger("nanogpt")


def run_record(config: dict, device, dtype, presets: dict | None = None,
               overrides: list | None = None) -> dict:
    """The config the dashboards show: `config` with hardware.device and hardware.dtype as the
    runtime resolved them ("cpu", "bfloat16"), plus `presets` (Hydra's choice per config group)
    and `overrides` (the command line)."""
    record = dict(config)
    hardware = dict(record.get("hardware") or {})
    hardware["device"] = str(device)
    hardware["dtype"] = str(dtype).removeprefix("torch.")
    record["hardware"] = hardware
    record["presets"] = dict(presets or {})
    record["overrides"] = list(overrides or [])
    return record


def numbers(record: dict) -> dict:
    """The plottable values of a record: ints and floats (not bools, not None)."""
    return {k: float(v) for k, v in record.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Sink:
    name = "?"

    def scalars(self, values: dict, step: int | None) -> None: ...

    def summary(self, summary: dict) -> None: ...

    def samples(self, texts: list[str]) -> None: ...

    def finish(self, failed: bool) -> None: ...


# ---- Weights & Biases ------------------------------------------------------------------------
class WandbSink(Sink):
    """A wandb run. Offline, wandb writes only its binary .wandb file until `wandb sync`: the run's
    folder (RUN/wandb/offline-run-*/) also gets config.yaml and summary.json to read meanwhile."""
    name = "Weights & Biases"

    def __init__(self, run, config: dict):
        self.run = run
        self.folder = Path(run.dir).parent  # run.dir is the run's files/ folder
        self._summary: dict = {}
        _write_yaml(self.folder / "config.yaml", config)

    def scalars(self, values, step):
        self.run.log(values, step=step)

    def summary(self, summary):
        figures = {k: v for k, v in summary.items() if k != "config" and not isinstance(v, (dict, list))}
        self.run.summary.update(figures)
        self._summary.update(figures)
        _write_text(self.folder / "summary.json", json.dumps(self._summary, indent=2, default=str) + "\n")

    def samples(self, texts):
        import wandb

        for text in texts:
            self.run.log({"samples": wandb.Html(f"<pre>{_escape(text)}</pre>")})

    def finish(self, failed):
        self.run.finish(exit_code=1 if failed else 0)


def _start_wandb(cfg, run_dir: Path, config: dict):
    try:
        import wandb
    except ImportError:
        log.warning("logger.wandb=true but wandb is not installed (pip install wandb): logging to "
                    "metrics.jsonl only")
        return None
    # the run id is stable per run directory, so a resumed run continues the same wandb run
    run_id = "".join(c if c.isalnum() else "-" for c in run_dir.resolve().as_posix())[-64:].strip("-")
    try:
        run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.name,
                         tags=list(cfg.tags), config=config, dir=str(run_dir), id=run_id,
                         resume="allow", mode=cfg.mode)
    except Exception as e:  # not logged in, no network, a bad entity...
        log.warning("could not start Weights & Biases (%s: %s): logging to metrics.jsonl only. "
                    "Run `wandb login`, or log offline with logger.mode=offline and `wandb sync` "
                    "later", type(e).__name__, _first_line(e))
        return None
    return WandbSink(run, config)


# ---- TensorBoard -----------------------------------------------------------------------------
class TensorBoardSink(Sink):
    """Event files in RUN/tensorboard (`tensorboard --logdir RUN/tensorboard`, or a sweep's folder
    to compare its runs). A resumed run purges the events after its resume point, as
    metrics.jsonl drops their records (TensorBoard's reader drops them on reading)."""
    name = "TensorBoard"

    def __init__(self, run_dir: Path, config: dict, start_iter: int):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"),
                                    purge_step=start_iter + 1 if start_iter > 0 else None)
        self.writer.add_text("config", _markdown_json(config), global_step=start_iter)
        self.writer.flush()

    def scalars(self, values, step):
        for key, value in numbers(values).items():
            self.writer.add_scalar(key, value, global_step=step)

    def summary(self, summary):
        figures = {k: v for k, v in summary.items() if k != "config"}
        self.writer.add_text("summary", _markdown_json(figures), global_step=summary.get("iters"))
        self.writer.flush()

    def samples(self, texts):
        for i, text in enumerate(texts):
            self.writer.add_text("samples", "```\n" + text + "\n```", global_step=i)

    def finish(self, failed):
        self.writer.close()


# ---- MLflow ----------------------------------------------------------------------------------
MLFLOW_RUN_FILE = "mlflow_run.json"  # the run's id at its tracking server: a resume continues it


class MlflowSink(Sink):
    """An MLflow run in experiment logger.project at logger.tracking_uri (else
    $MLFLOW_TRACKING_URI, else MLflow's default). The config goes in as params (dotted keys),
    the presets and overrides as params too, the summary's numbers as metrics and its status as a
    tag."""
    name = "MLflow"

    def __init__(self, client, run_id: str):
        self.client, self.run_id = client, run_id

    def scalars(self, values, step):
        from mlflow.entities import Metric

        now = _now_ms()
        metrics = [Metric(k, v, now, step or 0) for k, v in numbers(values).items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def summary(self, summary):
        from mlflow.entities import Metric, RunTag

        now = _now_ms()
        figures = {k: v for k, v in summary.items() if k != "config"}
        metrics = [Metric(f"summary/{k}", v, now, int(summary.get("iters") or 0))
                   for k, v in numbers(figures).items()]
        tags = [RunTag("status", str(summary.get("status")))] if "status" in summary else []
        self.client.log_batch(self.run_id, metrics=metrics, tags=tags)

    def samples(self, texts):
        self.client.log_text(self.run_id, "".join(t + "\n" for t in texts), "samples.txt")

    def finish(self, failed):
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def _start_mlflow(cfg, run_dir: Path, config: dict):
    try:
        from mlflow import MlflowClient
    except ImportError:
        log.warning("logger.mlflow=true but mlflow is not installed (pip install mlflow): logging to "
                    "metrics.jsonl only")
        return None
    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    try:
        client = MlflowClient(tracking_uri=uri)
        run_id = _mlflow_run(client, cfg, run_dir)
        _log_params(client, run_id, config)
    except Exception as e:  # no server there, a refused connection, a bad URI...
        log.warning("could not start MLflow at %s (%s: %s): logging to metrics.jsonl only. Start a "
                    "tracking server (mlflow server) or set logger.tracking_uri", uri or "MLflow's "
                    "default tracking URI", type(e).__name__, _first_line(e))
        return None
    return MlflowSink(client, run_id)


def _mlflow_run(client, cfg, run_dir: Path) -> str:
    """This run directory's MLflow run: the one it started before (a resume), or a new one."""
    path = run_dir / MLFLOW_RUN_FILE
    uri = client.tracking_uri
    try:
        known = json.loads(path.read_text())
        if known.get("tracking_uri") == uri:
            client.update_run(known["run_id"], status="RUNNING")
            return known["run_id"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    except Exception as e:  # the server lost the run: start a new one
        log.warning("MLflow run %s not found at %s (%s): starting a new one", path, uri, _first_line(e))
    name = cfg.project
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    tags = {"nanogpt.run_dir": str(run_dir.resolve()), **{f"tag.{t}": "1" for t in cfg.tags}}
    run = client.create_run(experiment_id, run_name=cfg.name or run_dir.name, tags=tags)
    _write_text(path, json.dumps({"tracking_uri": uri, "run_id": run.info.run_id}) + "\n")
    return run.info.run_id


def _log_params(client, run_id: str, config: dict) -> None:
    """The config as params, 100 at a time (MLflow's batch limit). A resumed run's params are
    already there, and MLflow refuses to change a param: only new keys are logged."""
    from mlflow.entities import Param

    have = client.get_run(run_id).data.params
    params = {k: v for k, v in flatten(config).items() if k not in have}
    items = [Param(k, _param_value(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def _param_value(v) -> str:
    text = " ".join(map(str, v)) if isinstance(v, list) else str(v)
    return text[:6000]  # MLflow's limit on a param's value


# ---- all of them -----------------------------------------------------------------------------
def start_sinks(cfg, run_dir: Path, config: dict, start_iter: int = 0) -> list[Sink]:
    """The dashboards cfg (a LoggerConfig) asks for that could start; one that fails to (beyond
    the failures each start reports itself: a full disk, an unwritable folder) is a warning."""
    chosen = [(cfg.wandb, "Weights & Biases", lambda: _start_wandb(cfg, run_dir, config)),
              (cfg.tensorboard, "TensorBoard", lambda: _start_tensorboard(run_dir, config, start_iter)),
              (cfg.mlflow, "MLflow", lambda: _start_mlflow(cfg, run_dir, config))]
    sinks = []
    for wanted, name, start in chosen:
        if not wanted:
            continue
        try:
            sinks.append(start())
        except Exception as e:
            log.warning("could not start %s (%s: %s): logging to metrics.jsonl only", name,
                        type(e).__name__, _first_line(e))
    return [s for s in sinks if s is not None]


def _start_tensorboard(run_dir: Path, config: dict, start_iter: int):
    try:
        return TensorBoardSink(run_dir, config, start_iter)
    except ImportError:
        log.warning("logger.tensorboard=true but tensorboard is not installed (pip install "
                    "tensorboard): logging to metrics.jsonl only")
        return None


def call_each(sinks: list[Sink], method: str, *args) -> list[Sink]:
    """Call `method` on each sink; a sink that fails is reported once and dropped (returned list)."""
    kept = []
    for sink in sinks:
        try:
            getattr(sink, method)(*args)
            kept.append(sink)
        except Exception as e:
            log.warning("%s failed (%s: %s): no more logging to it; metrics.jsonl has everything",
                        sink.name, type(e).__name__, _first_line(e))
    return kept


def _markdown_json(d: dict) -> str:
    # TensorBoard renders text as markdown: four-space indent keeps the JSON as code
    text = json.dumps(d, indent=2, default=str)
    return "\n".join("    " + line for line in text.splitlines())


def _write_yaml(path: Path, d: dict) -> None:
    import yaml

    _write_text(path, yaml.safe_dump(json.loads(json.dumps(d, default=str)), sort_keys=False))


def _write_text(path: Path, text: str) -> None:
    replace_atomically(path, text, path.suffix + ".tmp")


def _escape(s: str) -> str:
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0] if str(e) else ""


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
