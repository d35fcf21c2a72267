"""Recipes' iso-FLOP sweeps on one figure: e.g. experiment=scaling/variants_tiny's gpt2/ and modern/.

    python launch.py -m experiment=scaling/variants_tiny
    python bench/compare_variants.py sweeps/variants_tiny --out docs/variants_tiny
    python bench/compare_variants.py sweeps/a/gpt2 sweeps/b/modern picked/ runs.csv --format pdf

Takes what `python -m nanogpt.scaling fit` takes: any mix of sweep or run directories (searched
recursively, symlinked runs followed, so a folder of links to chosen runs works) and `collect` CSVs.
A run's recipe is the `variant=NAME` in its directory name (Hydra's +variant=gpt2 override, or the
gpt2/ folder of the sweep), else its Hydra choice of variant, else the name of its (real) parent folder.
Prints a table (final val loss per budget and width, in nats per token and bits per byte; each
budget's fitted optimum), writes runs.csv, and draws isoflops.png (or .pdf/.svg): val loss against
non-embedding parameters, one curve per budget and recipe, with each fitted parabola's minimum.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

import numpy as np
from benchlib import REPO  # noqa: F401  (puts this checkout on sys.path)
from matplotlib.figure import Figure

from nanogpt.scaling import plot
from nanogpt.scaling.collect import Run, fit_data, load_runs, write_csv
from nanogpt.scaling.fit import group_by_compute, isoflop_fit

STYLE = {"gpt2": ("tab:blue", "o", "--"), "modern": ("tab:red", "s", "-")}
OTHER_STYLES = [("tab:green", "^", "-."), ("tab:purple", "D", ":"), ("tab:orange", "v", "-"), ("tab:brown", "P", "--")]


def recipe_of(run: Run) -> str:
    """The recipe a run trained with (see the module docstring for where it is read from)."""
    for text in (run.run_dir, os.path.realpath(run.run_dir)):
        match = re.search(r"variant=([\w.-]+)", text)
        if match:
            return match.group(1)
    hydra = Path(run.run_dir) / ".hydra" / "hydra.yaml"
    if hydra.is_file():
        import yaml
        choice = (((yaml.safe_load(hydra.read_text()) or {}).get("hydra") or {}).get("runtime") or {}).get("choices", {}).get("variant")
        if choice:
            return str(choice)
    return Path(os.path.realpath(run.run_dir)).parent.name or "runs"


def by_recipe(runs: list[Run]) -> dict[str, list[Run]]:
    recipes: dict[str, list[Run]] = {}
    for run in runs:
        recipes.setdefault(recipe_of(run), []).append(run)
    return dict(sorted(recipes.items(), key=lambda kv: (kv[0] not in STYLE, kv[0])))


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def print_table(recipes: dict[str, list[Run]]) -> None:
    print(f"{'recipe':<10}{'budget C':>10}{'n_embd':>8}{'N':>10}{'D':>12}{'val loss':>10}{'bits/byte':>11}  status")
    for name, runs in recipes.items():
        for r in sorted(runs, key=lambda r: (math.isnan(r.C), r.C, r.N)):
            print(f"{name:<10}{r.C:>10.2e}{r.n_embd or 0:>8}{r.N:>10.3g}{r.D:>12.3g}{r.final_val_loss:>10.4f}"
                  f"{r.final_val_bpb:>11.4f}  {r.status}")


@plot.styled
def draw(recipes: dict[str, list[Run]], title: str, out: Path) -> Path:
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    others = iter(OTHER_STYLES * 10)
    for name, runs in recipes.items():
        data = fit_data(runs)
        if not len(data["N"]):
            print(f"{name}: no finished run with a val loss: nothing to draw")
            continue
        color, marker, ls = STYLE.get(name) or next(others)
        groups = group_by_compute(data["C"])
        for i, pick in enumerate(groups):
            order = np.argsort(data["N"][pick])
            C = math.exp(np.mean(np.log(data["C"][pick])))
            ax.plot(data["N"][pick][order], data["L"][pick][order], marker=marker, ls=ls, color=color, ms=4,
                    alpha=0.45 + 0.55 * (i + 1) / len(groups), label=f"{name}, C = {C:.1e} FLOPs")
        try:
            iso = isoflop_fit(data["N"], data["D"], data["C"], data["L"])
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as e:
            print(f"{name}: no iso-FLOP fit: {' '.join(str(e).split())}")
            continue
        for prof in iso.profiles:
            ax.plot([prof.N_opt], [prof.L_opt], marker="*", ms=12, color=color, mec="k", mew=0.5, ls="none")
            print(f"{name}: C = {prof.C:.2e}: fitted optimum N = {prof.N_opt:.3g}, loss {prof.L_opt:.4f}")
    ax.plot([], [], marker="*", ms=12, color="w", mec="k", ls="none", label="fitted optimum")
    ax.set(xscale="log", xlabel=plot.N_LABEL, ylabel="final validation loss (nats/token)", title=title)
    plot.tidy_log_axis(ax.xaxis)
    plot.legend_outside(ax)
    return plot._save(fig, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", help="sweep or run directories (searched recursively, symlinks followed), "
                                            "or collect CSVs; e.g. the sweep holding gpt2/ and modern/")
    p.add_argument("--out", default=None, help="folder for runs.csv and the figure (default: the first path, "
                                                "or the CSV's folder)")
    p.add_argument("--format", choices=plot.FORMATS, default="png", help="figure format (pdf, svg: vector)")
    p.add_argument("--title", help="figure title (default: names the recipes and the sweep)")
    args = p.parse_args()
    paths = [Path(x) for x in args.paths]
    try:
        runs = load_runs(paths)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    if not runs:
        fail(f"found 0 runs under {' '.join(map(str, paths))}: a run is a directory holding summary.json, "
             "metrics.jsonl or .hydra/ (symlinks to them count). Pass the sweep's folder (e.g. sweeps/variants_tiny), "
             "its runs, or a collect CSV; to make one: python launch.py -m experiment=scaling/variants_tiny")
    recipes = by_recipe(runs)
    finished = sum(r.status == "finished" for r in runs)
    print(f"found {len(runs)} runs ({finished} finished) in {len(recipes)} recipes: "
          + ", ".join(f"{name} {len(rs)}" for name, rs in recipes.items()))
    if not finished:
        fail(f"none of the {len(runs)} runs has finished: nothing to compare yet (see their status above)")
    out = Path(args.out) if args.out else (paths[0].parent if paths[0].is_file() else paths[0])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(runs, out / "runs.csv")
    print_table(recipes)
    sweep = " + ".join(dict.fromkeys((x.resolve().parent if x.is_file() else x.resolve()).name for x in paths))
    title = args.title or f"{' vs '.join(recipes)}: iso-FLOP curves ({sweep})"
    figure = draw(recipes, title, out / f"isoflops.{args.format}")
    print(f"wrote {out / 'runs.csv'} and {figure}")


if __name__ == "__main__":
    main()
