"""`python -m nanogpt.runs`: a sweep's or any runs' table, read from the files each run writes:
short names, status, val loss, bits per byte, tokens, FLOPs, wall time, what differs; sortable;
as a table, CSV or Markdown; bad input is one `error:` line and exit 2."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import QUICK, REPO, launch


def write_run(run_dir: Path, summary: dict | None, metrics: list[dict] = (), hydra_config: str | None = None):
    run_dir.mkdir(parents=True)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if hydra_config is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text(hydra_config)


def config(n_layer=2, lr=1e-3, num_threads=1):
    return dict(model=dict(n_layer=n_layer, n_embd=64), optim=dict(lr=lr, min_lr=1e-4), data=dict(name="tiny"),
                hardware=dict(num_threads=num_threads, dtype="float32"), run=None, seed=0)


def summary(status="finished", loss=3.0, bpb=1.5, tokens=512_000, flops=3.2e12, wall=75.0, **cfg):
    return dict(status=status, final_val_loss=loss, best_val_loss=loss and loss - 0.01, final_val_bpb=bpb, tokens=tokens,
                flops=flops, params=1e5, params_non_embedding=9e4, wall_time_s=wall, iters=100, config=config(**cfg))


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A Hydra multirun with Hydra's names (job number + override string): finished, failed and
    one that died before its summary (read from metrics.jsonl and .hydra/)."""
    root = tmp_path / "sweeps" / "lr"
    write_run(root / "0_model.n_layer=2,optim.lr=0.001", summary(loss=3.0, num_threads=1))
    write_run(root / "1_model.n_layer=4,optim.lr=0.001", summary(loss=2.8, n_layer=4, num_threads=2, wall=4000))
    write_run(root / "2_model.n_layer=4,optim.lr=0.01", summary(status="failed", loss=None, n_layer=4, lr=0.01))
    write_run(root / "10_model.n_layer=8,optim.lr=0.01", None,
              [dict(kind="eval", iter=10, tokens=20_000, val_loss=3.6, val_bpb=1.9, time_s=9.5)],
              hydra_config="model:\n  n_layer: 8\n  n_embd: 64\noptim:\n  lr: 0.01\n  min_lr: 1.0e-4\n")
    return root


@pytest.fixture
def runs(capsys):
    """`python -m nanogpt.runs ARGS` in this process (its main, as the module runs it): seconds
    faster than a subprocess on a busy machine; the slow test below runs the real command."""
    from nanogpt.runs import main

    def run(*args, check=True) -> subprocess.CompletedProcess:
        try:
            code = main(list(map(str, args)))
        except SystemExit as e:  # argparse's errors
            code = e.code
        out, err = capsys.readouterr()
        if check:
            assert code == 0, err
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def test_a_sweep_as_a_table_with_short_names_and_what_differs(sweep, runs):
    out = runs(sweep).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["run", "status", "val", "loss", "best", "val", "bits/byte", "tokens", "FLOPs",
                                "wall", "time", "differs"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert list(rows) == ["0", "1", "2", "10"]  # Hydra's job numbers, in their order, not override strings
    assert rows["0"].split() == ["0", "finished", "3.0000", "2.9900", "1.5000", "512k", "3.2T", "1m15s",
                                 "n_layer=2", "lr=0.001"]
    assert rows["1"].split()[-3:] == ["1h07m", "n_layer=4", "lr=0.001"]  # threads differ too: not a difference
    assert rows["2"].split()[:3] == ["2", "failed", "-"]
    # died before its summary: what metrics.jsonl and .hydra/ say
    assert rows["10"].split() == ["10", "incomplete", "3.6000", "3.6000", "1.9000", "20k", "-", "9.5s",
                                  "n_layer=8", "lr=0.01"]
    assert lines[-1] == "4 runs: 2 finished, 1 failed, 1 incomplete"
    assert "optim.lr=" not in out and "min_lr" not in out and "num_threads" not in out


def test_sorted_by_a_column_missing_values_last_either_way(sweep, runs):
    def order(*sort):
        return [line.split()[0] for line in runs(sweep, *sort).stdout.splitlines()[1:-1]]

    assert order("--sort", "val_loss") == ["1", "0", "10", "2"]
    assert order("--sort=-val_loss") == ["10", "0", "1", "2"]
    assert order("--sort", "wall_time_s", "--reverse") == ["1", "0", "2", "10"]  # ties keep their order
    assert order("--sort", "run", "--reverse") == ["10", "2", "1", "0"]


def test_csv_has_raw_numbers_and_markdown_is_a_pipe_table(sweep, runs):
    rows = list(csv.DictReader(io.StringIO(runs(sweep, "--format", "csv").stdout)))
    assert [r["run"] for r in rows] == ["0", "1", "2", "10"]
    assert float(rows[0]["flops"]) == 3.2e12 and float(rows[0]["tokens"]) == 512_000
    assert rows[2]["val_loss"] == "" and rows[0]["differs"] == "n_layer=2 lr=0.001"
    assert Path(rows[3]["run_dir"]) == sweep / "10_model.n_layer=8,optim.lr=0.01"

    md = runs(sweep, "--format", "markdown").stdout.splitlines()
    assert md[0].startswith("| run | status | val loss |") and md[1].startswith("| --- | --- |")
    assert md[2] == "| 0 | finished | 3.0000 | 2.9900 | 1.5000 | 512k | 3.2T | 1m15s | n_layer=2 lr=0.001 |"
    assert len(md) == 6


def test_runs_from_several_places_are_named_by_their_paths_cut_short(tmp_path, runs):
    long = "model.n_layer=4,optim.lr=0.001,optim.warmup_iters=100,task.max_iters=2000"
    write_run(tmp_path / "runs" / long, summary(n_layer=4))
    write_run(tmp_path / "runs" / "baseline", summary())
    out = runs(tmp_path / "runs" / long, tmp_path / "runs" / "baseline").stdout
    names = [line.split()[0] for line in out.splitlines()[1:-1]]
    assert names == ["n_layer=4,lr=0.001,warmup_iters…", "baseline"]
    assert all(len(n) <= 32 for n in names)


@pytest.mark.parametrize("args, message", [
    (["NOPE"], "error: NOPE: no such directory"),
    (["EMPTY"], "error: no run directories under EMPTY: give a run directory or a sweep folder"),
    (["SWEEP", "--sort", "loss"], "error: unknown sort key 'loss': use one of run, status, val_loss,"),
    (["SWEEP", "--format", "xlsx"], "error: argument --format: invalid choice: 'xlsx'"),
    (["CORRUPT"], "metrics.jsonl:1: not a JSON object"),
])
def test_bad_input_is_one_error_line_and_exit_2(args, message, sweep, tmp_path, runs):
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "corrupt", None)
    (tmp_path / "corrupt" / "metrics.jsonl").write_text("garbage\n{}\n")
    where = {"NOPE": tmp_path / "nope", "EMPTY": tmp_path / "empty", "SWEEP": sweep, "CORRUPT": tmp_path / "corrupt"}
    argv = [str(where.get(a, a)) for a in args]
    proc = runs(*argv, check=False)
    message = message.replace("NOPE", str(where["NOPE"])).replace("EMPTY", str(where["EMPTY"]))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(message.split("CORRUPT")[0]) or message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_real_sweep_is_listed_from_its_own_files(tmp_path, env):
    launch(["-m", *QUICK, "task.max_iters=2", "task.eval_interval=2", "model.n_layer=1,2",
            "sweep_name=tiny"], cwd=tmp_path, env=env)
    proc = subprocess.run([sys.executable, "-m", "nanogpt.runs", str(tmp_path / "sweeps" / "tiny")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.splitlines()
    rows = [line.split() for line in out[1:-1]]
    assert [r[:2] for r in rows] == [["0", "finished"], ["1", "finished"]]
    assert [r[-1] for r in rows] == ["n_layer=1", "n_layer=2"]
    assert all(r[5] == "256" for r in rows)  # tokens: 2 iters x 128
    assert out[-1] == "2 runs: 2 finished"
