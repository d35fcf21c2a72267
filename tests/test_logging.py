"""What a user sees while a run trains and afterwards: the start header, a console line per log
interval, metrics.jsonl, progress bars only in a terminal, loss.png, and Weights & Biases
(offline) when asked for."""
from __future__ import annotations

import io
import json
import logging
import struct
import sys
from html import escape as html_escape
from pathlib import Path

import pytest

from conftest import QUICK, launch, read_metrics
from inprocess import make_config
from nanogpt.run.metrics import MetricsLogger, progress



class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_console_header_metrics_and_no_progress_bars_in_a_log(tmp_path, data_root):
    run = tmp_path / "run"
    proc = launch([*QUICK, "task.max_iters=10", "task.eval_interval=5", "task.log_interval=2",
                   "task.eval_iters=20", f"run={run}"], cwd=tmp_path)
    out = proc.stdout + proc.stderr
    header = [line for line in out.splitlines() if "tokens/step" in line]
    assert len(header) == 1
    for part in ("M parameters", "128 tokens/step = 4 micro x 32 block x 1 accum x 1 ranks",
                 "10 iters, 1,280 tokens", "cpu float32 compile=False", f"run dir {run}"):
        assert part in header[0], part
    [hw] = [line for line in out.splitlines() if " - hardware: " in line]  # how each setting was chosen
    for part in ("cpu (hardware.device=cpu)", "float32 (hardware.dtype=float32)", "compile off (", "peak for MFU: "):
        assert part in hw, part
    console = [line.split(" - ")[1].split(":")[0] for line in out.splitlines() if ": loss " in line]
    assert console == ["iter 2/10 (20.0%)", "iter 4/10 (40.0%)", "iter 6/10 (60.0%)", "iter 8/10 (80.0%)",
                       "iter 10/10 (100.0%)"]

    records = read_metrics(run)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["iter"] for r in train] == [2, 4, 6, 8, 10]
    assert all(r["tokens"] == 128 * r["iter"] and r["loss"] > 0 and r["lr"] > 0 for r in train)
    assert [r["iter"] for r in records if r["kind"] == "eval"] == [0, 5, 10]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final_val_loss"] == records[-1]["val_loss"]
    # not a terminal: the eval bars stay out of the output
    assert "\r" not in out and "eval val" not in out


def test_progress_bars_show_in_a_terminal_on_rank_0_only(monkeypatch):
    monkeypatch.setattr(sys, "stderr", Terminal())
    list(progress(range(3), desc="eval val"))
    assert "eval val" in sys.stderr.getvalue() and "3/3" in sys.stderr.getvalue()

    monkeypatch.setattr(sys, "stderr", Terminal())
    list(progress(range(3), desc="eval val", is_main=False))
    assert sys.stderr.getvalue() == ""

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file, a batch job
    list(progress(range(3), desc="eval val"))
    assert sys.stderr.getvalue() == ""


def test_eval_and_sample_tasks_show_progress_in_a_terminal(tmp_path, data_root, monkeypatch):
    from nanogpt.evals.loss import evaluate
    from nanogpt.evals.sample import sample
    from inprocess import train_tiny

    run = tmp_path / "run"
    train_tiny(run, "task.max_iters=5", "task.eval_interval=5")
    monkeypatch.setattr(sys, "stderr", Terminal())
    evaluate(make_config(["task=eval", f"run={run}", "hardware=cpu", "task.eval_iters=4"]), tmp_path / "e")
    sample(make_config(["task=sample", f"run={run}", "hardware=cpu", "task.max_new_tokens=25",
                        "task.num_samples=2"]), tmp_path / "s")
    bars = sys.stderr.getvalue()
    assert "eval train" in bars and "eval val" in bars and "4/4" in bars
    assert "sampling" in bars and "25/25" in bars


@pytest.mark.slow
def test_loss_png_is_drawn_for_a_run_and_runs_overlay(tmp_path, data_root):
    plot = pytest.importorskip("nanogpt.scaling.plot", reason="nanogpt/scaling/plot.py is another engineer's")
    runs = []
    for lr in ("1e-3", "3e-3"):
        run = tmp_path / f"run_lr{lr}"
        launch([*QUICK, "task.max_iters=10", "task.eval_interval=5", "task.plot=true", f"optim.lr={lr}",
                f"run={run}"], cwd=tmp_path)
        png = run / "loss.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        runs.append(run)
    out = tmp_path / "sweep.png"
    assert plot.main([*map(str, runs), "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_plot_failures_warn_once_and_training_goes_on(tmp_path, data_root, monkeypatch, caplog):
    import types

    from inprocess import train_tiny

    broken = types.ModuleType("nanogpt.scaling.plot")

    def plot_run(run_dir, out=None):
        raise RuntimeError("no display")

    broken.plot_run = plot_run
    monkeypatch.setitem(sys.modules, "nanogpt.scaling.plot", broken)
    with caplog.at_level(logging.WARNING, "nanogpt"):
        summary = train_tiny(tmp_path / "run", "task.max_iters=10", "task.eval_interval=2", "task.plot=true")
    assert summary["status"] == "finished"
    assert caplog.text.count("could not draw loss.png (RuntimeError: no display)") == 1


# ---- Weights & Biases

def wandb_records(run: Path) -> dict[str, list]:
    """The records of the run's offline .wandb file, by type. The file is a LevelDB-style log
    (32 KiB blocks of chunks: crc32, length, type) of protobuf Records, after a 7-byte header;
    offline there is no API to read it back, and the files/ folder holds no config or summary."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = (run / "wandb").glob("offline-run-*/*.wandb")
    data, pos, block, chunks, out = path.read_bytes(), 7, 32768, b"", {}
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunks += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record = pb.Record()
            record.ParseFromString(chunks)
            out.setdefault(record.WhichOneof("record_type"), []).append(record)
            chunks = b""
    return out


def items(updates) -> dict:
    return {"/".join(u.nested_key) or u.key: json.loads(u.value_json) for u in updates}


@pytest.mark.slow
def test_logger_wandb_logs_config_metrics_summary_and_samples_offline(tmp_path, data_root):
    run = tmp_path / "run"
    args = [*QUICK, "task.max_iters=6", "task.eval_interval=3", "task.log_interval=2",
            "task.num_samples=1", "task.sample_tokens=20"]
    launch([*args, "logger=wandb", f"run={run}"], cwd=tmp_path, env={"WANDB_MODE": "offline"})

    records = wandb_records(run)
    config = items(records["run"][0].run.config.update)
    assert config["model"]["n_layer"] == 2 and config["task"]["max_iters"] == 6
    # the record of the run (tests/test_loggers.py): what the runtime chose, the presets, the command
    assert (config["hardware"]["device"], config["hardware"]["dtype"]) == ("cpu", "float32")
    assert config["presets"]["model"] == "baby" and config["overrides"] == [*args, "logger=wandb", f"run={run}"]
    history = [items(h.history.item) for h in records["history"]]
    logged = {h["_step"]: h["train/loss"] for h in history if "train/loss" in h}
    assert logged == {r["iter"]: r["loss"] for r in read_metrics(run) if r["kind"] == "train"}
    assert any("eval/val_loss" in h for h in history)
    assert any(h.get("samples/_type") == "html-file" for h in history)
    summary = {}
    for s in records["summary"]:
        summary.update(items(s.summary.update))
    final = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["final_val_loss"] == final["final_val_loss"]
    assert records["exit"][0].exit.exit_code == 0
    (html,) = (run / "wandb").glob("offline-run-*/files/media/html/samples_*.html")
    sample = (run / "samples.txt").read_text().strip()
    assert sample and html_escape(sample, quote=False) in html.read_text()


def test_logger_group_and_key_select_wandb_without_renaming_the_run(tmp_path):
    assert make_config(["logger=wandb"]).logger.wandb is True
    assert make_config(["logger.wandb=true"]).logger.wandb is True
    assert make_config([]).logger.wandb is False
    # choosing a logger is not a different experiment: same run directory, so it resumes
    proc = launch(["logger=wandb", "logger.project=x", "model.n_layer=1", "--cfg", "hydra"], cwd=tmp_path)
    assert "override_dirname: model.n_layer=1\n" in proc.stdout


def test_wandb_is_never_required(tmp_path, monkeypatch, caplog):
    cfg = make_config(["logger=wandb"]).logger
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with caplog.at_level(logging.WARNING, "nanogpt"):
        logger = MetricsLogger(tmp_path, True, cfg, {})
        logger.log({"kind": "train", "iter": 1, "loss": 2.5})
        logger.close()
    assert "wandb is not installed" in caplog.text
    assert read_metrics(tmp_path) == [{"kind": "train", "iter": 1, "loss": 2.5}]


def test_a_wandb_that_cannot_start_is_a_warning_not_a_failure(tmp_path, monkeypatch, caplog):
    wandb = pytest.importorskip("wandb")

    def no_login(**kwargs):
        raise wandb.errors.UsageError("api_key not configured (no-tty)")

    monkeypatch.setattr(wandb, "init", no_login)
    with caplog.at_level(logging.WARNING, "nanogpt"):
        logger = MetricsLogger(tmp_path, True, make_config(["logger=wandb"]).logger, {})
    assert logger.wandb is None
    assert "could not start Weights & Biases (UsageError: api_key not configured" in caplog.text
    assert "logger.mode=offline" in caplog.text
    logger.close()
