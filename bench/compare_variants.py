"""Two recipes' iso-FLOP sweeps on one figure: experiment=scaling/variants_tiny's gpt2/ and modern/.

    python launch.py -m experiment=scaling/variants_tiny
    python bench/compare_variants.py sweeps/variants_tiny --out docs/variants_tiny

Reads each recipe's runs with the scaling tools (nanogpt.scaling.collect.load_runs, fit_data,
isoflop_fit), prints a table (final val loss per budget and width, in nats per token and bits per
byte; each budget's best width and the fitted optimum), writes runs.csv, and draws
isoflops.png: val loss against parameters, one curve per budget and recipe, with each fitted
parabola's minimum.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from benchlib import REPO  # noqa: F401  (puts this checkout on sys.path)
from matplotlib.figure import Figure

from nanogpt.scaling.collect import fit_data, load_runs, write_csv
from nanogpt.scaling.fit import group_by_compute, isoflop_fit

STYLE = {"gpt2": ("tab:blue", "o", "--"), "modern": ("tab:red", "s", "-")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("sweep", help="the sweep directory (holds gpt2/ and modern/)")
    p.add_argument("--out", default=None, help="where to write runs.csv and isoflops.png (default: the sweep)")
    args = p.parse_args()
    sweep = Path(args.sweep)
    out = Path(args.out or sweep)
    out.mkdir(parents=True, exist_ok=True)
    recipes = {name: load_runs([sweep / name]) for name in ("gpt2", "modern") if (sweep / name).is_dir()}
    if not recipes:
        raise SystemExit(f"error: no gpt2/ or modern/ under {sweep}: run python launch.py -m experiment=scaling/variants_tiny")
    write_csv([r for runs in recipes.values() for r in runs], out / "runs.csv")

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    print(f"{'recipe':<8}{'budget C':>10}{'n_embd':>8}{'N':>10}{'D':>12}{'val loss':>10}{'bits/byte':>11}")
    for name, runs in recipes.items():
        for r in sorted(runs, key=lambda r: (r.C, r.N)):
            print(f"{name:<8}{r.C:>10.2e}{r.n_embd or 0:>8}{r.N:>10.3g}{r.D:>12.3g}{r.final_val_loss:>10.4f}"
                  f"{r.final_val_bpb:>11.4f}")
        data = fit_data(runs)
        color, marker, ls = STYLE[name]
        groups = group_by_compute(data["C"])
        for i, pick in enumerate(groups):
            order = np.argsort(data["N"][pick])
            C = math.exp(np.mean(np.log(data["C"][pick])))
            ax.plot(data["N"][pick][order], data["L"][pick][order], marker=marker, ls=ls, color=color,
                    alpha=0.45 + 0.55 * (i + 1) / len(groups), label=f"{name}, C = {C:.1e}")
        try:
            iso = isoflop_fit(data["N"], data["D"], data["C"], data["L"])
        except ValueError as e:
            print(f"{name}: no iso-FLOP fit ({e})")
            continue
        for prof in iso.profiles:
            ax.plot([prof.N_opt], [prof.L_opt], marker="*", ms=14, color=color, ls="none")
            print(f"{name}: C = {prof.C:.2e}: fitted optimum N = {prof.N_opt:.3g}, loss {prof.L_opt:.4f}")
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="final val loss (nats/token)",
           title="iso-FLOP curves: GPT-2 recipe vs modern recipe (stars: fitted optima)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    fig.savefig(out / "isoflops.png", dpi=110)
    print(f"wrote {out / 'runs.csv'} and {out / 'isoflops.png'}")


if __name__ == "__main__":
    main()
