"""Scaling-law tooling: fits recover known laws, collection lists every run, the CLI works end to end."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nanogpt.scaling import collect as scaling
from nanogpt.scaling.collect import (CHINCHILLA_TABLE, Approach3Fit, bootstrap_approach3, chinchilla_law,
                             compute_frontier, fit_approach3, fit_power_law, group_by_compute,
                             isoflop_fit)

REPO = Path(__file__).resolve().parent.parent
TRUTH = Approach3Fit(E=1.8, A=300.0, B=900.0, alpha=0.32, beta=0.36)


def grid_points(law: Approach3Fit, noise: float, seed: int = 0):
    """Every pairing of 7 sizes and 7 token counts, with log-normal loss noise."""
    N, D = (a.ravel() for a in np.meshgrid(np.logspace(6, 9.5, 7), np.logspace(8, 11.5, 7)))
    rng = np.random.default_rng(seed)
    return N, D, law.predict(N, D) * np.exp(rng.normal(0, noise, N.size))


def isoflop_points(law: Approach3Fit, noise: float, seed: int = 0, budgets=np.logspace(17, 21, 5)):
    N, D, C = [], [], []
    rng = np.random.default_rng(seed)
    for budget in budgets:
        sizes = law.compute_optimal(budget)[0] * np.logspace(-1, 1, 9)
        N += list(sizes)
        D += list(budget / (6 * sizes))
        C += list(budget * rng.uniform(0.97, 1.03, sizes.size))  # planned budgets are not exact
    N, D, C = map(np.array, (N, D, C))
    return N, D, C, law.predict(N, D) * np.exp(rng.normal(0, noise, N.size))


# --------------------------------------------------------------------------------------------
# The paper's numbers
# --------------------------------------------------------------------------------------------
def test_chinchilla_table_gives_equal_scaling():
    params, flops, tokens = (np.array(CHINCHILLA_TABLE[k]) for k in ("params", "flops", "tokens"))
    # every row but 67B (Gopher's budget, see the table's comment) is C = 6 N D to rounding
    ratio = flops / (6 * params * tokens)
    assert np.all(np.abs(np.delete(ratio, 3) - 1) < 0.01), ratio
    assert abs(ratio[3] - 1) < 0.05
    n_law, d_law = fit_power_law(flops, params), fit_power_law(flops, tokens)
    assert 0.45 <= n_law.a <= 0.55 and 0.45 <= d_law.a <= 0.55
    assert n_law.ci[0] < n_law.a < n_law.ci[1]
    assert n_law.predict(1.21e20) == pytest.approx(1e9, rel=0.1)


def test_chinchilla_law_compute_optimal_minimises_loss_at_fixed_compute():
    law = chinchilla_law()
    assert (law.E, law.A, law.B, law.alpha, law.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)
    assert law.a == pytest.approx(0.28 / 0.62) and law.a + law.b == pytest.approx(1)
    C = 5.76e23
    N_opt, D_opt = law.compute_optimal(C)
    assert 6 * N_opt * D_opt == pytest.approx(C)
    N = N_opt * np.logspace(-1, 1, 2001)  # brute force along the isoFLOP line
    assert N[np.argmin(law.predict(N, C / (6 * N)))] == pytest.approx(N_opt, rel=0.01)
    assert scaling.compute_optimal(law, C)[0] == N_opt


# --------------------------------------------------------------------------------------------
# Fits
# --------------------------------------------------------------------------------------------
def test_power_law_exact_and_errors():
    x = np.logspace(18, 22, 6)
    fit = fit_power_law(x, 3.0 * x ** 0.7)
    assert fit.a == pytest.approx(0.7) and fit.const == pytest.approx(math.log(3.0))
    assert fit.ci[1] - fit.ci[0] < 1e-6
    assert all(math.isnan(v) for v in fit_power_law([1e18, 1e19], [1e8, 3e8]).ci)
    with pytest.raises(ValueError, match="two distinct"):
        fit_power_law([1e18, 1e18], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        fit_power_law([1e18, 1e19], [0.0, 2.0])


def test_approach3_is_exact_on_noise_free_data():
    # also guards the optimiser's stopping rule: the objective near the optimum is ~1e-10
    fit = fit_approach3(*grid_points(TRUTH, noise=0.0))
    for name in ("E", "A", "B", "alpha", "beta"):
        assert getattr(fit, name) == pytest.approx(getattr(TRUTH, name), rel=1e-3), name


def test_approach3_recovers_a_noisy_law():
    N, D, L = grid_points(TRUTH, noise=0.01, seed=1)
    fit = fit_approach3(N, D, L)
    assert abs(fit.alpha - TRUTH.alpha) < 0.05 and abs(fit.beta - TRUTH.beta) < 0.05
    assert abs(fit.E - TRUTH.E) < 0.05 and abs(fit.a - TRUTH.a) < 0.05
    assert fit.n_points == len(N)
    # thinning the grid finds the same optimum as the paper's full grid would on this data
    assert fit_approach3(N, D, L, n_starts=5).objective == pytest.approx(fit.objective, rel=1e-6)


def test_bootstrap_intervals_contain_the_truth():
    N, D, L = grid_points(TRUTH, noise=0.01, seed=2)
    boot = bootstrap_approach3(N, D, L, n_boot=40, n_starts=2, seed=0)
    for name, value in TRUTH.as_dict().items():
        lo, hi = boot.interval(name)
        assert lo < value < hi, (name, lo, value, hi)
        assert lo < getattr(boot.fit, name) < hi
    (n_lo, n_hi), (d_lo, d_hi) = boot.compute_optimal_interval(1e21)
    N_true, D_true = TRUTH.compute_optimal(1e21)
    assert n_lo < N_true < n_hi and d_lo < D_true < d_hi


def test_approach3_rejects_too_few_runs():
    with pytest.raises(ValueError, match="at least 6 runs"):
        fit_approach3([1e6, 1e7, 1e8], [1e9, 1e9, 1e10], [3.0, 2.9, 2.5])
    with pytest.raises(ValueError, match="finite and positive"):
        fit_approach3([1e6] * 5 + [-1.0], [1e9] * 6, [3.0] * 6)


def test_group_by_compute_tolerates_inexact_budgets():
    C = [1e18, 1.05e19, 0.98e18, 1.03e18, 1e19, 5e19]
    groups = [sorted(g.tolist()) for g in group_by_compute(C, rtol=0.1)]
    assert groups == [[0, 2, 3], [1, 4], [5]]


def test_isoflop_recovers_the_exponent():
    N, D, C, L = isoflop_points(TRUTH, noise=0.005)
    iso = isoflop_fit(N, D, C, L)
    assert len(iso.profiles) == 5 and all(p.interior for p in iso.profiles)
    assert abs(iso.N_law.a - TRUTH.a) < 0.05 and abs(iso.D_law.a - TRUTH.b) < 0.05
    assert iso.N_law.ci[0] < TRUTH.a < iso.N_law.ci[1]
    for p in iso.profiles:  # D_opt is where the budget puts it: C / (6 N_opt) here
        assert p.D_opt == pytest.approx(p.C / (6 * p.N_opt), rel=0.05)
    N_opt, D_opt = iso.compute_optimal(1e22)
    assert N_opt == pytest.approx(TRUTH.compute_optimal(1e22)[0], rel=0.25)


def test_isoflop_skips_budgets_without_a_minimum():
    N, D, C, L = isoflop_points(TRUTH, noise=0.0, budgets=[1e18, 1e19, 1e20])
    keep = np.r_[0:18, 18:20]  # the last budget keeps only two sizes
    iso = isoflop_fit(N[keep], D[keep], C[keep], L[keep])
    assert len(iso.profiles) == 2 and "at least 3 model sizes" in iso.skipped[0]
    with pytest.raises(ValueError, match="not convex"):
        scaling.isoflop_profile([1e6, 1e7, 1e8], [1e9] * 3, [3.0, 3.5, 3.0], 1e16)
    with pytest.raises(ValueError, match="two budgets"):
        isoflop_fit(N[:9], D[:9], C[:9], L[:9])


def test_compute_frontier():
    C = np.array([1e18, 2e18, 3e18, 1e18, 5e18])
    L = np.array([3.0, 3.2, 2.8, 2.9, 2.9])
    assert compute_frontier(C, L).tolist() == [3, 2]


# --------------------------------------------------------------------------------------------
# Collection
# --------------------------------------------------------------------------------------------
def write_run(run_dir: Path, summary: dict | None = None, metrics: list[dict] | None = None,
              hydra_config: str | None = None, tail: str = ""):
    run_dir.mkdir(parents=True)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    if metrics is not None:
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics) + tail)
    if hydra_config is not None:
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text(hydra_config)


def summary(status="finished", N=1_000_000, D=50_000_000, loss=3.0, lr=1e-3, n_layer=2, n_embd=64, **kw):
    s = dict(status=status, params=N + 200_000, params_non_embedding=N, tokens=D,
                flops=6.3 * N * D, flops_per_token=int(6.3 * N), iters=100, max_iters=100,
                best_val_loss=loss - 0.01, final_val_loss=loss, final_train_loss=loss - 0.1,
                wall_time_s=12.5, tokens_per_s=4e6, mfu=None,
                config=dict(model=dict(n_layer=n_layer, n_head=2, n_embd=n_embd, block_size=64),
                            optim=dict(lr=lr, min_lr=lr / 10), data=dict(name="tiny"),
                            task=dict(name="train"), seed=0))
    return {**s, **kw}


def train_line(it, loss):
    return dict(kind="train", iter=it, tokens=it * 1000, loss=loss, lr=1e-3, ms_per_iter=5.0,
                tokens_per_s=2e5, mfu=None, time_s=it * 0.005)


def eval_line(it, val):
    return dict(kind="eval", iter=it, tokens=it * 1000, train_loss=val - 0.1, val_loss=val, time_s=it * 0.005)


@pytest.fixture
def sweep(tmp_path) -> Path:
    """A Hydra multirun: finished, failed and interrupted jobs, and one that died before its summary."""
    root = tmp_path / "multirun" / "2026-11-29" / "16-30-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text("hydra: {}\n")
    write_run(root / "0_model.n_layer=2,optim.lr=0.001", summary(), [train_line(1, 4.0), eval_line(1, 3.0)])
    write_run(root / "1_model.n_layer=4,optim.lr=0.001", summary(N=2_000_000, loss=2.8), [])
    write_run(root / "2_model.n_layer=4,optim.lr=0.01", summary(status="failed", final_val_loss=None),
              [eval_line(5, 3.7), eval_line(10, 3.5)])
    write_run(root / "3_model.n_layer=8,optim.lr=0.001", summary(status="interrupted", N=4_000_000))
    write_run(root / "10_model.n_layer=8,optim.lr=0.01", None,
              [train_line(10, 4.2), eval_line(10, 3.9), eval_line(20, 3.6), train_line(30, 3.5)],
              hydra_config="model:\n  n_layer: 8\n  n_embd: ${oc.select:x,64}\noptim:\n  lr: 0.01\n",
              tail='{"kind": "train", "iter": 4')  # the process died mid-write
    return tmp_path / "multirun"


def test_collect_lists_every_run_with_its_status(sweep):
    runs = scaling.load_runs([sweep])
    names = [Path(r.run_dir).name.split("_")[0] for r in runs]
    assert names == ["0", "1", "2", "3", "10"]  # natural order of Hydra's job numbers
    assert [r.status for r in runs] == ["finished", "finished", "failed", "interrupted", "incomplete"]
    done, _, failed, _, incomplete = runs
    assert (done.N, done.D, done.final_val_loss) == (1e6, 5e7, 3.0)
    assert done.best_val_loss == pytest.approx(2.99) and done.wall_time_s == 12.5
    assert done.C == pytest.approx(6.3e6 * 5e7) and (done.lr, done.n_layer, done.n_embd) == (1e-3, 2, 64)
    assert failed.final_val_loss == 3.5 and failed.lr == 1e-3  # from metrics.jsonl when the summary has none
    # no summary: what metrics.jsonl and .hydra/config.yaml say; N is unknown
    assert (incomplete.D, incomplete.iters, incomplete.final_val_loss, incomplete.best_val_loss) == (30_000, 30, 3.6, 3.6)
    assert (incomplete.lr, incomplete.n_layer, incomplete.n_embd) == (0.01, 8, None)
    assert math.isnan(incomplete.N) and math.isnan(incomplete.C)
    assert scaling.fit_data(runs)["run_dir"].tolist() == [done.run_dir, runs[1].run_dir]
    assert scaling.load_runs([sweep], n_kind="total")[0].N == 1_200_000


def test_collect_names_runs_as_the_runs_table_does_and_keeps_the_overrides_in_its_csv(tmp_path):
    """`collect` named a sweep's runs by Hydra's whole override string (a 115-character column,
    cut and hashed by Hydra when longer); it shows the runs table's short names, and `--out`
    keeps each run's full overrides (.hydra/overrides.yaml) beside its directory."""
    from nanogpt.run.table import short_names

    overrides = ["experiment=scaling/isoflop_tiny", "task.max_flops=1e10", "model.n_embd=16",
                 "hardware.micro_batch_size=8"]
    long = "0_experiment=scaling-isoflop_tiny,hardware.micro_batch_size=8,model.n_embd=16,-238f7e16e397"
    write_run(tmp_path / "sweep" / long, summary(), [eval_line(1, 3.0)])
    write_run(tmp_path / "sweep" / "1_model.n_embd=24", summary(N=2_000_000, loss=2.8), [])
    (tmp_path / "sweep" / long / ".hydra").mkdir()
    (tmp_path / "sweep" / long / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))

    out = cli("collect", tmp_path / "sweep", "--out", tmp_path / "runs.csv").stdout
    names = [line.split()[0] for line in out.splitlines()[1:3]]
    assert names == ["0", "1"] == short_names([str(tmp_path / "sweep" / long), str(tmp_path / "sweep" / "1_x=1")])
    assert "experiment=" not in out
    import csv
    rows = list(csv.DictReader((tmp_path / "runs.csv").open()))
    assert [(r["name"], r["overrides"]) for r in rows] == [("0", " ".join(overrides)), ("1", "")]
    assert rows[0]["run_dir"].endswith(long)
    back = scaling.load_runs([tmp_path / "runs.csv"])
    assert back[0].overrides == " ".join(overrides)  # read back, and fit/compare read the CSV as before
    assert "0  " in cli("collect", tmp_path / "runs.csv").stdout


def test_collect_falls_back_to_6ND_and_flags_corrupt_metrics(tmp_path):
    s = summary()
    del s["flops"]
    write_run(tmp_path / "a", s)
    assert scaling.read_run(tmp_path / "a").C == 6 * 1e6 * 5e7
    write_run(tmp_path / "b", None, [eval_line(1, 3.0)], tail="garbage\n" + json.dumps(eval_line(2, 2.9)) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        scaling.read_metrics(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="no such directory"):
        scaling.find_run_dirs([tmp_path / "missing"])


def test_csv_round_trip(sweep, tmp_path):
    runs = scaling.load_runs([sweep])
    scaling.write_csv(runs, tmp_path / "runs.csv")
    back = scaling.load_runs([tmp_path / "runs.csv"])
    assert len(back) == len(runs)
    for a, b in zip(runs, back):
        for col in scaling.CSV_COLUMNS:
            x, y = getattr(a, col), getattr(b, col)
            assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)), col
    assert scaling.load_runs([tmp_path / "runs.csv"], n_kind="total")[0].N == 1_200_000


def test_best_lr_picks_the_minimum_per_size(tmp_path):
    # loss = parabola in log lr with its minimum at 3e-3, 1e-3 and (beyond the sweep) 1e-4
    for size, (n_embd, best) in enumerate([(64, 3e-3), (128, 1e-3), (256, 1e-4)]):
        for lr in [3e-4, 1e-3, 3e-3, 1e-2]:
            for seed in range(2):
                loss = 3.0 - size * 0.3 + 0.1 * np.log(lr / best) ** 2 + 0.001 * seed
                write_run(tmp_path / f"{size}_{lr}_{seed}",
                          summary(N=10_000 * n_embd, loss=loss, lr=lr, n_embd=n_embd))
        write_run(tmp_path / f"{size}_diverged", summary(status="failed", N=10_000 * n_embd, loss=1.0, lr=0.1, n_embd=n_embd))
    runs = scaling.load_runs([tmp_path])
    small, big, edge = scaling.best_lr(runs)
    assert (small.size, small.best_lr, big.best_lr) == ("n_layer=2 n_embd=64", 3e-3, 1e-3)
    assert small.fitted_lr == pytest.approx(3e-3, rel=1e-3) and big.fitted_lr == pytest.approx(1e-3, rel=1e-3)
    assert small.lrs.tolist() == [3e-4, 1e-3, 3e-3, 1e-2] and not small.edge  # the failed run is ignored
    assert small.best_loss == pytest.approx(3.0005)
    assert edge.edge and edge.best_lr == 3e-4 and math.isnan(edge.fitted_lr)  # extend the sweep down
    assert [c.size for c in scaling.best_lr(runs, by="N")] == ["N=6.4e+05", "N=1.28e+06", "N=2.56e+06"]


# --------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------
def cli(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "nanogpt.scaling", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_cli_end_to_end(tmp_path, sweep):
    synthetic = scaling.synthetic_sweep(tmp_path / "sweeps" / "isoflop", law=TRUTH, noise=0.003)
    out = cli("collect", synthetic, sweep).stdout
    assert "33 runs: 1 failed, 30 finished, 1 incomplete, 1 interrupted" in out
    assert "multirun/2026-11-29/16-30-00/10  incomplete" in out  # the runs table's short name
    cli("collect", synthetic, "--out", tmp_path / "runs.csv")

    out = cli("fit", tmp_path / "runs.csv", "--bootstrap", "8", "--starts", "10",
              "--target-flops", "1e21", "--plots", tmp_path / "plots").stdout
    assert "28 of 28 runs" in out and "Approach 3" in out and "Approach 2" in out
    a3 = float(next(line.split()[1] for line in out.splitlines() if line.strip().startswith("a ")))
    assert abs(a3 - TRUTH.a) < 0.05
    assert "Compute-optimal allocation" in out and "1e+21" in out
    for name in ("loss_vs_flops.png", "isoflops.png", "approach3.png"):
        png = tmp_path / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    out = cli("best-lr", sweep).stdout
    assert "n_layer=2 n_embd=64" in out and "0.001" in out


def test_cli_errors_are_clear(tmp_path, sweep):
    proc = cli("fit", sweep, "--approach", "3", check=False)
    assert proc.returncode != 0 and "at least 6 runs" in proc.stderr
    proc = cli("fit", sweep, check=False)  # both approaches fail: said, and a non-zero status
    assert proc.returncode == 2 and "approach 2: needs at least two budgets" in proc.stderr
    proc = cli("collect", tmp_path / "nope", check=False)
    assert proc.returncode != 0 and "no such directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = cli("collect", tmp_path / "empty", check=False)
    assert proc.returncode != 0 and "no run directories" in proc.stderr


@pytest.mark.parametrize("case", ["empty dir", "no such dir", "one run", "too few for approach 3",
                                  "bad --approach", "no command", "best-lr on no runs", "garbled CSV"])
def test_scaling_bad_input_is_one_error_line_and_exit_2(tmp_path, case):
    """A fit that cannot be made, or input that is not a sweep, is the user's to fix: one `error:`
    line that says what to do, exit 2 (the project's user-error code), no traceback (before:
    exit 1, and no `error:` at all for an empty folder or a sweep of one run)."""
    (tmp_path / "empty").mkdir()
    write_run(tmp_path / "one" / "0_model.n_embd=16", summary(), [eval_line(1, 3.0)])
    one = tmp_path / "one"
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    args, expected = {
        "empty dir": (["fit", tmp_path / "empty"], f"error: no run directories under {tmp_path / 'empty'}: a run is a "
                      "directory holding summary.json, metrics.jsonl or .hydra/; pass a sweep's folder, run "
                      "directories or a collect CSV"),
        "no such dir": (["collect", tmp_path / "nope"], f"error: {tmp_path / 'nope'}: no such directory"),
        "one run": (["fit", one], "error: no scaling law could be fitted to 1 finished run (approach 3: fits 5 "
                    "parameters: it needs at least 6 runs spanning several N and D, got 1 runs, 1 distinct N, 1 "
                    "distinct D; approach 2: needs at least two budgets with a minimum, got 0 (C=3.15e+14: a "
                    "parabola needs at least 3 model sizes, got 1)): add runs of more sizes and budgets"),
        "too few for approach 3": (["fit", one, "--approach", "3", "--bootstrap", "0"],
                                   "error: no scaling law could be fitted to 1 finished run (approach 3: fits 5 "
                                   "parameters: it needs at least 6 runs"),
        "bad --approach": (["fit", one, "--approach", "4"], "error: argument --approach: invalid choice: '4' (choose "
                           "from '2', '3', 'both') (usage: python -m nanogpt.scaling fit --help)"),
        "no command": ([], "error: the following arguments are required: command (usage: python -m "
                       "nanogpt.scaling --help)"),
        "best-lr on no runs": (["best-lr", tmp_path / "empty"], "error: no finished runs with an lr and a final "
                               "val loss under"),
        "garbled CSV": (["fit", tmp_path / "bad.csv"], f"error: {tmp_path / 'bad.csv'}: not a `collect` CSV"),
    }[case]
    proc = cli(*args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(expected) and proc.stderr.count("\n") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_bits_per_byte_and_branches_are_collected_and_fitted(tmp_path):
    root = tmp_path / "sweep"
    write_run(root / "a", summary(final_val_bpb=1.5, best_val_bpb=1.4), [])
    write_run(root / "b", summary(N=2_000_000, final_val_bpb=1.3, best_val_bpb=1.25,
                                  branched_from={"run": str(root / "a"), "iter": 40}), [])
    write_run(root / "c", summary(), [eval_line(1, 3.0) | {"val_bpb": 1.7}])  # an older summary: from metrics
    a, b, c = scaling.load_runs([root])
    assert (a.loss("final_bpb"), a.loss("best_bpb"), a.loss("final"), a.loss("best")) == (1.5, 1.4, 3.0, pytest.approx(2.99))
    assert b.branched_from == f"{root / 'a'}@40" and a.branched_from == ""
    assert c.final_val_bpb == 1.7 and math.isnan(c.best_val_bpb)
    assert list(scaling.fit_data([a, b, c], "final_bpb")["L"]) == [1.5, 1.3, 1.7]
    assert list(scaling.fit_data([a, b, c], "best_bpb")["L"]) == [1.4, 1.25]  # c has none: left out
    out = tmp_path / "runs.csv"
    scaling.write_csv([a, b, c], out)
    back = scaling.read_csv(out)
    assert [r.final_val_bpb for r in back] == [1.5, 1.3, 1.7] and back[1].branched_from == b.branched_from
    # a CSV written before these columns existed still reads
    lines = out.read_text().splitlines()
    header = lines[0].split(",")
    keep = [i for i, h in enumerate(header) if h not in ("final_val_bpb", "best_val_bpb", "branched_from")]
    out.write_text("\n".join(",".join(line.split(",")[i] for i in keep) for line in lines) + "\n")
    old = scaling.read_csv(out)
    assert math.isnan(old[0].final_val_bpb) and old[0].final_val_loss == 3.0 and old[1].branched_from == ""


# --------------------------------------------------------------------------------------------
# Fits that cannot be made: said in one line, never a traceback (issue 25, item 1)
# --------------------------------------------------------------------------------------------
def write_points(root: Path, N, D, L, C=None) -> Path:
    """A sweep of finished runs with the given N, D and final val loss (C = 6 N D unless given)."""
    C = 6 * np.asarray(N) * np.asarray(D) if C is None else C
    for i, (n, d, c, loss) in enumerate(zip(N, D, C, L)):
        write_run(root / f"{i}_run", dict(status="finished", params=float(n), params_non_embedding=float(n),
                                          tokens=float(d), flops=float(c), final_val_loss=float(loss),
                                          best_val_loss=float(loss)))
    return root


def two_budgets(L):
    """6 runs: 3 sizes at each of 2 budgets, tiny-model numbers (a first sweep on a laptop)."""
    N = np.array([1e5, 2e5, 4e5] * 2)
    D = np.repeat([1e12, 4e12], 3) / (6 * N)
    return N, D, np.asarray(L, dtype=float)


# Sweeps on which fit_approach3 overflowed (OverflowError: math range error, from exp(log A) past
# 709 in the bootstrap): the loss rises with N at each budget (undertrained large models), or is
# flat but for noise; and a 9-run sweep of random numbers.
RISING = two_budgets([2.5, 2.6, 2.8, 2.3, 2.35, 2.5])
FLAT_NOISE = two_budgets(2.5 + np.array([0.01, -0.01, 0.0, 0.02, -0.02, 0.01]))


def random_sweep(seed: int, n: int):
    rng = np.random.default_rng(seed)
    return 10 ** rng.uniform(4, 7, n), 10 ** rng.uniform(5, 8, n), 1.5 + 10 ** rng.uniform(-1, 0.5, n)


def test_approach3_and_its_bootstrap_never_overflow_on_small_sweeps():
    for N, D, L in (FLAT_NOISE, random_sweep(0, 6), random_sweep(3, 9)):  # each overflowed
        fit = fit_approach3(N, D, L, n_starts=20)
        boot = bootstrap_approach3(N, D, L, n_boot=10, fit=fit)
        assert all(math.isfinite(v) for v in (fit.E, fit.A, fit.B, fit.alpha, fit.beta))
        assert fit.degenerate and np.isfinite(boot.samples["E"]).sum() >= 5
        assert all(lo <= hi for lo, hi in boot.intervals.values() if math.isfinite(lo))
        boot.compute_optimal_interval(1e13)


def test_degenerate_fits_are_flagged_and_good_ones_are_not():
    rising = fit_approach3(*RISING, n_starts=20)
    assert any(p.startswith("alpha = 5 is at the edge") for p in rising.problems), rising.problems
    # a loss with no floor (E = 0): the fit's E collapses to ~0 (3e-69 in the report), said so
    no_floor = Approach3Fit(E=0.0, A=300.0, B=900.0, alpha=0.32, beta=0.36)
    fit = fit_approach3(*grid_points(no_floor, noise=0.0))
    assert fit.E < 1e-3 and any("is ~0 (the runs do not pin down the irreducible loss)" in p for p in fit.problems)
    assert not fit_approach3(*grid_points(TRUTH, noise=0.01, seed=1)).degenerate
    flat = fit_approach3(*two_budgets([2.5] * 6), n_starts=20)  # no trade-off at all
    assert flat.degenerate


def test_fit_cli_flags_a_degenerate_fit_in_one_warning_line(tmp_path):
    sweep = write_points(tmp_path / "sweep", *FLAT_NOISE)  # overflowed in the bootstrap
    proc = cli("fit", sweep, "--bootstrap", "10", "--starts", "20", "--plots", tmp_path / "plots")
    assert "Traceback" not in proc.stderr
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "the approach-3 fit is degenerate: alpha = 5" in warning[0], proc.stderr
    assert "DEGENERATE (see the warning)" in proc.stdout
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"loss_vs_flops.png", "isoflops.png", "approach3.png"}
    cli("fit", sweep, "--bootstrap", "0", "--starts", "5", "--plots", tmp_path / "vector", "--format", "pdf")
    assert all((tmp_path / "vector" / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
               for name in ("loss_vs_flops", "isoflops", "approach3"))


def test_fit_cli_says_in_one_line_why_approach2_fails_and_still_plots_the_curves(tmp_path):
    # one budget only: no parabola pair, so no power law; the raw curves are still drawn
    law = chinchilla_law()
    N = law.compute_optimal(1e18)[0] * np.logspace(-1, 1, 4)
    sweep = write_points(tmp_path / "one_budget", N, 1e18 / (6 * N), law.predict(N, 1e18 / (6 * N)))
    proc = cli("fit", sweep, "--approach", "2", "--plots", tmp_path / "plots", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1] == (  # after a matplotlib warning on the one-budget axis
        "error: no scaling law could be fitted to 4 finished runs (approach 2: needs at least two budgets with "
        "a minimum, got 1 (the raw curves are in the plots)): add runs of more sizes and budgets")
    assert (tmp_path / "plots" / "isoflops.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # two budgets, one with too few sizes: the reason per budget, still on one line
    N2 = np.r_[N, N[:2] * 3]
    D2 = np.r_[1e18 / (6 * N), 1e19 / (6 * N2[4:])]
    sweep2 = write_points(tmp_path / "uneven", N2, D2, law.predict(N2, D2))
    proc = cli("fit", sweep2, "--approach", "2", check=False)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "needs at least two budgets with a minimum, got 1 (C=1e+19: a parabola needs at least 3 model sizes, got 2)" in proc.stderr


def fit_random_sweeps(tmp_path, cases: int, seed: int):
    """Property: whatever a small sweep holds (2-12 finished runs; sizes, tokens, losses at random,
    repeated values, one budget or many), `fit` ends with 0 or 1 or a one-line error, never a
    traceback, and writes its plots."""
    from nanogpt.scaling.__main__ import main
    rng = np.random.default_rng(seed)
    for case in range(cases):
        n = int(rng.integers(2, 13))
        N = rng.choice(10 ** rng.uniform(4, 7, 3), n) if case % 3 == 0 else 10 ** rng.uniform(4, 7, n)
        C = rng.choice([1e12, 3e12, 1e13], n) * (1 + rng.uniform(-0.02, 0.02, n)) if case % 2 else 10 ** rng.uniform(11, 14, n)
        L = 1.2 + 10 ** rng.uniform(-2, 0.7, n) if case % 4 else np.full(n, 2.0)
        if case % 4 == 1:  # no structure at all: the kind that overflowed
            N, D, L = random_sweep(seed + case, 9 if case % 8 == 1 else 6)
            C = 6 * N * D
        sweep = write_points(tmp_path / f"sweep{case}", N, C / (6 * N), L, C)
        try:
            status = main(["fit", str(sweep), "--bootstrap", "10", "--starts", "4", "--target-flops", "1e15",
                           "--plots", str(tmp_path / f"plots{case}")])
        except SystemExit as e:  # nothing may exit past main's one-line errors
            raise AssertionError((case, e.code)) from None
        assert status in (0, 2), (case, status)  # 2: nothing could be fitted, said in one line
        assert (tmp_path / f"plots{case}" / "loss_vs_flops.png").exists(), case


def test_fit_never_raises_on_random_small_sweeps(tmp_path):
    fit_random_sweeps(tmp_path, cases=8, seed=25)


@pytest.mark.slow
def test_fit_never_raises_on_many_random_small_sweeps(tmp_path):
    fit_random_sweeps(tmp_path, cases=60, seed=2025)


@pytest.mark.slow
def test_fit_with_the_readme_defaults_on_6_and_9_run_sweeps(tmp_path):
    """The report's command as it stands in the README: `fit SWEEP` (--approach both --bootstrap 200)."""
    for name, points in (("six", FLAT_NOISE), ("nine", random_sweep(3, 9))):
        proc = cli("fit", write_points(tmp_path / name, *points), "--plots", tmp_path / f"{name}_plots")
        assert "Traceback" not in proc.stderr and "bootstrap resamples" in proc.stdout
        assert (tmp_path / f"{name}_plots" / "approach3.png").exists()
