"""Learning-rate transfer, SP against μP across width (and μP against CompleteP across depth).

    python bench/mup_transfer.py                     # experiment=mup/transfer: sp, mup x 4 widths x 8 rates
    python bench/mup_transfer.py --depth             # experiment=mup/transfer_depth: mup, completep x 4 depths
    python bench/mup_transfer.py --lrs 1.95e-3,3.9e-3,7.8e-3 --widths 32,256   # a reduced grid
    python bench/mup_transfer.py --bracket           # the whole grid at the first size, then only
                                                     # the rates around each size's optimum

Stop it with SIGKILL (the training loop takes SIGTERM as "save and stop", and the stopped run's
loss would be recorded); a rerun with the same --out resumes from results.json.

Each point is a real training run (nanogpt.training.loop.train, in this process: one import,
no launcher) of the shipped experiment config with model.param, the width (or depth) and
optim.lr set; its measurement is the final val loss on the config's fixed val batches. Printed:
the loss table and, per parametrisation, the optimal lr at each size and how many x2 grid steps
it moves across the range. Written to --out: results.json (every run's loss) and
transfer.png (loss against log2 lr, a curve per size, each optimum marked).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LRS = [4.9e-4, 9.8e-4, 1.95e-3, 3.9e-3, 7.8e-3, 1.56e-2, 3.13e-2, 6.25e-2]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from nanogpt.gate import register_configs, register_resolvers, validate

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return validate(hydra_compose("config", overrides=overrides))


def train_one(overrides: list[str], run_dir: Path) -> float:
    import logging

    from nanogpt.runtime.distributed import Dist
    from nanogpt.training.loop import train

    logging.getLogger("nanogpt").setLevel(logging.WARNING)
    shutil.rmtree(run_dir, ignore_errors=True)  # a run killed before its result was recorded: again
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = train(compose(overrides), run_dir, Dist())
    loss = summary.get("final_val_loss")
    return float("nan") if loss is None else float(loss)


def optimum(losses: dict[float, float]) -> float | None:
    finite = {lr: v for lr, v in losses.items() if math.isfinite(v)}
    return min(finite, key=finite.get) if finite else None


def bracket(measure, lrs: list[float], start: int) -> None:
    """Measure the rates around the optimum only: start at the previous size's best rate and its
    two neighbours on the grid, then step outward while the best measured rate is at an edge of
    what was measured (and the grid goes on). Ends with the optimum interior (both neighbours
    measured and worse) or at the grid's end: ~4 runs per size instead of the whole grid."""
    lo, hi = max(start - 1, 0), min(start + 1, len(lrs) - 1)
    losses = {i: measure(lrs[i]) for i in range(lo, hi + 1)}
    while True:
        finite = {i: v for i, v in losses.items() if math.isfinite(v)}
        best = min(finite, key=finite.get) if finite else lo
        if best == lo and lo > 0:
            lo -= 1
            losses[lo] = measure(lrs[lo])
        elif best == hi and hi < len(lrs) - 1:
            hi += 1
            losses[hi] = measure(lrs[hi])
        else:
            return


def table(results: dict, axis: str, sizes: list[int], lrs: list[float]) -> list[str]:
    lines = []
    for param, by_size in results.items():
        lines.append(f"\n{param}: final val loss by {axis} (rows) and lr (columns); * marks each row's optimum")
        lines.append(f"{axis:>6} " + " ".join(f"{lr:>9.2e}" for lr in lrs) + "   best lr")
        best = {}
        for size in sizes:
            row = by_size.get(str(size), {})
            losses = {float(lr): v for lr, v in row.items()}
            best[size] = optimum(losses)
            cells = []
            for lr in lrs:
                v = losses.get(lr)
                cells.append(f"{'' if v is None else f'{v:.4f}'}{'*' if lr == best[size] else ' '}".rjust(10))
            lines.append(f"{size:>6} " + "".join(cells) + f"   {best[size]:.2e}" if best[size] else "")
        found = [b for b in best.values() if b]
        if len(found) > 1:
            moves = round(math.log2(max(found) / min(found)))
            lines.append(f"{param}: the optimum moves {moves} x2 grid step(s) across {axis}s "
                         f"{min(sizes)}-{max(sizes)} ({max(sizes) // min(sizes)}x)")
    return lines


def run_flops(runs: Path, param: str, size: int, lr: float) -> float:
    """The training FLOPs a run recorded (nan when its summary is missing)."""
    f = runs / f"{param}_{size}_{lr}" / "summary.json"
    return float(json.loads(f.read_text()).get("flops", math.nan)) if f.is_file() else math.nan


def tune_small_train_big(results: dict, runs: Path, axis: str, sizes: list[int], lrs: list[float]) -> list[str]:
    """Per parametrisation: the smallest size's best rate used at the largest size, against the
    best rate found there directly, and the compute of each way (tuning grid + one big run, against
    a grid at the big size: all of the grid's rates, and the ones this call measured)."""
    small, big = min(sizes), max(sizes)
    lines = []
    best_big = {}
    for param, by_size in results.items():
        row_small, row_big = by_size.get(str(small), {}), by_size.get(str(big), {})
        tuned, direct = optimum(row_small), optimum(row_big)
        if tuned is None or direct is None:
            continue
        best_big[param] = row_big[direct]
        if tuned not in row_big:
            lines.append(f"{param}: {axis} {small}'s best lr {tuned:.2e} was not run at {axis} {big}")
            continue
        loss, best = row_big[tuned], row_big[direct]
        one_big = run_flops(runs, param, big, direct)
        tuning = sum(run_flops(runs, param, small, lr) for lr in row_small)
        lines.append(f"{param}: {axis} {small}'s best lr {tuned:.2e} at {axis} {big}: {loss:.4f}, "
                     f"{100 * (loss / best - 1):+.2f}% against the best found there directly "
                     f"({best:.4f} at lr {direct:.2e}); compute: {len(row_small)} small runs + 1 big = "
                     f"{tuning + one_big:.3g} FLOPs, against {len(lrs)} big runs (the grid) = "
                     f"{len(lrs) * one_big:.3g} FLOPs ({len(row_big)} measured here = {len(row_big) * one_big:.3g})")
    if len(best_big) > 1:
        lines.append(f"best at {axis} {big}: " + ", ".join(f"{p} {v:.4f}" for p, v in best_big.items()))
    return lines


def plot(results: dict, axis: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False, sharey=True)
    for ax, (param, by_size) in zip(axes[0], results.items()):
        for i, (size, row) in enumerate(sorted(by_size.items(), key=lambda kv: int(kv[0]))):
            lrs = sorted(float(lr) for lr in row)
            losses = [row[str(lr)] if str(lr) in row else row[lr] for lr in lrs]
            color = plt.cm.viridis(i / max(len(by_size) - 1, 1))
            ax.plot([math.log2(lr) for lr in lrs], losses, marker="o", color=color, label=f"{axis} {size}")
            best = optimum(dict(zip(lrs, losses)))
            if best:
                ax.plot(math.log2(best), dict(zip(lrs, losses))[best], marker="*", markersize=14, color=color)
        ax.set_title(param)
        ax.set_xlabel("log2 learning rate")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("final val loss")
    finite = [v for r in results.values() for row in r.values() for v in row.values() if math.isfinite(v)]
    if finite:
        axes[0][0].set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", action="store_true", help="across depth (mup vs completep) instead of width")
    ap.add_argument("--params", help="comma-separated (default sp,mup; with --depth mup,completep)")
    ap.add_argument("--widths", default="32,64,128,256")
    ap.add_argument("--depths", default="2,4,8,16")
    ap.add_argument("--lrs", default=",".join(str(lr) for lr in LRS))
    ap.add_argument("--experiment", help="the experiment config (default mup/transfer; with --depth "
                    "mup/transfer_depth), e.g. mup/transfer_wide")
    ap.add_argument("--bracket", action="store_true",
                    help="past the first size, measure only the rates around the optimum (see bracket)")
    ap.add_argument("--report", action="store_true",
                    help="train nothing: the table, the tune-small-train-big lines and the plot of --out's results")
    ap.add_argument("--out", default=str(REPO / "sweeps" / "mup_transfer_bench"))
    ap.add_argument("overrides", nargs="*", help="more config overrides, e.g. task.max_iters=50")
    args = ap.parse_args(argv)
    axis = "depth" if args.depth else "width"
    params = (args.params or ("mup,completep" if args.depth else "sp,mup")).split(",")
    sizes = [int(s) for s in (args.depths if args.depth else args.widths).split(",")]
    lrs = [float(lr) for lr in args.lrs.split(",")]
    experiment = "experiment=" + (args.experiment or ("mup/transfer_depth" if args.depth else "mup/transfer"))
    key = "model.n_layer" if args.depth else "model.n_embd"
    out = Path(args.out) / axis
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    start = time.time()
    for param in params:
        previous_best = None
        for size in sizes:
            row = results.setdefault(param, {}).setdefault(str(size), {})

            def measure(lr, param=param, size=size, row=row):
                if str(lr) in row:  # a rerun resumes the grid
                    return row[str(lr)]
                t0 = time.time()
                loss = train_one([experiment, f"model.param={param}", f"{key}={size}", f"optim.lr={lr}",
                                  *args.overrides], out / "runs" / f"{param}_{size}_{lr}")
                row[str(lr)] = loss
                results_file.write_text(json.dumps(results, indent=1))
                print(f"{param} {axis}={size} lr={lr:.2e}: val {loss:.4f} ({time.time() - t0:.0f} s)", flush=True)
                return loss

            if args.report:
                pass
            elif args.bracket and previous_best is not None:
                bracket(measure, lrs, lrs.index(previous_best))
            else:
                for lr in lrs:
                    measure(lr)
            previous_best = optimum({lr: row[str(lr)] for lr in lrs if str(lr) in row}) or previous_best
    results = {p: {s: {float(lr): v for lr, v in row.items()} for s, row in results[p].items()} for p in params}
    for line in table(results, axis, sorted(sizes), lrs):
        print(line)
    print(f"\n{len(params) * len(sizes) * len(lrs)} runs, {time.time() - start:.0f} s this call")
    for line in tune_small_train_big(results, out / "runs", axis, sizes, lrs):
        print(line)
    plot(results, axis, out / "transfer.png")
    print(f"wrote {results_file} and {out / 'transfer.png'}")


if __name__ == "__main__":
    main()
