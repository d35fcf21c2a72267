"""Shared fixtures: a tiny prepared dataset, and a way to run launch.py as a user would."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
SHAKESPEARE = SHARED / "data" / "tinyshakespeare" / "input.txt"
GPT2_RANKS = SHARED / "data" / "gpt2_bpe" / "gpt2.tiktoken"

needs_shakespeare = pytest.mark.skipif(not SHAKESPEARE.exists(), reason=f"{SHAKESPEARE} not present (../shared)")
needs_gpt2_ranks = pytest.mark.skipif(not GPT2_RANKS.exists(), reason=f"{GPT2_RANKS} not present (../shared)")


def _slurm_down_reason() -> str | None:
    """Why the local SLURM cluster (../shared/slurm) cannot take jobs, or None when it can. The
    controller's port is tried first: without one, sinfo takes ~9 s to fail."""
    if shutil.which("sbatch") is None:
        return "sbatch is not installed"
    try:
        socket.create_connection(("127.0.0.1", 6817), timeout=1).close()
        r = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%T"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return "no SLURM controller answers on port 6817"
    if r.returncode != 0 or r.stdout.strip() not in {"idle", "mixed", "allocated"}:
        return f"the debug partition is not up ({r.stdout.strip() or r.stderr.strip()})"
    return None


_SLURM_DOWN = _slurm_down_reason()
needs_slurm = pytest.mark.skipif(
    _SLURM_DOWN is not None,
    reason=f"no SLURM cluster: {_SLURM_DOWN}; start one with ../shared/slurm/start-local-slurm.sh (as root)")


def write_char_dataset(root: Path, name: str = "tiny_char", text: str | None = None) -> Path:
    """A small character-level dataset in the prepared layout (train.bin, val.bin, meta.json)."""
    if text is None:
        rng = np.random.default_rng(0)
        words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away"]
        text = " ".join(rng.choice(words, size=20000)) + "\n"
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(0.9 * len(ids))
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    ids[:n].tofile(out / "train.bin")
    ids[n:].tofile(out / "val.bin")
    meta = {"dataset": name, "tokenizer": {"kind": "char", "chars": chars}, "vocab_size": len(chars),
            "dtype": "uint16", "tokens": {"train": n, "val": len(ids) - n}, "source": {"kind": "test"}}
    (out / "meta.json").write_text(json.dumps(meta))
    return out


@pytest.fixture
def data_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "data"
    write_char_dataset(root)
    monkeypatch.setenv("NANOGPT_DATA_ROOT", str(root))
    return root


# A model and schedule small enough that a run takes a few seconds on two cores: GPT-2's
# architecture with AdamW (model=baby); the default model (modern_baby, Muon) has tests of its own.
TINY = ["model=baby", "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
        "hardware=cpu", "hardware.dtype=float32", "hardware.micro_batch_size=4",
        "task.eval_iters=2", "task.log_interval=1", "task.num_samples=0", "task.plot=false"]


# TINY on the tiny_char data of the env / data_root fixtures, on one thread (steady timings)
QUICK = ["data.name=tiny_char", *TINY, "hardware.num_threads=1"]
USER_ENV = {"HYDRA_FULL_ERROR": "0"}  # what a user sees: Hydra's short error, not its traceback


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The environment of a module's launches: tiny_char data in a data root of its own, and
    Hydra's errors as a user sees them."""
    root = tmp_path_factory.mktemp("data")
    write_char_dataset(root)
    return {**USER_ENV, "NANOGPT_DATA_ROOT": str(root)}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, env) -> Path:
    """A finished QUICK run (4 iterations, checkpoints at 2 and 4), shared by a module's tests:
    copy it before changing it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    launch([*QUICK, "task.max_iters=4", "task.eval_interval=2", f"run={run}"], cwd=run.parent, env=env)
    return run


def launch(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600,
           check: bool = True) -> subprocess.CompletedProcess:
    """Run `python launch.py ARGS` in a subprocess, as a user would."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "1", "WANDB_MODE": "offline", **(env or {})}
    proc = subprocess.run([sys.executable, str(REPO / "launch.py"), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch.py {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_cache_matches_recomputation(model, x, prompt_len: int) -> None:
    """The KV cache's logits, fed x's first prompt_len tokens and then one at a time, equal a
    full forward pass over x (B, T) at every position after the prompt."""
    import torch

    from nanogpt.model import KVCache

    full, _ = model(x, x)
    cache = KVCache(model.config, x.size(0), model.config.block_size, "cpu", torch.float32)
    first, _ = model(x[:, :prompt_len], cache=cache)
    torch.testing.assert_close(first[:, -1], full[:, prompt_len - 1], atol=1e-5, rtol=1e-5)
    for t in range(prompt_len, x.size(1)):
        step, _ = model(x[:, t:t + 1], cache=cache)
        torch.testing.assert_close(step[:, -1], full[:, t], atol=1e-5, rtol=1e-5)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (-n), the SLURM tests share one worker: they queue on one small cluster,
    and a second worker's jobs would only wait behind them (and count against their timeouts)."""
    for item in items:
        if item.get_closest_marker("slurm"):
            item.add_marker(pytest.mark.xdist_group("slurm"))
