"""Seeds of one sweep point: distinct runs, grouped by `collect`, averaged by `fit`, compared by
`compare` with the statistics a user reads (exit status 2 and one `error:` line on bad input)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import QUICK, REPO, launch

from nanogpt.scaling import collect as scaling
from nanogpt.scaling import seeds

A = [3.2841, 3.2795, 3.2873, 3.2810, 3.2829]  # the example of tests/test_stats.py
B = [3.2712, 3.2760, 3.2688, 3.2741, 3.2703]


def fake_run(run_dir: Path, loss: float, seed: int = 0, lr: float = 1e-3, n_embd: int = 64,
             status: str = "finished", threads: int = 1, bpb: float | None = None):
    """A run as training leaves it: summary.json with its resolved config (seed, lr, size)."""
    N, D = 10_000 * n_embd, 5e7
    config = dict(model=dict(n_layer=2, n_embd=n_embd), optim=dict(lr=lr), data=dict(name="tiny"),
                  task=dict(name="train", max_iters=100), hardware=dict(num_threads=threads, dtype="float32"),
                  seed=seed, run=None, sweep_name="s")
    summary = dict(status=status, params=N, params_non_embedding=N, tokens=D, flops=6 * N * D, iters=100,
                   final_val_loss=loss, best_val_loss=loss - 0.001, wall_time_s=1.0, config=config)
    if bpb is not None:
        summary["final_val_bpb"] = bpb
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def cli(*args):
    return subprocess.run([sys.executable, "-m", "nanogpt.scaling", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


@pytest.fixture
def seed_sweep(tmp_path) -> Path:
    """Two learning rates x 5 seeds, one lr with a single seed, one failed run."""
    root = tmp_path / "sweep"
    job = 0
    for lr, losses in ((1e-3, A), (3e-3, B)):
        for seed, loss in enumerate(losses):
            # the thread count differs between seeds: it does not change what is trained
            fake_run(root / f"{job}_lr={lr},seed={seed}", loss, seed=seed, lr=lr, threads=1 + seed % 2)
            job += 1
    fake_run(root / f"{job}_lr=0.01,seed=0", 3.5, seed=0, lr=1e-2)
    fake_run(root / f"{job + 1}_lr=0.01,seed=1", math.nan, seed=1, lr=1e-2, status="failed")
    return root


def test_runs_that_differ_only_by_seed_are_one_point(seed_sweep):
    runs = scaling.load_runs([seed_sweep])
    groups = seeds.group_seeds(runs)
    assert [g.label for g in groups] == ["optim.lr=0.001", "optim.lr=0.003", "optim.lr=0.01"]
    assert [g.summary.n for g in groups] == [5, 5, 1]  # the failed run is left out
    assert groups[0].seeds == [0, 1, 2, 3, 4]
    assert groups[0].summary.mean == pytest.approx(sum(A) / 5)
    assert math.isnan(groups[2].summary.std)
    means, stds = seeds.seed_means(runs)
    assert [m.final_val_loss for m in means] == pytest.approx([sum(A) / 5, sum(B) / 5, 3.5])
    assert stds[means[1].run_dir] == pytest.approx(groups[1].summary.std)


def test_the_point_survives_the_csv(seed_sweep, tmp_path):
    scaling.write_csv(scaling.load_runs([seed_sweep]), tmp_path / "runs.csv")
    back = scaling.load_runs([tmp_path / "runs.csv"])
    assert [g.summary.n for g in seeds.group_seeds(back)] == [5, 5, 1]
    assert back[3].seed == 3


def test_collect_reports_the_spread_and_fit_uses_the_means(seed_sweep, tmp_path):
    proc = cli("collect", seed_sweep)
    assert proc.returncode == 0, proc.stderr
    table = proc.stdout.split("3 points (final val loss over the seeds of each)")[1].splitlines()
    assert table[2].split()[:5] == ["optim.lr=0.001", "5", "0,1,2,3,4", "3.2830", "0.0030"]
    assert table[3].split()[:4] == ["optim.lr=0.003", "5", "0,1,2,3,4", "3.2721"]
    assert "[3.2792, 3.2867]" in table[2]  # mean ± t(0.975, 4) * sem
    # a sweep without repeats prints no such table
    assert "points" not in cli("collect", seed_sweep / "0_lr=0.001,seed=0").stdout


def test_fit_averages_seeds_and_draws_error_bars(tmp_path):
    law = scaling.chinchilla_law()
    for seed in range(3):  # the same isoFLOP sweep three times, seeds differing in noise
        scaling.synthetic_sweep(tmp_path / f"seed{seed}", law=law, budgets=(1e17, 1e18, 1e19),
                                sizes_per_budget=5, noise=0.01, seed=seed)
    proc = cli("fit", tmp_path, "--approach", "2", "--plots", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    assert "45 of 45 runs are finished with a final val loss: fitting the means of their 15 points" in proc.stdout
    assert (tmp_path / "plots" / "loss_vs_flops.png").read_bytes()[:4] == b"\x89PNG"
    each = cli("fit", tmp_path, "--approach", "2", "--seeds", "each")
    assert "45 of 45 runs are finished with a final val loss: fitting those" in each.stdout


def test_a_seed_sweep_trains_distinct_runs_that_collect_groups(tmp_path, data_root):
    launch(["-m", *QUICK, "task.max_iters=2", "sweep_name=s", "seed=range(3)"], cwd=tmp_path)
    runs = scaling.load_runs([tmp_path / "sweeps" / "s"])
    assert len({r.run_dir for r in runs}) == 3
    assert sorted(r.seed for r in runs) == [0, 1, 2] and all(r.status == "finished" for r in runs)
    assert len({r.final_val_loss for r in runs}) == 3  # three seeds, three different models
    (group,) = seeds.group_seeds(runs)
    assert group.summary.n == 3 and group.seeds == [0, 1, 2]


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------
@pytest.fixture
def groups(tmp_path) -> Path:
    for i, loss in enumerate(A):
        fake_run(tmp_path / "baseline" / f"{i}_seed={i}", loss, seed=i, bpb=loss / 2)
    for i, loss in enumerate(B):
        fake_run(tmp_path / "change" / f"{i}_seed={i}", loss, seed=i, lr=3e-3)
    fake_run(tmp_path / "change" / "5_seed=5", math.nan, seed=5, lr=3e-3, status="failed")
    fake_run(tmp_path / "single" / "0", 3.3)
    return tmp_path


def row(out: str, first: str) -> list[str]:
    return next(line.split() for line in out.splitlines() if line.startswith(first))


def test_compare_prints_the_groups_welch_and_the_target_test(groups):
    from scipy import stats as sp

    proc = cli("compare", groups / "baseline", groups / "change", "--target", "3.28")
    assert proc.returncode == 0, proc.stderr
    a, b = row(proc.stdout, "A "), row(proc.stdout, "B ")
    assert a[2:5] == ["5", "3.2830", "0.0030"] and a[5:7] == ["[3.2792,", "3.2867]"]
    assert b[2:4] == ["5", "3.2721"] and b[-1] == "1"  # the failed run is counted as left out
    welch = row(proc.stdout, "B - A")
    assert float(welch[-1]) == pytest.approx(sp.ttest_ind(B, A, equal_var=False).pvalue, rel=0.01)
    assert float(welch[-3]) == pytest.approx(sp.ttest_ind(B, A, equal_var=False).statistic, abs=0.005)
    target = proc.stdout.split("One-sided t-test")[1]
    a_t, b_t = row(target, "A "), row(target, "B ")
    assert a_t[-1] == "FAIL" and b_t[-1] == "PASS"
    assert float(b_t[-2]) == pytest.approx(sp.ttest_1samp(B, 3.28, alternative="less").pvalue, rel=0.01)


def test_compare_one_group_and_other_losses(groups):
    proc = cli("compare", groups / "baseline", "--loss", "final_bpb", "--target", "1.65")
    assert proc.returncode == 0, proc.stderr
    assert "final val bits per byte" in proc.stdout and "Welch" not in proc.stdout
    assert row(proc.stdout.split("One-sided")[1], "A ")[-1] == "PASS"
    mixed = cli("compare", groups)  # every run under one directory: two lrs in one group
    assert "note: group A's runs differ in optim.lr, not only by seed" in mixed.stdout
    # the same from a CSV (no configs): lr 1e-3 (baseline and single) and lr 3e-3
    scaling.write_csv(scaling.load_runs([groups]), groups / "all.csv")
    from_csv = cli("compare", groups / "all.csv")
    assert "note: group A's runs differ in their point (2 different), not only by seed" in from_csv.stdout


@pytest.mark.parametrize("args, message", [
    (["{root}/nope"], "error: {root}/nope: no such directory: give a sweep or run directory"),
    (["{root}/empty"], "error: {root}/empty holds no run directories"),
    (["{root}/baseline", "{root}/single"], ("error: group B ({root}/single) has 1 finished run with a final "
                                            "val loss (nats/token): Welch's t-test needs at least 2 per group")),
    (["{root}/single", "--target", "3.3"], "error: group A ({root}/single) has 1 finished run"),
    (["{root}/change", "--loss", "final_bpb"], ("error: no finished run in {root}/change has a final val bits "
                                                "per byte (6 run(s): 1 failed, 5 finished); choose another --loss")),
    (["{root}/baseline", "--target", "nan"], "error: --target must be a finite loss, got nan"),
])
def test_compare_bad_input_is_one_line_and_exit_2(groups, args, message):
    (groups / "empty").mkdir()
    proc = cli("compare", *[a.format(root=groups) for a in args])
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.startswith(message.format(root=groups)), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stdout == ""
