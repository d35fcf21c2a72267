"""`python -m nanogpt.scaling collect|fit|best-lr|tune-fit|compare SWEEP...`: the command line of
the scaling tools (collect.py, fit.py, tune.py, compare.py)."""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from nanogpt.errors import UserError
from nanogpt.scaling import collect, compare, tune


class OneLineErrors(argparse.ArgumentParser):
    """argparse's errors (a bad --approach, a missing path) as the other user errors: one line
    that says where the usage is, and exit 2."""

    def error(self, message):
        print(f"error: {message} (usage: {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> int:
    parser = OneLineErrors(prog="python -m nanogpt.scaling", description=collect.__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("paths", nargs="+", help="sweep or run directories (searched recursively), or collect CSVs")
        p.add_argument("--n-kind", choices=list(collect.N_KINDS), default="non_embedding",
                       help="N: non-embedding parameters (Kaplan's N, the default) or all of them")
        return p

    p = common(sub.add_parser("collect", help="list every run (any status) and write a CSV"))
    p.add_argument("--out", help="CSV file to write")
    p.add_argument("--loss", choices=collect.LOSSES, default="final", help="the loss of the per-point table over seeds")
    p.set_defaults(func=collect.cmd_collect)

    p = common(sub.add_parser("fit", help="fit Chinchilla's approaches 2 and 3 to the finished runs"))
    p.add_argument("--approach", choices=["2", "3", "both"], default="both")
    p.add_argument("--loss", choices=collect.LOSSES, default="final",
                   help="which val loss to fit: nats per token (final, best) or bits per byte (final_bpb, best_bpb)")
    p.add_argument("--bootstrap", type=int, default=200, metavar="K",
                   help="approach-3 bootstrap resamples for the intervals (0: none)")
    p.add_argument("--starts", type=int, default=100,
                   help="L-BFGS starts: the best K points of the paper's 4500-point grid (0: all)")
    p.add_argument("--rtol", type=float, default=0.1, help="relative FLOPs tolerance of a budget group")
    p.add_argument("--target-flops", type=float, nargs="*", default=[], metavar="C",
                   help="budgets to print the compute-optimal N and D for")
    p.add_argument("--plots", metavar="DIR", help="write loss_vs_flops, isoflops and approach3 figures here")
    p.add_argument("--format", choices=["png", "pdf", "svg"], default="png",
                   help="figure format (pdf, svg: vector, for a paper)")
    p.add_argument("--title", help="name the figures' titles give the sweep (default: its directory name)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--seeds", choices=["mean", "each"], default="mean",
                   help="runs that differ only by seed: fit their mean (one point each, error bars "
                        "in the plots) or every run")
    p.set_defaults(func=collect.cmd_fit)

    p = common(sub.add_parser("best-lr", help="the best learning rate per model size"))
    p.add_argument("--loss", choices=collect.LOSSES, default="final")
    p.add_argument("--by", choices=["arch", "N"], default="arch",
                   help="group sizes by (n_layer, n_embd) or by parameter count")
    p.set_defaults(func=collect.cmd_best_lr)

    p = common(sub.add_parser("tune-fit", help="optimal lr and batch size as power laws of compute, "
                                               "hold-out check, isoFLOP fit on tuned losses (tune.py)"))
    p.add_argument("--loss", choices=collect.LOSSES, default="final")
    p.add_argument("--rtol", type=float, default=0.1, help="relative FLOPs tolerance of a budget group")
    p.add_argument("--plots", metavar="DIR", help="write tuned.png (and isoflops_tuned.png) here")
    p.add_argument("--against", choices=["C", "N"], default="C",
                   help="fit lr_opt and batch_opt as power laws of compute (each budget's best size, as "
                        "DeepSeek) or of parameters (every size at its one budget, as Porian et al.)")
    p.set_defaults(func=tune_fit_command)

    p = sub.add_parser("compare", help="seeds of groups of runs: mean, std, 95%% CI, Welch's t-test, "
                                       "and the one-sided test against a target loss")
    p.add_argument("paths", nargs="+", metavar="GROUP",
                   help="one group per path: the finished runs under a sweep or run directory (or in a collect CSV)")
    p.add_argument("--target", type=float, help="test that each group's mean is below this loss (PASS: p < 0.01)")
    p.add_argument("--loss", choices=collect.LOSSES, default="final")
    p.add_argument("--n-kind", choices=list(collect.N_KINDS), default="non_embedding", help=argparse.SUPPRESS)
    p.set_defaults(func=compare.cmd_compare)

    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        return args.func(args)
    except (UserError, FileNotFoundError, ValueError) as e:  # the user's input: one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2


def tune_fit_command(args) -> int:
    """tune-fit: the tuned optimum per (budget, size), its power laws, the hold-out, the plots."""
    try:
        runs = collect.load_runs(args.paths, n_kind=args.n_kind)
        if not runs:
            raise ValueError(f"no run directories under {' '.join(args.paths)}")
        fit = tune.tune_fit(runs, args.loss, args.rtol, args.against)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    print(f"{sum(c.n_runs for c in fit.cells)} of {len(runs)} runs are finished with an lr and a "
          f"{args.loss} val loss: {len(fit.cells)} (budget, size) points in {len({c.C for c in fit.cells})} budgets")
    print(tune.format_tune_fit(fit))
    if args.plots:
        from nanogpt.scaling import plot  # matplotlib: only when asked
        from nanogpt.scaling.plot_tune import plot_tune_fit

        out = Path(args.plots)
        written = [plot_tune_fit(fit, out / "tuned.png")]
        if fit.iso:
            written.append(plot.plot_isoflops(fit.iso, out=out / "isoflops_tuned.png"))
        print("wrote " + " ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
