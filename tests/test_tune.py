"""Tuned-per-scale fits (nanogpt.scaling.tune): on synthetic size x lr x batch sweeps whose optimal
lr and batch follow known power laws of compute (DeepSeek LLM's), `tune-fit` recovers them."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanogpt.scaling import collect, tune

REPO = Path(__file__).resolve().parent.parent
LAW = collect.chinchilla_law()
LR_EXP, BATCH_EXP = tune.DEEPSEEK_LR[1], tune.DEEPSEEK_BATCH[1]


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    root = tune.synthetic_tune_sweep(tmp_path_factory.mktemp("exact") / "sweep", LAW)
    return root, tune.tune_fit(collect.load_runs([root]))


def test_noise_free_sweep_gives_the_exact_laws(exact):
    _, fit = exact
    assert [b.C for b in fit.points] == pytest.approx([1e17, 1e18, 1e19, 1e20])
    assert len(fit.cells) == 20 and all(c.n_runs == 49 for c in fit.cells)
    assert fit.lr_law.a == pytest.approx(LR_EXP, abs=1e-6)
    assert math.exp(fit.lr_law.const) == pytest.approx(tune.DEEPSEEK_LR[0], rel=1e-4)
    assert fit.batch_law.a == pytest.approx(BATCH_EXP, abs=1e-6)
    assert all(b.lr.interior and b.batch.interior for b in fit.points) and not fit.notes
    # each budget's best size is the law's compute-optimal N (the middle of its sizes)
    for b in fit.points:
        assert b.N == pytest.approx(LAW.compute_optimal(b.C)[0], rel=1e-6)
    assert abs(fit.lr_holdout.error) < 1e-5 and abs(fit.batch_holdout.error) < 1e-5  # sizes are rounded


def test_the_isoflop_fit_on_tuned_losses_is_right_where_one_lr_is_not(exact):
    _, fit = exact
    assert fit.iso.N_law.a == pytest.approx(LAW.a, abs=1e-3)
    # smaller models want larger lrs: at one lr the small ones look worse, N_opt grows slower
    assert abs(fit.iso_fixed.N_law.a - LAW.a) > 0.005


def test_a_noisy_sweep_with_seeds_recovers_the_exponents(tmp_path):
    root = tune.synthetic_tune_sweep(tmp_path / "s", LAW,
                                     noise=0.001, seeds=2, seed=1, k_batch=0.02)
    runs = collect.load_runs([root])
    fit = tune.tune_fit(runs)
    assert all(c.n_runs == 98 for c in fit.cells)  # two seeds of each (lr, batch)
    assert abs(fit.lr_law.a - LR_EXP) < 0.015 and abs(fit.batch_law.a - BATCH_EXP) < 0.01
    assert fit.lr_law.ci[0] < LR_EXP < fit.lr_law.ci[1]
    assert fit.batch_law.ci[0] < BATCH_EXP < fit.batch_law.ci[1]
    h = fit.lr_holdout
    assert abs(h.error) < 0.1 and h.interval[0] < h.measured < h.interval[1]
    assert abs(fit.batch_holdout.error) < 0.1
    assert abs(fit.iso.N_law.a - LAW.a) < abs(fit.iso_fixed.N_law.a - LAW.a)


def test_axis_optimum_refines_inside_and_flags_the_edge():
    lrs = np.array([1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1])
    losses = 3 + 0.05 * np.log(lrs / 2e-3) ** 2
    losses[-1] = 10.0  # a diverged run at the top of the grid: outside the window, no pull
    opt = tune.axis_optimum(lrs, losses)
    assert opt.interior and opt.opt == pytest.approx(2e-3, rel=1e-6) and opt.best == 3e-3
    edge = tune.axis_optimum(lrs[:3], losses[:3])
    assert not edge.interior and edge.opt == 1e-3  # best at the largest lr tried: extend the sweep
    assert not tune.axis_optimum([1e-3], [3.0]).swept


def test_an_edge_optimum_is_reported(tmp_path):
    runs = collect.load_runs([tune.synthetic_tune_sweep(
        tmp_path / "s", LAW, budgets=(1e17, 1e18),
        lrs=np.logspace(-4, -3, 3), batches=[2.0 ** 17], sizes=3)])
    fit = tune.tune_fit(runs)
    assert fit.batch_law is None and fit.lr_holdout is None
    assert "C=1e+17: the best lr (0.001) is at the edge of the grid: extend the sweep" in fit.notes
    assert "every lr optimum is at the edge of its grid: the lr_opt law describes the grid, not the optimum" in fit.notes


def cli(*args):
    return subprocess.run([sys.executable, "-m", "nanogpt.scaling", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_tune_fit_command_prints_the_laws_and_writes_the_plots(exact, tmp_path):
    root, _ = exact
    proc = cli("tune-fit", root, "--plots", tmp_path / "plots")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "980 of 980 runs are finished with an lr and a final val loss: 20 (budget, size) points in 4 budgets" in out
    assert "lr_opt = 0.3118 C^-0.1250" in out and "batch_opt = 0.292 C^0.3271" in out
    assert "Hold-out: fitted on the 3 smaller budgets, predicting C=1e+20" in out
    assert "lr_opt: predicted 0.000986, measured 0.000986, error" in out
    assert f"N_opt ~ C^{LAW.a:.4f}" in out and "at the single lr" in out
    for name in ("tuned.png", "isoflops_tuned.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:4] == b"\x89PNG", name


def test_tune_fit_bad_input_is_one_line_and_exit_2(exact, tmp_path):
    root, _ = exact
    (tmp_path / "empty").mkdir()
    one_budget = cli("tune-fit", *sorted(root.glob("*_C=1e+17,*"))[:10])
    assert one_budget.returncode == 2
    assert one_budget.stderr.startswith("error: the optimal lr as a power law of compute needs at least two "
                                        "budgets, got 1"), one_budget.stderr
    empty = cli("tune-fit", tmp_path / "empty")
    assert empty.returncode == 2 and empty.stderr.startswith(f"error: no run directories under {tmp_path / 'empty'}")
    missing = cli("tune-fit", tmp_path / "nope")
    assert missing.returncode == 2 and missing.stderr.strip() == f"error: {tmp_path / 'nope'}: no such directory"


def test_against_parameters_when_each_size_trains_one_budget(tmp_path):
    # one size per budget, the compute-optimal one: N ~ C^a, so lr_opt ~ C^-0.125 ~ N^(-0.125 / a)
    root = tune.synthetic_tune_sweep(tmp_path / "s", LAW, sizes=1, batches=[2.0 ** 18])
    fit = tune.tune_fit(collect.load_runs([root]), against="N")
    assert [p.N for p in fit.points] == sorted(p.N for p in fit.points) and len(fit.points) == 4
    assert fit.lr_law.a == pytest.approx(LR_EXP / LAW.a, abs=1e-4)
    assert fit.lr_holdout.x == fit.points[-1].N and abs(fit.lr_holdout.error) < 1e-4
    proc = cli("tune-fit", root, "--against", "N")
    assert proc.returncode == 0, proc.stderr
    assert "Tuned optimum per model size" in proc.stdout and f"N^{LR_EXP / LAW.a:.4f}" in proc.stdout
    assert "Hold-out: fitted on the 3 smaller sizes" in proc.stdout


def test_against_parameters_refuses_a_size_trained_at_several_budgets(tmp_path):
    for i, C in enumerate((1e17, 1e18)):
        for lr in (1e-3, 2e-3, 4e-3):
            tune._write_run(tmp_path / f"{i}_{lr}", N=1e7, D=C / 6e7, L=3 + math.log(lr / 2e-3) ** 2, lr=lr, B=1e5, seed=0)
    assert len(tune.tune_fit(collect.load_runs([tmp_path])).points) == 2  # against C: fine
    proc = cli("tune-fit", tmp_path, "--against", "N")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: size N=1e+07 was trained at 2 budgets: --against N needs one budget per "
                                   "size (tokens growing with parameters); fit an isoFLOP sweep --against C")
