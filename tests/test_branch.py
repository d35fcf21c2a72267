"""Cooldown branches: one stable WSD run keeps checkpoints, short runs branch off them into their
own cooldowns, and the scaling tools read every branch as a point with its own D and C."""
from __future__ import annotations

import json

import pytest

from conftest import TINY, launch, read_metrics
from inprocess import train_tiny
from nanogpt.training.branch import cooldown_end
from nanogpt.errors import UserError
from nanogpt.scaling.collect import fit_data, load_runs
from nanogpt.training.schedule import lr_at, wsd_decay_start

WSD = ["optim.schedule=wsd", "optim.decay_frac=0.25", "optim.warmup_iters=1", "optim.lr=3e-3",
       "optim.min_lr=0", "task.eval_interval=4"]


def losses(run_dir) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def summary(run_dir) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def test_cooldown_end_starts_the_cooldown_at_the_branch_point():
    for k in (1, 4, 8, 333, 1000, 1234):
        for frac in (0.1, 0.2, 0.25, 0.5):
            end = cooldown_end(k, frac)
            assert wsd_decay_start(end, frac) >= k > wsd_decay_start(end - 1, frac) or end == k + 1
    assert cooldown_end(4, 0.25) == 5 and cooldown_end(8, 0.25) == 10 and cooldown_end(800, 0.2) == 1000


def test_branches_continue_the_parent_and_are_collected_as_their_own_points(tmp_path, data_root):
    parent = tmp_path / "sweep" / "parent"
    train_tiny(parent, *WSD, "task.max_iters=12", "task.keep_checkpoints=[4,8]")
    assert sorted(p.name for p in (parent / "ckpt").glob("iter_*.pt")) == ["iter_0000004.pt", "iter_0000008.pt"]
    tps = summary(parent)["tokens_per_step"]
    branches = {}
    for k in (4, 8):
        run = tmp_path / "sweep" / f"branch_{k}"
        end = cooldown_end(k, 0.25)
        # the branch's length, as a command writes it: the resolver computes cooldown_end
        length = "task.max_iters='${nanogpt_cooldown_end:${task.branch_iter},${optim.decay_frac}}'"
        train_tiny(run, *WSD, length, f"task.branch_from={parent}", f"task.branch_iter={k}")
        branches[k] = (run, end)
        mine = losses(run)
        assert sorted(mine) == list(range(k + 1, end + 1))  # its own iterations only
        # the step from k used the same weights, optimizer state, batch and lr as the parent's
        assert mine[k + 1] == losses(parent)[k + 1]
        s = summary(run)
        assert s["status"] == "finished" and s["branched_from"] == {"run": str(parent.resolve()), "iter": k}
        assert s["tokens"] == end * tps and s["iters"] == end  # D counts from iteration 0
        assert s["flops"] == pytest.approx(end * tps * s["flops_per_token"])
        # its own schedule: stable up to k, then the cooldown over its last quarter
        lrs = [r["lr"] for r in read_metrics(run) if r["kind"] == "train"]  # iteration i used lr(i - 1)
        assert lrs == [lr_at(i, 3e-3, 0.0, 1, end, "wsd", 0.25) for i in range(k, end)]

    runs = {r.run_dir: r for r in load_runs([tmp_path / "sweep"])}
    assert len(runs) == 3
    for k, (run, end) in branches.items():
        r = runs[str(run)]
        assert r.D == end * tps and r.C == pytest.approx(summary(run)["flops"]) and r.branched_from.endswith(f"@{k}")
    assert runs[str(parent)].branched_from == "" and runs[str(parent)].D == 12 * tps
    assert len(fit_data(list(runs.values()))["N"]) == 3  # three points for the fits
    # a branch that is run again resumes itself (its own checkpoint), not its parent's
    run, end = branches[8]
    again = train_tiny(run, *WSD, f"task.max_iters={end}", f"task.branch_from={parent}", "task.branch_iter=8")
    assert again["status"] == "finished" and again["branched_from"]["iter"] == 8


@pytest.fixture
def parent(tmp_path, data_root):
    run = tmp_path / "parent"
    train_tiny(run, *WSD, "task.max_iters=12", "task.keep_checkpoints=[8]")
    return run


@pytest.mark.parametrize("overrides,message", [
    (["task.branch_iter=6", "task.max_iters=10"], r"has no checkpoint at iteration 6 \(iter_0000006.pt\); it kept iterations 8"),
    (["task.branch_iter=8", "task.max_iters=10", "model.n_embd=64"], r"another model shape \(n_embd: checkpoint 32 vs config 64"),
    (["task.branch_iter=8", "task.max_iters=9"], r"learning rate at its branch point 8 is .* its parent's was .* task.max_iters >= 10"),
    (["task.branch_iter=8", "task.max_iters=10", "task.tokens_per_step=256"], r"tokens per step 128 vs 256"),
    (["task.branch_iter=8", "task.max_iters=8"], r"task.branch_iter=8 is not before this run's end"),
    (["task.branch_iter=8", "task.max_iters=10", "optim=muon"], r"trained with optim=adamw, and this run asks for optim=muon"),
])
def test_a_branch_that_cannot_continue_its_parent_is_refused(tmp_path, parent, overrides, message):
    with pytest.raises(UserError, match=message):
        train_tiny(tmp_path / "branch", *WSD, f"task.branch_from={parent}", *overrides)
    assert not (tmp_path / "branch" / "ckpt").exists() and not (tmp_path / "branch" / "metrics.jsonl").exists()


def test_branch_errors_on_the_command_line_leave_nothing_behind(tmp_path, parent):
    proc = launch([*TINY, "data.name=tiny_char", *WSD, f"task.branch_from={parent}", "task.branch_iter=8",
                   "task.max_iters=10", "model.pos_emb=rope", "hydra.run.dir=branch"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "another model shape (pos_emb: checkpoint learned vs config rope" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "branch").exists()
    proc = launch([*TINY, f"task.branch_from={parent}", "hydra.run.dir=branch"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "needs both task.branch_from=RUN_DIR and task.branch_iter=K" in proc.stderr
    proc = launch([*TINY, "task.branch_from=nowhere", "task.branch_iter=8", "hydra.run.dir=branch"], cwd=tmp_path,
                  check=False)
    assert proc.returncode == 2 and "task.branch_from=nowhere is not a training run directory" in proc.stderr
    assert not (tmp_path / "branch").exists()


def test_branches_are_refused_with_fsdp(tmp_path, data_root):
    """Branches need what FSDP's shards do not hold: single-file checkpoints. (Muon, refused here
    before, runs under FSDP: tests/test_sharded_muon.py.)"""
    for args, message in (
        (["task.keep_checkpoints=[4]"], "cooldown branches (task.keep_checkpoints, task.branch_from) use single-file"),
        (["task.branch_from=x", "task.branch_iter=4"], "and hardware.strategy=fsdp writes sharded ones"),
    ):
        proc = launch([*TINY, *args, "hardware.strategy=fsdp", "hydra.run.dir=run"], cwd=tmp_path, check=False)
        assert proc.returncode == 2 and "error: " in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
        assert not (tmp_path / "run").exists()
