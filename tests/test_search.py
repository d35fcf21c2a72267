"""The hyperparameter search (`-m hydra/sweeper=optuna`, hydra_plugins/nanogpt_optuna_sweeper.py,
nanogpt/run/search.py): a tiny search end to end, pruning, resuming a killed search, and each bad
input refused before any trial."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import QUICK, REPO, launch, needs_slurm

optuna = pytest.importorskip("optuna", reason="the search needs optuna: pip install -e '.[search]'")

from hydra_plugins.nanogpt_optuna_sweeper import (  # noqa: E402
    SWEEPER_CONFIG, check_search_command, parse_arguments, pruner_spec, space_json)
from nanogpt.run.search import ATTR_PRUNER, ATTR_SPACE, TRAINING_METRICS, TrialReporter, open_storage  # noqa: E402

SEARCH = ["-m", "hydra/sweeper=optuna", *QUICK, "task.eval_interval=5", "task.max_iters=20"]


def search(args: list[str], cwd: Path, env: dict, check: bool = True) -> subprocess.CompletedProcess:
    return launch([*SEARCH, *args], cwd=cwd, env=env, check=check)


def trials(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "trials.csv") as f:
        return list(csv.DictReader(f))


def trial_dirs(sweep_dir: Path) -> list[Path]:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir())


def assert_refused(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, one `error:` line naming the problem, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


# ----------------------------------------------------------------------------------------------
# the search space, parsed (no training)

def test_search_spaces_are_written_the_hydra_way():
    space, fixed = parse_arguments(["optim.lr=tag(log,interval(1e-4,1e-1))", "model.n_layer=range(1,5)",
                                    "optim.schedule=choice(cosine,wsd)", "optim.decay_frac=0.2,0.4",
                                    "model.n_head=tag(int,interval(2,8))", "task.max_iters=20"])
    d = optuna.distributions
    assert space == {"optim.lr": d.FloatDistribution(1e-4, 1e-1, log=True),
                     "model.n_layer": d.IntDistribution(1, 4),
                     "optim.schedule": d.CategoricalDistribution(["cosine", "wsd"]),
                     "optim.decay_frac": d.CategoricalDistribution([0.2, 0.4]),
                     "model.n_head": d.IntDistribution(2, 8)}
    assert fixed == ["task.max_iters=20"]


# ----------------------------------------------------------------------------------------------
# bad input: one line, exit 2, before any trial, nothing in a study changed

@pytest.mark.parametrize("bad, words", [
    ("optim.lr=interval(1e-4", ["cannot parse the search space", "interval(1e-4"]),
    ("optim.lr=tag(lg,interval(1e-4,1e-1))", ["unknown tag", "lg"]),
    ("optim.lr=glob(*)", ["a glob is not a search space"]),
    ("optim.lr=tag(log,interval(0,1))", ["cannot search optim.lr=tag(log,interval(0,1))"]),
])
def test_a_space_that_does_not_parse_is_one_line_before_hydra(capsys, bad, words):
    """launch.py checks the search space before Hydra composes anything (Hydra's own message
    would be several lines and exit 1)."""
    with pytest.raises(SystemExit) as e:
        check_search_command(["-m", "hydra/sweeper=optuna", "task.max_iters=20", bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and all(w in err for w in words), err


@pytest.mark.parametrize("bad, words", [
    ("optim.lr=interval(1e-4", ["cannot parse the search space", "interval(1e-4"]),
    ("optim.lr=interval(-1,1)", ["cannot search optim.lr at -1.0", ">= 0"]),
    ("model.n_layer=choice(2,x)", ["cannot search model.n_layer", "could not be converted to Integer"]),
    ("+optim.foo=choice(1,2)", ["optim.foo is not a config key"]),
    ("hydra.sweeper.metric=val_los", ["metric=val_los", "final_val_loss"]),
    ("hydra.sweeper.storage=sqlite:////no/such/dir/study.db", ["cannot open the study's storage"]),
    ("hydra.sweeper.storage=/no/such/dir/study.journal", ["cannot open the study's storage", "no directory"]),
    ("hydra.sweeper.pruner=medain", ["pruner=medain", "median"]),
    ("hydra.sweeper.direction=maximize", ["direction=maximize with a pruner", "pruner=none"]),
    ("hydra.sweeper.pruner_warmup_frac=1.5", ["pruner_warmup_frac=1.5", "from 0", "below 1"]),
])
def test_bad_input_is_refused_before_any_trial(tmp_path, env, bad, words):
    args = [bad] if bad.startswith("optim.lr=") else ["optim.lr=1e-3,1e-2", bad]
    proc = search([*args, "sweep_name=s"], tmp_path, env, check=False)
    assert_refused(proc, *words)
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "runs").exists()


def test_a_study_name_reused_with_another_space_is_refused_and_left_unchanged(tmp_path, env):
    journal = tmp_path / "sweeps" / "s" / "optuna.journal"
    journal.parent.mkdir(parents=True)
    study = optuna.create_study(study_name="s", storage=open_storage(str(journal)))
    study.set_user_attr(ATTR_SPACE, space_json(parse_arguments(["optim.lr=tag(log,interval(1e-4,1e-1))"])[0]))
    before = journal.read_bytes()
    proc = search(["optim.lr=1e-3,1e-2", "sweep_name=s"], tmp_path, env, check=False)
    assert_refused(proc, "study s", "searches another space", "optim.lr", "study_name=NAME")
    assert journal.read_bytes() == before
    assert list(journal.parent.iterdir()) == [journal]


# ----------------------------------------------------------------------------------------------
# the pruner's warm-up (no training: trials report made-up curves through the runs' reporter)

# val loss at iterations 15, 30, 45, 60 of a 60-iteration run: five trials at a high learning
# rate (ahead early, flat late), one at a low rate (behind at 15, best at the end), one bad
HIGH_LR = [[2.50 + d, 2.40 + d, 2.35 + d, 2.30 + d] for d in (0.0, 0.01, 0.02, 0.03, 0.04)]
LATE_BLOOMER = [2.70, 2.38, 2.28, 2.20]
BAD = [2.90, 2.80, 2.75, 2.70]


def run_curve(journal: Path, curve: list[float], run_dir: Path) -> int | None:
    """A trial's run: report each evaluation as training does; the iteration it is pruned at."""
    study = optuna.load_study(study_name="w", storage=open_storage(str(journal)))
    number = study.ask().number
    reporter = TrialReporter(str(journal), "w", number, run_dir, max_iters=60)
    for it, value in zip((15, 30, 45, 60), curve):
        if reporter.should_prune(it, {"val": value}):
            study.tell(number, state=optuna.trial.TrialState.PRUNED)
            return it
    study.tell(number, curve[-1])
    return None


def pruned_at(tmp_path: Path, settings: dict) -> dict:
    """Where the late bloomer and the bad trial are pruned after five high-lr trials finished,
    under the search's pruner settings (conf/hydra/sweeper/optuna.yaml over the plugin's)."""
    import yaml

    defaults = {**SWEEPER_CONFIG, **yaml.safe_load((REPO / "conf/hydra/sweeper/optuna.yaml").read_text())}
    tmp_path.mkdir()
    journal = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="w", storage=open_storage(str(journal)))
    study.set_user_attr(ATTR_PRUNER, pruner_spec({**defaults, **settings}))
    for curve in HIGH_LR:
        assert run_curve(journal, curve, tmp_path) is None
    return {"late": run_curve(journal, LATE_BLOOMER, tmp_path), "bad": run_curve(journal, BAD, tmp_path)}


def test_the_default_warm_up_keeps_a_trial_behind_early_but_best_at_the_end(tmp_path):
    """The scaled-down benchmark's median pruner stopped the grid's best learning rate at its
    first report (iteration 15 of 60), where a higher rate leads. With the default warm-up (30 %
    of the run: iteration 18) the low rate is first judged at 30, where it leads, and finishes
    best; a trial behind everywhere is still pruned at the first report past the warm-up."""
    assert pruned_at(tmp_path / "default", {}) == {"late": None, "bad": 30}
    # without the warm-up, the benchmark's failure: the winner is pruned at its first report
    assert pruned_at(tmp_path / "none", {"pruner_warmup_frac": 0}) == {"late": 15, "bad": 15}
    # a longer warm-up: nothing is judged before iteration 45
    assert pruned_at(tmp_path / "long", {"pruner_warmup_frac": 0.7}) == {"late": None, "bad": 45}


def test_the_warm_up_counts_in_iterations_too(tmp_path):
    """Optuna's own n_warmup_steps (pruner_warmup_steps) is a warm-up in iterations, for all runs alike."""
    assert pruned_at(tmp_path / "steps", {"pruner_warmup_frac": 0, "pruner_warmup_steps": 40}) == {"late": None, "bad": 45}


# ----------------------------------------------------------------------------------------------
# searches that train

@pytest.mark.slow
def test_a_tiny_search_end_to_end_and_the_same_command_continues_it(tmp_path, env):
    args = ["optim.lr=tag(log,interval(1e-4,3e-2))", "hydra.sweeper.n_trials=3", "hydra.sweeper.seed=0"]
    proc = search(args, tmp_path, env)
    sweep = next((tmp_path / "sweeps").iterdir())  # named after the command: the same command finds it
    rows = trials(sweep)
    assert [r["number"] for r in rows] == ["0", "1", "2"] and {r["state"] for r in rows} == {"COMPLETE"}
    assert all(int(r["tokens"]) == 20 * 128 and float(r["wall_time_s"]) > 0 for r in rows)
    summaries = [json.loads((Path(r["run_dir"]) / "summary.json").read_text()) for r in rows]
    assert [float(r["value"]) for r in rows] == [s["final_val_loss"] for s in summaries]
    assert [float(r["optim.lr"]) for r in rows] == [s["config"]["optim"]["lr"] for s in summaries]
    numbers = {k for k, v in summaries[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert set(TRAINING_METRICS) <= numbers  # every metric the sweeper accepts, a run reports
    best = min(rows, key=lambda r: float(r["value"]))
    import yaml

    chosen = yaml.safe_load((sweep / "best.yaml").read_text())
    assert chosen["trial"] == int(best["number"]) and chosen["value"] == float(best["value"])
    assert chosen["command"].startswith("python launch.py ") and f"optim.lr={best['optim.lr']}" in chosen["command"]
    for png in ("history.png", "importances.png", "slices.png"):
        assert (sweep / png).stat().st_size > 1000, png
    assert (sweep / "optuna.journal").is_file()
    assert "best: trial" in proc.stderr + proc.stdout

    # the same command again: nothing runs twice; a larger budget adds only the new trials
    search(args, tmp_path, env)
    assert len(trials(sweep)) == 3 and len(trial_dirs(sweep)) == 3
    search([*args[:1], "hydra.sweeper.n_trials=4", "hydra.sweeper.seed=0"], tmp_path, env)
    rows = trials(sweep)
    assert [r["number"] for r in rows] == ["0", "1", "2", "3"] and len(trial_dirs(sweep)) == 4
    assert rows[3]["optim.lr"] not in {r["optim.lr"] for r in rows[:3]}  # a continued seed draws anew


@pytest.mark.slow
def test_the_pruner_stops_a_bad_trial_which_ends_cleanly(tmp_path, env):
    # the random sampler with seed 2 asks 1e-2 three times (trained once), then 1e-6, which barely
    # trains: the median pruner (after one finished trial) stops it at its first evaluation past
    # the default warm-up (30 % of 20 iterations: 6), iteration 10; iteration 5 is only reported
    proc = search(["optim.lr=1e-2,1e-6", "hydra.sweeper.sampler=random", "hydra.sweeper.seed=2",
                   "hydra.sweeper.n_trials=4", "hydra.sweeper.pruner=median",
                   "hydra.sweeper.pruner_startup_trials=1", "sweep_name=p"], tmp_path, env)
    assert proc.returncode == 0
    rows = trials(tmp_path / "sweeps" / "p")
    assert [(r["state"], float(r["optim.lr"])) for r in rows] == [("COMPLETE", 1e-2)] * 3 + [("PRUNED", 1e-6)]
    pruned = Path(rows[3]["run_dir"])
    summary = json.loads((pruned / "summary.json").read_text())
    assert summary["status"] == "pruned" and summary["iters"] == 10 and summary["max_iters"] == 20
    assert (pruned / "ckpt" / "last.pt").is_file()  # saved: the run can still be resumed by hand
    study = optuna.load_study(study_name="p", storage=open_storage(str(tmp_path / "sweeps" / "p" / "optuna.journal")))
    assert set(study.trials[3].intermediate_values) == {5, 10}
    assert study.trials[3].intermediate_values[10] == pytest.approx(summary["final_val_loss"])
    assert "trial 3 pruned at iteration 10" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_a_killed_search_continues_without_losing_or_repeating_a_trial(tmp_path, env):
    args = [*SEARCH, "task.max_iters=600", "task.eval_interval=50", "optim.lr=1e-3,3e-3",
            "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0",
            "hydra.sweeper.pruner=none", "sweep_name=k"]
    full_env = {**os.environ, **env, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args], cwd=tmp_path, env=full_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sweep = tmp_path / "sweeps" / "k"
    deadline = time.time() + 300
    try:  # SIGKILL the sweeper once trial 1 has written a checkpoint, mid-training
        while not list(sweep.glob("1_*/summary.json")):  # written after the eval's checkpoint
            assert proc.poll() is None and time.time() < deadline, "the search ended before trial 1 saved"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    killed = json.loads(next(sweep.glob("1_*/summary.json")).read_text())
    assert killed["status"] == "running" and killed["iters"] < 600

    again = launch(args, cwd=tmp_path, env=env)
    assert "trial 1 did not finish in an earlier session: running it again" in again.stderr + again.stdout
    assert "resuming from" in again.stderr + again.stdout
    rows = trials(sweep)
    assert [(r["number"], r["state"]) for r in rows] == [("0", "COMPLETE"), ("1", "COMPLETE")]
    assert len(trial_dirs(sweep)) == 2 and all(int(r["iters"]) == 600 for r in rows)
    assert all(math.isfinite(float(r["value"])) for r in rows)


@pytest.mark.slow
def test_a_slot_freed_by_a_short_trial_starts_the_next_before_the_long_one_ends(tmp_path, env):
    """n_jobs=2 under submitit_local: the random sampler (seed 28) asks for a long run (1000
    iterations), a 10-iteration one, then a 20-iteration one. The third starts as soon as the
    short one ends, while the long one still trains (it used to wait for the whole batch).
    Its end is not compared with the long one's: on a loaded machine its start-up alone can
    outlast the long trial's last iterations."""
    args = [*QUICK, "task.eval_interval=10", "task.max_iters=choice(1000,10,20)", "hydra/launcher=submitit_local",
            "hydra.sweeper.n_trials=3", "hydra.sweeper.n_jobs=2", "hydra.sweeper.sampler=random",
            "hydra.sweeper.seed=28", "hydra.sweeper.pruner=none", "sweep_name=r"]
    launch(["-m", "hydra/sweeper=optuna", *args], cwd=tmp_path, env=env)
    rows = trials(tmp_path / "sweeps" / "r")
    assert [(r["state"], r["task.max_iters"], r["iters"]) for r in rows] == [
        ("COMPLETE", "1000", "1000"), ("COMPLETE", "10", "10"), ("COMPLETE", "20", "20")]
    long, short, nxt = ({k: r[k] for k in ("started", "ended")} for r in rows)
    assert long["started"] < short["ended"] and short["started"] < short["ended"]  # both at once
    assert short["ended"] <= nxt["started"]  # two at a time: the third waited for a free slot ...
    assert nxt["started"] < long["ended"]  # ... not for the long trial


@pytest.mark.slurm
@pytest.mark.slow
@needs_slurm
def test_four_slurm_jobs_at_once_report_into_one_study(tmp_path, env):
    """n_jobs=4 on the SLURM launcher: one job array of four trials, each run reporting its
    evaluations into the one journal file, the sweeper telling each result."""
    from test_distributed import job_ids, sacct_states

    proc = search(["hydra/launcher=slurm_cpu", "optim.lr=tag(log,interval(1e-4,3e-2))", "hydra.sweeper.n_trials=4",
                   "hydra.sweeper.n_jobs=4", "hydra.sweeper.seed=0", "hydra.sweeper.pruner=none", "sweep_name=q"],
                  tmp_path, env)
    sweep = tmp_path / "sweeps" / "q"
    rows = trials(sweep)
    assert [(r["number"], r["state"]) for r in rows] == [(str(i), "COMPLETE") for i in range(4)], proc.stderr[-2000:]
    ids = job_ids(sweep)
    assert len(ids) == 4 and len({i.split("_")[0] for i in ids}) == 1  # one array: submitted together
    assert all(sacct_states(i) == ["COMPLETED"] for i in ids)
    study = optuna.load_study(study_name="q", storage=open_storage(str(sweep / "optuna.journal")))
    assert all(set(t.intermediate_values) == {5, 10, 15, 20} for t in study.trials)  # each job reported
    assert len({t.datetime_start for t in study.trials}) == 4


@pytest.mark.slurm
@pytest.mark.slow
@needs_slurm
def test_a_requeued_slurm_job_reports_into_the_same_trial(tmp_path, env):
    """A trial's SLURM job requeued mid-run (`scontrol requeue`, as a pre-emption does: SIGTERM,
    checkpoint, back in the queue) resumes from its checkpoint and goes on reporting into its own
    trial: one trial, COMPLETE, its evaluations before and after the requeue, none twice."""
    from test_distributed import job_ids, sacct_states

    args = ["-m", "hydra/sweeper=optuna", "hydra/launcher=slurm_cpu", *QUICK, "task.max_iters=1500",
            "task.eval_interval=100", "optim.lr=1e-3,3e-3", "hydra.sweeper.n_trials=1", "hydra.sweeper.seed=0",
            "hydra.sweeper.pruner=none", "sweep_name=rq"]
    sweep = tmp_path / "sweeps" / "rq"
    journal = str(sweep / "optuna.journal")
    with open(tmp_path / "sweep.log", "w") as out:
        sweeper = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args], cwd=tmp_path,
                                   env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while not (sweep / "optuna.journal").is_file() or len(_reports(journal)) < 2:  # under way
                assert sweeper.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()[-3000:]
                time.sleep(0.5)
            [job] = job_ids(sweep)
            subprocess.run(["scontrol", "requeue", job], check=True)
            assert sweeper.wait(timeout=400) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
        finally:
            sweeper.kill()
    study = optuna.load_study(study_name="rq", storage=open_storage(journal))
    [trial] = study.trials
    assert trial.state.name == "COMPLETE" and trial.number == 0
    assert sorted(trial.intermediate_values) == list(range(100, 1501, 100))
    assert "REQUEUED" in sacct_states(job) and sacct_states(job)[-1] == "COMPLETED"
    [run] = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
    log = (run / "launch.log").read_text()
    stopped = int(log.split("stopped at iteration ")[1].split(";")[0])
    assert 100 <= stopped < 1500 and "resuming from" in log.split("stopped at iteration ")[1]
    assert [r["number"] for r in trials(sweep)] == ["0"]
    assert json.loads((run / "summary.json").read_text())["iters"] == 1500


@pytest.mark.slurm
@pytest.mark.slow
@needs_slurm
def test_a_stopped_sweeper_cancels_its_slurm_jobs_and_the_same_command_continues(tmp_path, env):
    """SIGTERM to the sweeper while two trials train on SLURM: it cancels their jobs (squeue holds
    none of them when it has exited), leaves the two trials RUNNING and exits 143; the same command
    runs them again, each resuming from its checkpoint, and adds the third: three trials, once each."""
    from test_distributed import job_ids, sacct_states

    args = ["-m", "hydra/sweeper=optuna", "hydra/launcher=slurm_cpu", *QUICK, "task.max_iters=800",
            "task.eval_interval=100", "optim.lr=tag(log,interval(1e-4,3e-2))", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=2", "hydra.sweeper.seed=0", "hydra.sweeper.pruner=none", "sweep_name=st"]
    sweep = tmp_path / "sweeps" / "st"
    journal = str(sweep / "optuna.journal")
    with open(tmp_path / "sweep.log", "w") as out:
        sweeper = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args], cwd=tmp_path,
                                   env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 180
            while not (sweep / "optuna.journal").is_file() or not _both_reported(journal):
                assert sweeper.poll() is None and time.monotonic() < deadline, (tmp_path / "sweep.log").read_text()[-3000:]
                time.sleep(0.5)
            sweeper.send_signal(signal.SIGTERM)
            assert sweeper.wait(timeout=180) == 128 + signal.SIGTERM, (tmp_path / "sweep.log").read_text()[-3000:]
        finally:
            sweeper.kill()
    said = (tmp_path / "sweep.log").read_text()
    assert "search stopped (SIGTERM): cancelled the jobs of trial(s) 0, 1" in said, said[-3000:]
    jobs = job_ids(sweep)
    assert len(jobs) == 2
    queued = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout.split()
    assert not set(jobs) & set(queued)  # none of its jobs left running
    assert all(sacct_states(j)[-1].startswith("CANCELLED") for j in jobs)
    study = optuna.load_study(study_name="st", storage=open_storage(journal))
    assert [(t.number, t.state.name) for t in study.trials] == [(0, "RUNNING"), (1, "RUNNING")]

    proc = launch(args, cwd=tmp_path, env=env)
    again = proc.stderr + proc.stdout
    assert "trial 0 did not finish in an earlier session" in again and "trial 1 did not finish" in again
    rows = trials(sweep)
    assert [(r["number"], r["state"], r["iters"]) for r in rows] == [(str(i), "COMPLETE", "800") for i in range(3)]
    assert len({r["optim.lr"] for r in rows}) == 3 and len({r["run_dir"] for r in rows}) == 3
    for r in rows[:2]:  # resumed in their own run directories
        assert "resuming from" in (Path(r["run_dir"]) / "launch.log").read_text()


@pytest.mark.slow
def test_ctrl_c_stops_the_local_trials_of_a_search_cleanly(tmp_path, env):
    """SIGINT to the sweeper under submitit_local: each trial's process is stopped (the run saves
    its checkpoint and says so: status interrupted), none is left running, no traceback, exit 130,
    and the trials stay RUNNING for the same command to resume."""
    args = ["-m", "hydra/sweeper=optuna", "hydra/launcher=submitit_local", *QUICK, "task.max_iters=100000",
            "task.eval_interval=100", "optim.lr=tag(log,interval(1e-4,3e-2))", "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=2", "hydra.sweeper.seed=0", "hydra.sweeper.pruner=none", "sweep_name=st"]
    sweep = tmp_path / "sweeps" / "st"
    sweeper = subprocess.Popen([sys.executable, str(REPO / "launch.py"), *args], cwd=tmp_path,
                               env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while not (sweep / "optuna.journal").is_file() or not _both_reported(str(sweep / "optuna.journal")):
            assert sweeper.poll() is None and time.monotonic() < deadline, sweeper.stdout.read()[-3000:]
            time.sleep(0.5)
        sweeper.send_signal(signal.SIGINT)
        said, _ = sweeper.communicate(timeout=180)
    finally:
        sweeper.kill()
    assert sweeper.returncode == 128 + signal.SIGINT, said[-3000:]
    assert "Traceback" not in said and "search stopped (SIGINT): cancelled the jobs of trial(s) 0, 1" in said
    pids = said.split("trial(s) 0, 1 (")[1].split(")")[0].split(", ")  # a local job's id is its process's
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]
    assert [r["state"] for r in trials(sweep)] == ["RUNNING", "RUNNING"]
    for run in [p for p in trial_dirs(sweep) if not p.name.startswith(".")]:  # not .submitit
        done = json.loads((run / "summary.json").read_text())
        assert done["status"] == "interrupted" and done["stop_signal"] == "SIGTERM" and done["iters"] < 100000


def _both_reported(journal: str) -> bool:
    """Trials 0 and 1 have each reported an evaluation: both jobs are training."""
    try:
        study = optuna.load_study(study_name="st", storage=open_storage(journal))
    except KeyError:
        return False
    return len(study.trials) >= 2 and all(t.intermediate_values for t in study.trials[:2])


def _reports(journal: str) -> dict:
    """Trial 0's evaluations reported so far (none before the trial exists)."""
    try:
        study = optuna.load_study(study_name="rq", storage=open_storage(journal))
    except KeyError:
        return {}
    return study.trials[0].intermediate_values if study.trials else {}


@pytest.mark.slow
def test_a_trial_asking_for_values_already_tried_is_not_trained_again(tmp_path, env):
    # two values, four trials: the random sampler (seed 0) asks for 1e-3 three times
    search(["optim.lr=1e-2,1e-3", "hydra.sweeper.n_trials=4", "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0",
            "task.max_iters=10", "sweep_name=d"], tmp_path, env)
    sweep = tmp_path / "sweeps" / "d"
    rows = trials(sweep)
    assert len(rows) == 4 and {r["state"] for r in rows} == {"COMPLETE"}
    assert len(trial_dirs(sweep)) == 2  # one run per distinct value
    trained = {r["optim.lr"]: r for r in rows if not r["repeats"]}
    for r in rows:
        if r["repeats"]:
            assert r["tokens"] == "0" and r["value"] == trained[r["optim.lr"]]["value"]
            assert rows[int(r["repeats"])]["optim.lr"] == r["optim.lr"]
