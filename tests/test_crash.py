"""Real training processes, killed: SIGKILL at random moments (some in the middle of a checkpoint
write), SIGTERM and Ctrl-C. After each, the newest checkpoint loads and `init_from=resume`
finishes the run with exactly the numbers of a run that was never interrupted (fp32, CPU)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, launch, read_metrics
from nanogpt.checkpoint import single as checkpoint
from nanogpt.training import resume

# A model big enough that a checkpoint write (~43 MB) takes tens of milliseconds, so a kill can
# land inside one; one thread keeps steps fast and bit-reproducible on a busy machine.
ARGS = ["data.name=tiny_char", "model.n_layer=2", "model.n_head=4", "model.n_embd=384",
        "model.block_size=32", "hardware=cpu", "hardware.dtype=float32", "hardware.micro_batch_size=4",
        "hardware.num_threads=1", "task.eval_iters=2", "task.log_interval=1", "task.num_samples=0",
        "task.plot=false", "optim.warmup_iters=5", "task.max_iters=40", "task.eval_interval=4"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(tmp_path_factory, env) -> Path:
    """The same run, never interrupted."""
    run = tmp_path_factory.mktemp("reference") / "run"
    launch([*ARGS, f"run={run}"], cwd=run.parent, env=env)
    return run


def wait_until(proc: subprocess.Popen, condition, what: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"training exited ({proc.returncode}) before {what}:\n{log_of(proc)[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.001)


def log_of(proc: subprocess.Popen) -> str:
    return Path(proc.log_path).read_text()


def records(run: Path) -> list[dict]:
    """metrics.jsonl as it is now, while a process may be writing it (a partial line is skipped)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(l) for l in lines if l.endswith("}")]


def last_train_iter(run: Path) -> int:
    return max((r["iter"] for r in records(run) if r["kind"] == "train"), default=-1)


def evals_after(run: Path, it: int) -> int:
    return sum(1 for r in records(run) if r["kind"] == "eval" and r["iter"] > it)


def started(proc) -> bool:
    """This launch has logged its header: metrics.jsonl is trimmed to its checkpoint and the
    temp files of an earlier killed write are gone, so what the test sees next is this launch's."""
    return "tokens/step" in log_of(proc)


def temp_files(run: Path) -> list[Path]:
    return list((run / "ckpt").glob(checkpoint.TEMP_GLOB)) if (run / "ckpt").exists() else []


def start_logged(run: Path, env: dict, *extra: str) -> subprocess.Popen:
    log_path = run.parent / f"{run.name}.{time.monotonic_ns()}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *ARGS, f"run={run}", *extra],
                                cwd=run.parent, env={**os.environ, "WANDB_MODE": "offline", **env},
                                stdout=log, stderr=subprocess.STDOUT, text=True)
    proc.log_path = log_path
    return proc


def assert_same_as_reference(run: Path, reference: Path):
    got, want = (json.loads((d / "summary.json").read_text()) for d in (run, reference))
    assert got["status"] == "finished"
    # metrics.jsonl reads as if the run had never stopped: each iteration once, same losses (first,
    # so that a failure names the iteration where the runs part, and the launches' logs beside it)
    curve = lambda d: [(m["iter"], m.get("loss"), m.get("val_loss")) for m in read_metrics(d)]
    got_curve, want_curve = curve(run), curve(reference)
    parted = next((i for i, (a, b) in enumerate(zip(got_curve, want_curve)) if a != b), None)
    assert got_curve == want_curve, (f"the runs part at record {parted}: {got_curve[parted - 1:parted + 2]} vs "
                                     f"{want_curve[parted - 1:parted + 2]}; logs: {sorted(run.parent.glob('*.log'))}"
                                     if parted is not None else "different lengths")
    for key in ("final_val_loss", "final_train_loss", "best_val_loss", "iters"):
        assert got[key] == want[key], key
    got_w, want_w = (checkpoint.load(d / "ckpt" / "last.pt")["model"] for d in (run, reference))
    assert all(torch.equal(got_w[k], want_w[k]) for k in want_w)
    assert temp_files(run) == []


def test_sigkill_at_random_moments_and_mid_checkpoint_never_loses_the_run(tmp_path, env, reference):
    run = tmp_path / "run"
    # ("steps", n): kill n training steps after this launch started logging;
    # ("write", n): kill while the n-th checkpoint of this launch is being written
    plan = [("steps", 2), ("write", 1), ("write", 2), ("steps", 3), ("write", 2), ("steps", 6),
            ("write", 1), ("steps", 9), ("write", 2), ("steps", 3)]
    resumed_at, mid_write, cleaned = -1, 0, 0
    for kind, n in plan:
        proc = start_logged(run, env, *(["init_from=resume"] if resumed_at >= 0 else []))
        base = max(resumed_at, 0)
        if kind == "steps":
            wait_until(proc, lambda: started(proc) and last_train_iter(run) >= base + n,
                       f"iteration {base + n}")
        else:  # the n-th evaluation of this launch is logged and its checkpoint is being written
            wait_until(proc, lambda: started(proc) and evals_after(run, base) >= n and temp_files(run),
                       f"checkpoint write {n}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if kind == "write" and temp_files(run):
            mid_write += 1  # the kill landed inside the write: a torn temp file is left
        cleaned += "incomplete checkpoint file" in log_of(proc)

        # whatever the moment, the newest checkpoint loads and no progress went backwards
        path, state = resume.load_latest(run)
        it = state["iter"] if state else -1
        assert it >= resumed_at, f"checkpoint went back from {resumed_at} to {it}"
        assert it == -1 or it % 4 == 0
        resumed_at = it

    assert len(plan) >= 10 and mid_write >= 3, f"only {mid_write} kills landed inside a write"
    proc = start_logged(run, env, "init_from=resume")
    assert proc.wait(timeout=300) == 0, log_of(proc)[-3000:]
    assert cleaned + ("incomplete checkpoint file" in log_of(proc)) == mid_write
    assert_same_as_reference(run, reference)


def test_ctrl_c_saves_exits_130_and_resumes_exactly(tmp_path, env, reference):
    run = tmp_path / "run"
    proc = start_logged(run, env)
    wait_until(proc, lambda: last_train_iter(run) >= 6, "iteration 6")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    out = log_of(proc)
    assert "received SIGINT" in out and "Traceback" not in out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["stop_signal"] == "SIGINT"
    stopped = summary["iters"]
    assert f"stopped at iteration {stopped}; checkpoint saved" in out
    assert f"init_from=resume run={run}" in out
    assert checkpoint.load(run / "ckpt" / "last.pt")["iter"] == stopped  # not just the last eval

    proc = start_logged(run, env, "init_from=resume")
    assert proc.wait(timeout=300) == 0, log_of(proc)[-3000:]
    assert f"resuming from {run / 'ckpt' / 'last.pt'} at iteration {stopped}" in log_of(proc)
    assert_same_as_reference(run, reference)


def test_sigterm_saves_and_a_second_process_on_the_same_run_is_refused(tmp_path, env):
    run = tmp_path / "run"
    proc = start_logged(run, env, "task.max_iters=100000", "task.eval_interval=1000")
    try:
        wait_until(proc, lambda: last_train_iter(run) >= 2, "iteration 2")
        second = launch([*ARGS, f"run={run}", "task.max_iters=100000", "task.eval_interval=1000"],
                        cwd=tmp_path, env=env, check=False)
        assert second.returncode == 2
        assert f"pid {proc.pid} is already training in {run}" in second.stderr
        assert proc.poll() is None  # the first one trains on
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        proc.kill()
    out = log_of(proc)
    assert "received SIGTERM" in out and "Resume with the same command" in out
    stopped = json.loads((run / "summary.json").read_text())["iters"]
    assert checkpoint.load(run / "ckpt" / "last.pt")["iter"] == stopped > 2


def newest_checkpoint_iter(run: Path) -> int:
    return max(checkpoint.load(run / "ckpt" / n)["iter"] for n in ("last.pt", "best.pt")
               if (run / "ckpt" / n).exists())


def test_a_kill_while_the_samples_are_written_leaves_a_run_the_same_command_completes(tmp_path, env):
    """SIGKILL after the summary said finished, before samples.txt was written: the re-run said
    "already finished ... nothing to do" and the samples never appeared."""
    run = tmp_path / "run"
    sampled = ["task.max_iters=8", "task.num_samples=4", "task.sample_tokens=3000"]
    proc = start_logged(run, env, *sampled)
    wait_until(proc, lambda: "unigram entropy" in log_of(proc), "the end-of-run samples")  # logged just before
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads((run / "summary.json").read_text())["status"] != "finished"
    assert not (run / "samples.txt").exists() or len((run / "samples.txt").read_text()) == 4 * 3001

    proc = start_logged(run, env, *sampled)
    assert proc.wait(timeout=300) == 0, log_of(proc)[-3000:]
    assert "nothing to do" not in log_of(proc) and log_of(proc).count("---------- sample ----------") == 4
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert len((run / "samples.txt").read_text()) == 4 * 3001  # 4 samples of 3000 characters, each + "\n"


@pytest.mark.parametrize("gap_s", [0.0, 0.02, 0.05, 0.1])
def test_a_second_ctrl_c_at_any_moment_leaves_the_summary_at_the_newest_checkpoint(tmp_path, env, gap_s):
    """A second Ctrl-C 50 ms after the first left summary.json at `running, 700` (the last
    evaluation's) while last.pt held iteration 799."""
    run = tmp_path / "run"
    proc = start_logged(run, env, "task.max_iters=100000", "task.eval_interval=5")
    try:
        wait_until(proc, lambda: last_train_iter(run) >= 7, "iteration 7")
        proc.send_signal(signal.SIGINT)
        time.sleep(gap_s)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    out = log_of(proc)
    assert "Traceback" not in out
    summary, newest = json.loads((run / "summary.json").read_text()), newest_checkpoint_iter(run)
    stopped = (summary["status"], summary["iters"], summary["stop_signal"])
    assert stopped == ("interrupted", newest, "SIGINT"), out[-2000:]
    assert f"stopped at iteration {newest}; checkpoint saved" in out or \
        f"the newest checkpoint (iteration {newest}) is intact" in out
    assert "checkpoints already written are intact" not in out
