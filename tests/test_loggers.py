"""The dashboards beside metrics.jsonl (nanogpt/run/loggers.py): TensorBoard read back with
TensorBoard's own reader, MLflow against a real tracking server this module starts, Weights &
Biases offline with a readable config and summary before any sync; several at once; each with the
resolved device and dtype, the chosen presets and the command line."""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import QUICK, launch, read_metrics
from inprocess import make_config
from nanogpt.run import loggers
from nanogpt.run.metrics import MetricsLogger

# the device and dtype left for the runtime to choose: the record must say what it chose
AUTO = ["hardware.device=auto", "hardware.dtype=auto"]
SHORT = [*QUICK, "task.max_iters=4", "task.eval_interval=2", "task.num_samples=1", "task.sample_tokens=10", *AUTO]


def _header_device_dtype(out: str) -> tuple[str, str]:
    """The device and dtype the run's header line reports ("... | cpu bfloat16 compile=False")."""
    [line] = [line for line in out.splitlines() if "compile=" in line and "tokens/step" in line]
    words = line.split("compile=")[0].split()
    return words[-2], words[-1]


def _assert_is_the_record_of(config: dict, device: str, dtype: str, overrides: list[str]) -> None:
    assert (config["hardware"]["device"], config["hardware"]["dtype"]) == (device, dtype)
    assert "auto" not in (device, dtype)
    assert config["presets"]["model"] == "baby" and config["presets"]["task"] == "train"
    assert config["overrides"] == overrides
    assert config["model"]["n_layer"] == 2


# ---- TensorBoard and Weights & Biases, at once -----------------------------------------------
@pytest.fixture(scope="module")
def tb_and_wandb_run(tmp_path_factory, env):
    run = tmp_path_factory.mktemp("loggers") / "run"
    args = [*SHORT, "logger=[wandb,tensorboard]", f"run={run}"]
    proc = launch(args, cwd=run.parent, env={**env, "WANDB_MODE": "offline"})
    return run, args, _header_device_dtype(proc.stdout + proc.stderr)


@pytest.mark.slow
def test_tensorboard_event_files_read_back_with_tensorboards_reader(tb_and_wandb_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, args, (device, dtype) = tb_and_wandb_run
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    records = read_metrics(run)
    logged = {e.step: e.value for e in events.Scalars("train/loss")}
    assert logged == pytest.approx({r["iter"]: r["loss"] for r in records if r["kind"] == "train"})
    assert [e.step for e in events.Scalars("eval/val_loss")] == [0, 2, 4]

    def text(tag):
        return events.Tensors(f"{tag}/text_summary")[-1].tensor_proto.string_val[0].decode()

    _assert_is_the_record_of(json.loads(text("config")), device, dtype, args)
    summary = json.loads((run / "summary.json").read_text())
    assert json.loads(text("summary"))["final_val_loss"] == summary["final_val_loss"]
    assert (run / "samples.txt").read_text().strip() in text("samples")


@pytest.mark.slow
def test_wandb_offline_folder_has_a_readable_config_and_summary_before_sync(tb_and_wandb_run):
    import yaml

    run, args, (device, dtype) = tb_and_wandb_run
    (folder,) = (run / "wandb").glob("offline-run-*")
    _assert_is_the_record_of(yaml.safe_load((folder / "config.yaml").read_text()), device, dtype, args)
    summary = json.loads((folder / "summary.json").read_text())
    final = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final_val_loss"] == final["final_val_loss"]
    assert "config" not in summary


def test_a_resumed_run_replaces_the_tensorboard_events_it_redoes(tmp_path):
    """As metrics.jsonl keeps the records up to the checkpoint a run resumes from, TensorBoard's
    reader shows the steps after it once, from the run that redid them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = make_config(["logger=tensorboard"]).logger
    for start, losses in ((0, {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}), (2, {3: 13.0, 4: 14.0, 5: 15.0})):
        logger = MetricsLogger(tmp_path, True, cfg, {}, start_iter=start)
        for it, loss in losses.items():
            logger.log({"kind": "train", "iter": it, "loss": loss})
        logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    expected = {1: 1.0, 2: 2.0, 3: 13.0, 4: 14.0, 5: 15.0}
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == list(expected.items())
    assert {r["iter"]: r["loss"] for r in read_metrics(tmp_path)} == expected


# ---- MLflow, against a tracking server of its own ----------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on a free local port with a SQLite store, until the module's tests are done
    (about a minute to start on a busy two-core machine: its database migrations)."""
    mlflow = shutil.which("mlflow") or pytest.skip("the mlflow command is not installed (pip install mlflow)")
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log_file = open(root / "server.log", "w")
    server = subprocess.Popen([mlflow, "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                               "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1"],
                              stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not _answers(url):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"mlflow server did not start (see {root / 'server.log'}): "
                            f"{(root / 'server.log').read_text()[-300:]}")
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, 15)  # the server and its uvicorn worker, which this fixture started
        server.wait(timeout=60)
        log_file.close()


@pytest.mark.slow
def test_mlflow_logs_params_metrics_and_status_to_a_tracking_server_and_a_resume_continues_its_run(
        tmp_path, env, mlflow_server):
    from mlflow import MlflowClient

    run = tmp_path / "run"
    args = [*SHORT, "logger=mlflow", f"logger.tracking_uri={mlflow_server}", "logger.project=tiny", f"run={run}"]
    proc = launch(args, cwd=tmp_path, env=env)
    device, dtype = _header_device_dtype(proc.stdout + proc.stderr)

    client = MlflowClient(mlflow_server)
    run_id = json.loads((run / "mlflow_run.json").read_text())["run_id"]
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED" and record.info.run_name == "run"
    assert client.get_experiment(record.info.experiment_id).name == "tiny"
    params = record.data.params
    assert (params["hardware.device"], params["hardware.dtype"]) == (device, dtype) and "auto" not in (device, dtype)
    assert params["presets.model"] == "baby" and params["model.n_layer"] == "2"
    assert params["overrides"] == " ".join(args)
    summary = json.loads((run / "summary.json").read_text())
    assert record.data.tags["status"] == "finished"
    assert record.data.metrics["summary/final_val_loss"] == pytest.approx(summary["final_val_loss"])

    def train_losses():
        return {m.step: m.value for m in client.get_metric_history(run_id, "train/loss")}

    assert train_losses() == pytest.approx({r["iter"]: r["loss"] for r in read_metrics(run) if r["kind"] == "train"})

    # training it further continues the same MLflow run (its params, which MLflow never changes, stay)
    launch([*args, "init_from=resume", "task.max_iters=6"], cwd=tmp_path, env=env)
    assert json.loads((run / "mlflow_run.json").read_text())["run_id"] == run_id
    assert sorted(train_losses()) == [1, 2, 3, 4, 5, 6]
    assert client.get_run(run_id).info.status == "FINISHED"


def test_an_mlflow_server_that_does_not_answer_is_a_warning_not_a_failure(tmp_path, monkeypatch, caplog):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    cfg = make_config(["logger=mlflow", f"logger.tracking_uri={url}"]).logger
    with caplog.at_level(logging.WARNING, "nanogpt"):
        logger = MetricsLogger(tmp_path, True, cfg, {})
        logger.log({"kind": "train", "iter": 1, "loss": 2.5})
        logger.close()
    assert logger.sinks == []
    assert f"could not start MLflow at {url} (" in caplog.text and "logger.tracking_uri" in caplog.text
    assert read_metrics(tmp_path) == [{"kind": "train", "iter": 1, "loss": 2.5}]


# ---- every dashboard -------------------------------------------------------------------------
@pytest.mark.parametrize("module, key", [("torch.utils.tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_dashboard_that_is_not_installed_is_a_warning_not_a_failure(module, key, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, module, None)  # not installed
    with caplog.at_level(logging.WARNING, "nanogpt"):
        logger = MetricsLogger(tmp_path, True, make_config([f"logger={key}"]).logger, {})
        logger.log({"kind": "train", "iter": 1, "loss": 2.5})
        logger.close()
    assert logger.sinks == []
    assert f"logger.{key}=true but {key} is not installed (pip install {key}): logging to metrics.jsonl only" \
        in caplog.text
    assert read_metrics(tmp_path) == [{"kind": "train", "iter": 1, "loss": 2.5}]


def test_a_dashboard_that_fails_mid_run_is_dropped_with_one_warning(tmp_path, monkeypatch, caplog):
    calls = []

    def disk_full(self, values, step):
        calls.append(step)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loggers.TensorBoardSink, "scalars", disk_full)
    with caplog.at_level(logging.WARNING, "nanogpt"):
        logger = MetricsLogger(tmp_path, True, make_config(["logger=tensorboard"]).logger, {})
        for it in (1, 2):
            logger.log({"kind": "train", "iter": it, "loss": 2.5})
        logger.summary({"status": "finished"})
        logger.close()
    assert calls == [1]
    assert caplog.text.count("TensorBoard failed (OSError: [Errno 28] No space left on device)") == 1
    assert [r["iter"] for r in read_metrics(tmp_path)] == [1, 2]


def test_a_dashboard_that_cannot_write_its_files_is_a_warning_not_a_failure(tmp_path, caplog):
    (tmp_path / "tensorboard").write_text("a file where the event folder would go")
    with caplog.at_level(logging.WARNING, "nanogpt"):
        logger = MetricsLogger(tmp_path, True, make_config(["logger=tensorboard"]).logger, {})
        logger.log({"kind": "train", "iter": 1, "loss": 2.5})
        logger.close()
    assert logger.sinks == [] and "could not start TensorBoard (FileExistsError: " in caplog.text
    assert read_metrics(tmp_path) == [{"kind": "train", "iter": 1, "loss": 2.5}]


def test_several_loggers_compose_as_a_list_or_as_keys_and_do_not_rename_the_run(tmp_path):
    chosen = make_config(["logger=[wandb,tensorboard,mlflow]"]).logger
    assert (chosen.wandb, chosen.tensorboard, chosen.mlflow) == (True, True, True)
    chosen = make_config(["logger=tensorboard", "logger.mlflow=true"]).logger
    assert (chosen.wandb, chosen.tensorboard, chosen.mlflow) == (False, True, True)
    chosen = make_config(["logger=[mlflow]"]).logger
    assert (chosen.wandb, chosen.tensorboard, chosen.mlflow) == (False, False, True)
    # choosing dashboards is not a different experiment: same run directory, so it resumes
    proc = launch(["logger=[wandb,tensorboard]", "logger.mlflow=true", "logger.tracking_uri=http://x",
                   "model.n_layer=1", "--cfg", "hydra"], cwd=tmp_path)
    assert "override_dirname: model.n_layer=1\n" in proc.stdout


def test_the_record_holds_the_resolved_device_and_dtype_not_auto():
    import torch

    config = {"hardware": {"device": "auto", "dtype": "auto", "compile": False}, "seed": 1}
    record = loggers.run_record(config, torch.device("cuda", 0), torch.bfloat16, {"model": "baby"}, ["seed=1"])
    assert record["hardware"] == {"device": "cuda:0", "dtype": "bfloat16", "compile": False}
    assert record["presets"] == {"model": "baby"} and record["overrides"] == ["seed=1"]
    assert config["hardware"]["device"] == "auto"  # the run's own config (checkpoint, summary) unchanged
