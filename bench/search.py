"""A search with pruning against the full grid over the same values, on the CPU speed run.

    python bench/search.py                                  # the issue's goal: 300 iterations, 18-point grid
    python bench/search.py --iters 60 --eval-interval 15 --small --trials 5   # scaled down (~10 min, 2 cores)
    python bench/search.py ... --trials 6 --grid-from bench_out/search/results.json   # another search, same grid

Both are real `python launch.py -m ...` commands on `experiment=speedrun_cpu` (shakespeare_char,
prepared from ../shared if missing): the grid is Hydra's basic sweeper over every combination
of GRID's values of optim.lr (Muon's), optim.embed_lr (AdamW's, embeddings) and
optim.decay_frac (the WSD cooldown); the search is `hydra/sweeper=optuna` over the same values
as choices, TPE with the median pruner, `--trials` trials. Printed: for each, the runs, the
tokens trained in all (a pruned trial counts what it trained), the wall time of the command and
the best final val loss; and the goal: the search's best within 0.01 of the grid's, with at most
40% of its tokens. Written to --out: results.json and both sweep directories.
Wall-clock times need a quiet machine; tokens and losses are deterministic.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import REPO, machine

GRID = {"optim.lr": [0.015, 0.03, 0.06], "optim.embed_lr": [0.0033, 0.0067, 0.013], "optim.decay_frac": [0.2, 0.4]}
SMALL = {"optim.lr": [0.015, 0.06], "optim.embed_lr": [0.0033, 0.013], "optim.decay_frac": [0.2, 0.4]}
COMMON = ["experiment=speedrun_cpu", "task.num_samples=0", "task.plot=false"]


def sweep(name: str, args: list[str], out: Path, data_root: Path) -> dict:
    """Run one `launch.py -m` command in `out`; its runs' tokens, losses and the wall time."""
    cmd = [sys.executable, str(REPO / "launch.py"), "-m", *args, f"sweep_name={name}"]
    env = {**os.environ, "NANOGPT_DATA_ROOT": str(data_root)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=out, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    runs = []
    for summary in sorted((out / "sweeps" / name).glob("*/summary.json")):
        s = json.loads(summary.read_text())
        runs.append({"run": summary.parent.name.split("_")[0], "status": s["status"], "iters": s["iters"],
                     "tokens": s["tokens"], "final_val_loss": s["final_val_loss"], "wall_time_s": s["wall_time_s"],
                     "optim": {k: s["config"]["optim"][k] for k in ("lr", "embed_lr", "decay_frac")}})
    finished = [r for r in runs if r["status"] == "finished"]
    return {"name": name, "wall_s": wall, "runs": runs, "tokens": sum(r["tokens"] for r in runs),
            "pruned": sum(r["status"] == "pruned" for r in runs),
            "best_val_loss": min(r["final_val_loss"] for r in finished)}


def prepare_data(out: Path) -> Path:
    root = Path(os.environ.get("NANOGPT_DATA_ROOT", out / "data"))
    if not (root / "shakespeare_char" / "meta.json").exists():
        from benchlib import SHAKESPEARE
        from prepare.shakespeare_char import prepare

        if not SHAKESPEARE.is_file():
            raise SystemExit(f"error: no tiny Shakespeare at {SHAKESPEARE}: run python prepare/shakespeare_char.py")
        prepare(root / "shakespeare_char", input_path=SHAKESPEARE)
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=300, help="task.max_iters of every run (speedrun_cpu: 300)")
    p.add_argument("--eval-interval", type=int, default=50, help="task.eval_interval: the pruner's reports")
    p.add_argument("--small", action="store_true", help="a 2x2x2 grid instead of 3x3x2")
    p.add_argument("--trials", type=int, default=7, help="the search's trials")
    p.add_argument("--seed", type=int, default=0, help="hydra.sweeper.seed: the sampler's (another seed, "
                   "another search: how often the goal holds)")
    p.add_argument("--warmup", type=int, default=0, help="hydra.sweeper.pruner_warmup_steps: iterations "
                   "before a trial may be pruned (early losses favour high learning rates)")
    p.add_argument("--warmup-frac", type=float, default=None, help="hydra.sweeper.pruner_warmup_frac: the "
                   "fraction of a run in which no trial is pruned (default: the sweeper's, 0.3; 0 before it existed)")
    p.add_argument("--out", type=Path, default=REPO / "bench_out" / "search")
    p.add_argument("--grid-from", type=Path, help="an earlier results.json of the same grid and iterations: its "
                   "grid's figures are reused (tokens and losses are deterministic), only the search runs")
    a = p.parse_args()
    grid = SMALL if a.small else GRID
    a.out.mkdir(parents=True, exist_ok=True)
    data_root = prepare_data(a.out)
    common = [*COMMON, f"task.max_iters={a.iters}", f"task.eval_interval={a.eval_interval}"]
    points = len(list(itertools.product(*grid.values())))
    print(f"{machine()}\ngrid: {points} points over {', '.join(grid)}; search: {a.trials} trials; "
          f"{a.iters} iterations each", flush=True)
    grid_args = [*common, *(f"{k}={','.join(map(str, v))}" for k, v in grid.items())]
    search_args = ["hydra/sweeper=optuna", *common, *(f"{k}=choice({','.join(map(str, v))})" for k, v in grid.items()),
                   f"hydra.sweeper.n_trials={a.trials}", f"hydra.sweeper.seed={a.seed}", "hydra.sweeper.startup_trials=3",
                   "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_startup_trials=2",
                   f"hydra.sweeper.pruner_warmup_steps={a.warmup}",
                   *([f"hydra.sweeper.pruner_warmup_frac={a.warmup_frac}"] if a.warmup_frac is not None else [])]
    results = {"machine": machine(), "iters": a.iters, "grid_values": grid, "trials": a.trials,
               "search_args": search_args}
    earlier = json.loads(a.grid_from.read_text()) if a.grid_from else None
    if earlier and (earlier["iters"] != a.iters or earlier["grid_values"] != grid):
        raise SystemExit(f"error: {a.grid_from} holds another grid or another number of iterations")
    for name, args in (("search", search_args), ("grid", grid_args)):
        results[name] = earlier["grid"] if name == "grid" and earlier else sweep(name, args, a.out, data_root)
        r = results[name]
        print(f"{name}: {len(r['runs'])} runs ({r['pruned']} pruned), {r['tokens']:,} tokens, "
              f"{r['wall_s']:.0f} s, best val loss {r['best_val_loss']:.4f}", flush=True)
    s, g = results["search"], results["grid"]
    results["token_share"] = s["tokens"] / g["tokens"]
    results["wall_share"] = s["wall_s"] / g["wall_s"]
    results["gap"] = s["best_val_loss"] - g["best_val_loss"]
    print("\n| | runs | pruned | tokens | wall time (s) | best val loss |\n|---|---|---|---|---|---|")
    for r in (g, s):
        print(f"| {r['name']} | {len(r['runs'])} | {r['pruned']} | {r['tokens']:,} | {r['wall_s']:.0f} | "
              f"{r['best_val_loss']:.4f} |")
    met = results["gap"] <= 0.01 and results["token_share"] <= 0.4
    print(f"\nsearch/grid: {results['token_share']:.0%} of the tokens, {results['wall_share']:.0%} of the wall time; "
          f"best val loss {results['gap']:+.4f} vs the grid's (goal: within 0.01 at <= 40% of the tokens: "
          f"{'met' if met else 'not met'})")
    (a.out / "results.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
