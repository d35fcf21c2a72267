"""hardware.strategy=fsdp and hardware.activation_checkpointing, on the CPU: two gloo processes
under torchrun are real FSDP2 (sharded parameters, reduce-scatter, all-gather) and real
torch.distributed.checkpoint saves, one shard file per rank.

The equivalences run in float64, as tests/test_distributed.py's DDP one does and for the same
reason: FSDP changes only the order of the gradient sums (a reduce-scatter instead of one
process's sum over micro-batches), so the runs agree to roundoff amplified by the steps,
< 1e-12 in float64; the bound EXACT = 1e-9 keeps that headroom, while a real bug (a shard's
gradient lost, clipping on a local norm, a micro-batch counted twice) moves the loss by > 1e-4.
DDP against one process is that file's test: with it, FSDP = one process = DDP.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import launch, write_char_dataset
from test_distributed import EXACT, STEP, losses, merged, summary, torchrun

# every optimizer step: 4 micro-batches of 4 x 32 tokens (4 accumulated in one process, 2 on each
# of two ranks), clipped at 0.1 (below the gradient norm at every step: clipping always acts), a
# schedule that does not depend on max_iters (a run stopped at 6 and resumed to 12 follows it)
ARGS = merged(*STEP, "hardware.dtype=float64", "optim.grad_clip=0.1", "optim.decay_iters=12",
              "task.eval_interval=6", "task.eval_iters=3")


def agree(a: dict[int, float], b: dict[int, float], iters) -> None:
    assert all(i in a and i in b for i in iters), (sorted(a), sorted(b))
    for i in iters:
        assert abs(a[i] - b[i]) / abs(a[i]) < EXACT, (i, a[i], b[i])


def ckpt_tree(run: Path) -> dict[str, tuple]:
    """Every file under ckpt/ with its size and modification time (links: their target)."""
    out = {}
    for p in sorted((run / "ckpt").rglob("*")):
        rel = str(p.relative_to(run))
        out[rel] = (os.readlink(p),) if p.is_symlink() else (p.stat().st_size, p.stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process (plain, selective checkpointing) for 12 steps; FSDP on 2 ranks stopped after 6
    (block checkpointing, a reduce-scatter every micro-batch)."""
    root = tmp_path_factory.mktemp("fsdp")
    write_char_dataset(root / "data")
    env = {"NANOGPT_DATA_ROOT": str(root / "data")}
    launch([*ARGS, "task.max_iters=12", "hardware.activation_checkpointing=selective", "run=one"],
           cwd=root, env=env)
    torchrun([*ARGS, "task.max_iters=6", "hardware.strategy=fsdp", "hardware.activation_checkpointing=block",
              "hardware.fsdp_accumulation=sharded", "run=part"], cwd=root, env=env)
    return root, env



@pytest.mark.slow
def test_fsdp_takes_the_steps_one_process_takes(runs):
    """Accumulation, clipping and evaluation on sharded gradients; activation checkpointing on
    both sides changes nothing."""
    root, env = runs
    torchrun([*ARGS, "task.max_iters=12", "hardware.strategy=fsdp", "run=whole"], cwd=root, env=env)
    one, whole, part = root / "one", root / "whole", root / "part"
    assert summary(whole)["world_size"] == 2 and "x 2 accum x 2 ranks" in (whole / "launch.log").read_text()
    agree(losses(one), losses(whole), range(1, 13))
    agree(losses(one), losses(part), range(1, 7))
    agree(losses(one, "eval", "val_loss"), losses(whole, "eval", "val_loss"), [0, 6, 12])
    assert losses(one)[12] < losses(one)[1] - 0.3  # it learned: not two flat lines


@pytest.mark.slow
def test_each_rank_holds_half_of_every_tensor(runs):
    import torch.distributed.checkpoint as dcp

    save = (runs[0] / "part" / "ckpt" / "last.dcp").resolve()
    assert sorted(p.name for p in save.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    meta = dcp.FileSystemReader(save).read_metadata().state_dict_metadata
    weights = {k: m for k, m in meta.items() if k.startswith("model.") and hasattr(m, "chunks")}
    moments = {k: m for k, m in meta.items() if k.endswith((".exp_avg", ".exp_avg_sq"))}
    # AdamW's two moments for every parameter (the LM head is the tied token embedding: one)
    params = {k[len("optim.state."):].rsplit(".", 1)[0] for k in moments}
    assert {f"model.{p}" for p in params} == set(weights) - {"model.lm_head.weight"}
    assert len(moments) == 2 * len(params)
    for name, m in {**weights, **moments}.items():
        rows = m.size[0]
        assert [c.sizes[0] for c in m.chunks] == [math.ceil(rows / 2), rows // 2], name  # dim 0 split in two
        assert all(list(c.sizes[1:]) == list(m.size[1:]) for c in m.chunks), name


@pytest.mark.slow
def test_a_sharded_run_resumes_on_one_and_on_two_ranks(runs):
    """Train 6 steps on 2 ranks, resume to 12 on 1 process and on 2: the steps one process took
    without stopping. Then the consolidated checkpoint serves sample, eval and export."""
    root, env = runs
    resume = ["init_from=resume", "task.max_iters=12", "hardware.strategy=fsdp"]
    for name in ("on_one", "on_two"):
        shutil.copytree(root / "part", root / name, symlinks=True)
    proc = launch([*ARGS, *resume, "run=on_one"], cwd=root, env=env)
    assert "hardware.strategy=fsdp on one process: nothing to shard over" in proc.stderr + proc.stdout
    torchrun([*ARGS, *resume, "run=on_two"], cwd=root, env=env)
    one = root / "one"
    for name in ("on_one", "on_two"):
        run = root / name
        assert summary(run)["status"] == "finished" and summary(run)["iters"] == 12
        agree(losses(one), losses(run), range(1, 13))
        # (at 6 the part run's evaluation was its final one, which scores 4x the batches)
        agree(losses(one, "eval", "val_loss"), losses(run, "eval", "val_loss"), [12])
    # finished: consolidated to the single files that sampling, evaluation and export read
    run = root / "on_two"
    links = {n: os.readlink(run / "ckpt" / n) for n in ("last.dcp", "best.dcp")}
    assert len(list((run / "ckpt").glob("iter-*.dcp"))) == len(set(links.values()))  # old saves removed
    sample = launch(["task=sample", f"run={run}", "task.num_samples=1", "task.max_new_tokens=8",
                     "hardware=cpu", "hardware.dtype=float64"], cwd=root, env=env)
    assert sample.stdout.strip()
    evaluated = launch(["task=eval", f"run={run}", "task.eval_iters=3", "hardware=cpu", "hardware.dtype=float64"],
                       cwd=root, env=env)
    assert "val" in evaluated.stdout
    out = subprocess.run([sys.executable, "-m", "nanogpt.export", str(run), str(root / "hf"), "--which", "last"],
                         cwd=root, capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    assert (root / "hf" / "config.json").exists()


@pytest.mark.slow
def test_resuming_with_another_shape_or_strategy_is_refused_before_any_work(runs):
    root, env = runs
    shutil.copytree(root / "part", root / "bad", symlinks=True)
    before = ckpt_tree(root / "bad")
    for extra, message in [
        (["hardware.strategy=fsdp", "model.n_embd=64"], "was made with another model shape (n_embd: checkpoint 32 vs config 64)"),
        (["hardware.strategy=ddp"], "was trained with hardware.strategy=fsdp"),
    ]:
        proc = launch([*ARGS, "init_from=resume", "task.max_iters=12", "run=bad", *extra], cwd=root, env=env,
                      check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert message in proc.stderr and "Traceback" not in proc.stderr
        assert ckpt_tree(root / "bad") == before  # nothing written, nothing removed
    # and the other way: a DDP run's single-file checkpoints are not resumed sharded
    one_before = ckpt_tree(root / "one")
    proc = launch([*ARGS, "init_from=resume", "task.max_iters=13", "run=one", "hardware.strategy=fsdp"],
                  cwd=root, env=env, check=False)
    assert proc.returncode == 2 and "was trained with hardware.strategy=ddp" in proc.stderr
    assert ckpt_tree(root / "one") == one_before


@pytest.mark.slow
def test_world_size_must_divide_the_batch_under_fsdp(tmp_path, data_root):
    proc = torchrun(merged(*STEP, "task.tokens_per_step=384", "task.max_iters=2", "hardware.strategy=fsdp"),
                    cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "task.tokens_per_step=384 is not a multiple of" in proc.stderr
    assert not list(tmp_path.glob("runs/*/ckpt"))


KILL_IN_SAVE = """
import os
if os.environ.get("NANOGPT_KILL_IN_SAVE"):
    import torch.distributed.checkpoint as dcp
    real, calls = dcp.save, []
    def save(*args, **kwargs):
        out = real(*args, **kwargs)  # every shard written; train_state.pt and the rename not yet
        calls.append(1)
        if len(calls) == int(os.environ["NANOGPT_KILL_IN_SAVE"]):
            os.kill(os.getpid(), 9)
        return out
    dcp.save = save
"""


@pytest.mark.slow
def test_a_kill_during_a_sharded_save_leaves_the_last_complete_one(runs, tmp_path):
    """SIGKILL after the shards of the second save are written, before it is complete: last.dcp
    still points to the first; sampling says to consolidate; the same command resumes from the
    first save, clears the debris, and ends where the uninterrupted run ends."""
    root, env = runs
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(KILL_IN_SAVE)
    args = [*ARGS, "task.max_iters=6", "task.eval_interval=3", "hardware.strategy=fsdp", f"run={tmp_path / 'r'}"]
    killed = launch(args, cwd=root, check=False,
                    env={**env, "NANOGPT_KILL_IN_SAVE": "2", "PYTHONPATH": str(tmp_path / "hook")})
    assert killed.returncode == -9, killed.stderr[-2000:]
    ckpt = tmp_path / "r" / "ckpt"
    assert os.readlink(ckpt / "last.dcp").startswith("iter-00000003-")
    [debris] = ckpt.glob(".iter-00000006-*.tmp")
    assert not (debris / "train_state.pt").exists()
    refused = launch(["task=sample", f"run={tmp_path / 'r'}"], cwd=root, env=env, check=False)
    assert refused.returncode == 2 and "python -m nanogpt.checkpoint consolidate" in refused.stderr
    consolidated = subprocess.run([sys.executable, "-m", "nanogpt.checkpoint", "consolidate", str(tmp_path / "r")],
                                  capture_output=True, text=True, env={**os.environ, **env})
    assert consolidated.returncode == 0 and "last.pt: written" in consolidated.stdout
    launch(args, cwd=root, env=env)  # the same command: resumes from iteration 3
    assert not list(ckpt.glob(".*.tmp"))
    assert summary(tmp_path / "r")["status"] == "finished"
    agree(losses(root / "one"), losses(tmp_path / "r"), range(1, 7))
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["iters"] == 6


@pytest.mark.slow
def test_finetune_gpt2_xl_recipe_runs_two_tiny_iterations_on_two_ranks(tmp_path, data_root):
    """The 8-GPU recipe (FSDP, activation checkpointing) with a tiny random GPT-2 in place of
    OpenAI's weights, on the CPU, two processes."""
    from test_app import _bpe_dataset, _tiny_hf_gpt2, compose_cfg

    cfg = compose_cfg(["experiment=finetune_gpt2_xl"])
    assert (cfg.hardware.strategy, cfg.hardware.activation_checkpointing, cfg.hardware.gpus_per_node) == \
        ("fsdp", "block", 8)
    assert cfg.model.pretrained == "gpt2-xl" and cfg.task.tokens_per_step == 4 * 1024 * 8
    _bpe_dataset(data_root, "shakespeare")
    _tiny_hf_gpt2(tmp_path / "hf")
    torchrun(["experiment=finetune_gpt2_xl", f"model.path={tmp_path / 'hf'}", "model.block_size=32",
              "hardware=cpu", "hardware.dtype=float32", "hardware.compile=false", "hardware.micro_batch_size=2",
              "task.max_iters=2", "task.tokens_per_step=null", "task.eval_iters=1", "task.eval_interval=1",
              "task.num_samples=0", "run=xl"], cwd=tmp_path, timeout=300)
    done = summary(tmp_path / "xl")
    assert done["status"] == "finished" and done["iters"] == 2 and done["world_size"] == 2
    assert (tmp_path / "xl" / "ckpt" / "last.dcp").is_symlink() and (tmp_path / "xl" / "ckpt" / "last.pt").is_file()


def test_consolidating_a_run_without_sharded_checkpoints_is_a_clear_error(tmp_path):
    (tmp_path / "ckpt").mkdir()
    proc = subprocess.run([sys.executable, "-m", "nanogpt.checkpoint", "consolidate", str(tmp_path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {tmp_path} has no sharded checkpoint to consolidate (ckpt/last.dcp or ckpt/best.dcp)" in proc.stderr
