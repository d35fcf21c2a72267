"""The CPU speed run: time to nanoGPT's shakespeare_char CPU loss, and what each option buys.

    python bench/speedrun.py                      # baseline and speed run, 3 rounds taking turns
    python bench/speedrun.py --ablate             # + the speed run with each option off in turn
    python bench/speedrun.py --rounds 1 --ablate --threads 2 --out bench_out/speedrun

The baseline is `experiment=shakespeare_char_cpu` (nanoGPT's CPU recipe: 2000 iterations, val
~1.88-1.90); the speed run is `experiment=speedrun_cpu` (the modern options and Muon). Runs take
turns (baseline, speed run, ablations, then again), so a slow spell of the machine hits them
alike; every run is a real `python launch.py` in its own process, evaluated on the same fixed
validation batches (task.eval_iters x hardware.eval_batch_size).

The target is the baseline's own final val loss here (the median over rounds). A run's time to
target is its training wall-clock up to the first evaluation at or below it, with the time spent
evaluating taken out (metrics.jsonl records both), so the evaluation cadence does not count.
Written to --out: results.json, runs/<name>_r<k>/ (each run's directory) and loss_vs_time.png.
Figures need a quiet machine: on a busy one the wall-clock times say nothing (the losses per
iteration and per FLOP are deterministic and do).

    python bench/speedrun.py --step-cost          # CPU time of one training step, per recipe

--step-cost times the training loop's own step (nanogpt.training.step.train_step) of each recipe in one
process, taking turns, in CPU time of the one thread (time.thread_time): a busy machine slows a
step's wall clock far more than its CPU time, so this is the steadier estimate there of what a
speed run's iteration costs against the baseline's (it leaves out what wall clock adds: waiting
on memory shared with other processes).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchlib import REPO, SHAKESPEARE, machine

BASELINE = ["experiment=shakespeare_char_cpu"]
SPEEDRUN = ["experiment=speedrun_cpu"]
# each option of the speed run back to GPT-2's / nanoGPT's choice, one at a time; then the two
# modern options the speed run leaves out (they lose at this size), one at a time
ABLATIONS = {
    "no_rope": ["model.pos_emb=learned"],
    "no_qk_norm": ["model.qk_norm=false"],
    "no_rmsnorm": ["model.norm=layernorm"],
    "no_softcap": ["model.logit_softcap=null"],
    "biases": ["model.bias=true"],
    # AdamW at the best lr found for this run (of 1.5e-3, 3e-3, 6e-3, 1.2e-2: docs/modern.md)
    "adamw": ["optim=adamw", "optim.lr=3e-3", "optim.beta2=0.95"],
    "plus_relu2": ["model.mlp=relu2"],
    "plus_untied_head": ["model.tie_embeddings=false"],
}
# the same evaluation for every run: fixed batches, the baseline's block size
EVAL = ["task.eval_iters=40", "hardware.eval_batch_size=24", "task.final_eval_iters=40", "task.num_samples=0",
        "task.plot=false", "task.log_interval=25"]


def run(name: str, overrides: list[str], out: Path, threads: int | None, data_root: Path,
        extra: list[str] = ()) -> dict:
    run_dir = out / "runs" / name
    cmd = [sys.executable, str(REPO / "launch.py"), *overrides, *EVAL, *extra, "hardware=cpu",
           f"hydra.run.dir={run_dir}", *([f"hardware.num_threads={threads}"] if threads else [])]
    env = {**os.environ, "NANOGPT_DATA_ROOT": str(data_root)}
    if run_dir.exists():  # a finished run is not retrained: start each run afresh
        import shutil

        shutil.rmtree(run_dir)
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in records if r.get("kind") == "eval"]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"name": name, "overrides": overrides, "summary": {k: summary.get(k) for k in (
                "iters", "tokens", "flops", "final_val_loss", "final_val_bpb", "wall_time_s", "eval_time_s")},
            "evals": [{"iter": r["iter"], "val_loss": r["val_loss"],
                       "train_time_s": r["time_s"] - r.get("eval_time_s", 0.0)} for r in evals]}


def time_to_target(result: dict, target: float) -> float | None:
    """Training seconds (evaluation left out) at the first evaluation at or below the target."""
    for e in result["evals"]:
        if e["val_loss"] <= target:
            return e["train_time_s"]
    return None


def prepare_data() -> Path:
    root = Path(os.environ.get("NANOGPT_DATA_ROOT", REPO / "data"))
    if not (root / "shakespeare_char" / "meta.json").exists():
        if not SHAKESPEARE.is_file():
            raise SystemExit(f"error: no tiny Shakespeare at {SHAKESPEARE}: run python prepare/shakespeare_char.py")
        from prepare.shakespeare_char import prepare

        prepare(root / "shakespeare_char", input_path=SHAKESPEARE)
    return root


def table(results: dict[str, list[dict]], target: float) -> str:
    base = statistics.median(time_to_target(r, target) or r["evals"][-1]["train_time_s"]
                             for r in results["baseline"])
    lines = [f"target val loss {target:.4f} (the baseline's final, median of {len(results['baseline'])})",
             "", "| run | iters | val loss (final) | time to target (s, median) | vs baseline |",
             "|---|---|---|---|---|"]
    for name, runs in results.items():
        times = [time_to_target(r, target) for r in runs]
        reached = [t for t in times if t is not None]
        t = statistics.median(reached) if len(reached) == len(times) else None
        final = statistics.median(r["summary"]["final_val_loss"] for r in runs)
        lines.append(f"| {name} | {runs[0]['summary']['iters']} | {final:.4f} | "
                     f"{f'{t:.1f}' if t is not None else 'not reached'} | "
                     f"{f'{t / base:.2f}x' if t is not None else '-'} |")
    return "\n".join(lines)


def plot(results: dict[str, list[dict]], target: float, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for name, runs in results.items():
        r = runs[0]
        ax.plot([e["train_time_s"] for e in r["evals"]], [e["val_loss"] for e in r["evals"]], marker="o",
                lw=2.5 if name in ("baseline", "speedrun") else 1, label=name)
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target {target:.3f}")
    ax.set(xlabel="training wall-clock (s, evaluation excluded)", ylabel="val loss (nats/token)",
           title="shakespeare_char on the CPU: nanoGPT's recipe vs the speed run", ylim=(target - 0.4, target + 1.2))
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    path = out / "loss_vs_time.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def step_cost(variants: dict[str, list[str]], rounds: int, steps: int = 30) -> dict[str, float]:
    """Median CPU milliseconds of one training step per recipe (one torch thread), taking turns."""
    import time

    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from nanogpt.config import model_args
    from nanogpt.gate import register_configs
    from nanogpt.training.guards import NanGuard
    from nanogpt.runtime.hardware import runtime
    from nanogpt.model import GPT
    from nanogpt.training.optim import make_optimizer
    from nanogpt.gate import register_resolvers
    from nanogpt.training.step import Step, train_step

    register_configs()
    register_resolvers()
    torch.set_num_threads(1)
    steps_of = {}
    for name, overrides in variants.items():
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = OmegaConf.to_object(compose("config", overrides=[*overrides, "hardware=cpu"]))
        rt = runtime(cfg.hardware)
        torch.manual_seed(0)
        model = GPT(model_args(cfg.model, 65)).to(rt.device, rt.param_dtype)
        micro, block = cfg.hardware.micro_batch_size, model.config.block_size
        x = torch.randint(65, (micro, block + 1))
        steps_of[name] = Step(model, model, make_optimizer(model, cfg.optim, "cpu"),
                              torch.amp.GradScaler("cpu", enabled=False), rt, 1, cfg.optim.grad_clip,
                              lambda it, m, x=x: (x[:, :-1], x[:, 1:]), NanGuard(rt.device))
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, step in steps_of.items():
            for it in range(3):  # warm-up
                train_step(step, it)
            t = time.thread_time()
            for it in range(steps):
                train_step(step, it)
            times[name].append((time.thread_time() - t) / steps * 1000)
    return {name: statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of runs taking turns (default 3)")
    p.add_argument("--ablate", action="store_true", help="also the speed run with each option off in turn")
    p.add_argument("--only", nargs="*", default=None, help="ablations to run (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's)")
    p.add_argument("--out", default="bench_out/speedrun", help="output directory")
    p.add_argument("--step-cost", action="store_true", help="only the CPU time of one training step per recipe")
    p.add_argument("--extra", nargs="*", default=[], help="overrides for every run (a smoke test: "
                   "task.max_iters=40 optim.warmup_iters=0)")
    args = p.parse_args()

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_root = prepare_data()
    variants = {"baseline": BASELINE, "speedrun": SPEEDRUN}
    if args.ablate:
        variants |= {f"speedrun_{k}": SPEEDRUN + v for k, v in ABLATIONS.items() if args.only is None or k in args.only}
    print(f"machine: {machine()}", flush=True)
    if args.step_cost:
        costs = step_cost(variants, max(args.rounds, 3))
        for name, ms in costs.items():
            print(f"{name:<28} {ms:7.1f} ms CPU per step  ({ms / costs['baseline']:.2f}x the baseline's)")
        return
    results: dict[str, list[dict]] = {name: [] for name in variants}
    for k in range(args.rounds):
        for name, overrides in variants.items():
            r = run(f"{name}_r{k}", overrides, out, args.threads, data_root, args.extra)
            results[name].append(r)
            print(f"round {k} {name}: val {r['summary']['final_val_loss']:.4f} at iter {r['summary']['iters']}, "
                  f"train {r['evals'][-1]['train_time_s']:.1f}s", flush=True)
    target = statistics.median(r["summary"]["final_val_loss"] for r in results["baseline"])
    text = table(results, target)
    print("\n" + text)
    (out / "results.json").write_text(json.dumps({"machine": machine(), "target": target, "results": results},
                                                 indent=1))
    print(f"\nwrote {out / 'results.json'} and {plot(results, target, out)}")


if __name__ == "__main__":
    main()
