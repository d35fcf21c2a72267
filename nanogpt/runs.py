"""`python -m nanogpt.runs [PATH...]`: the runs under PATH (run directories, sweep folders, or
`scaling collect` CSVs; default runs/) as one table: short name, status, val loss, bits per byte,
tokens, FLOPs, wall time, and what differs from the others (nanogpt/run/table.py).

    python -m nanogpt.runs sweeps/isoflop_tiny --sort val_loss      (--sort=-val_loss: descending)
    python -m nanogpt.runs runs/a runs/b --format markdown
    python -m nanogpt.runs sweeps/x --format csv > runs.csv
"""
from __future__ import annotations

import argparse
import sys
import warnings

from nanogpt.errors import UserError
from nanogpt.run import table
from nanogpt.scaling.collect import load_runs


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, as every nanogpt command's bad input
        print(f"error: {message} (see python -m nanogpt.runs --help)", file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> int:
    parser = _Parser(prog="python -m nanogpt.runs", description=__doc__.split("\n\n")[0],
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="*", default=["runs"], metavar="PATH",
                        help="run directories or sweep folders (searched recursively), or collect CSVs (default: runs)")
    parser.add_argument("--sort", metavar="KEY", help=f"sort by a column: {', '.join(table.COLUMNS)} "
                        "(missing values last; --sort=-KEY or --reverse: descending)")
    parser.add_argument("--reverse", action="store_true", help="sort descending")
    parser.add_argument("--format", choices=table.FORMATS, default="table",
                        help="an aligned table (default), CSV (raw numbers) or Markdown")
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, *a, **k: f"warning: {message}\n"
    try:
        runs = load_runs(args.paths)
        if not runs:
            raise UserError(f"no run directories under {' '.join(args.paths)}: give a run directory or a "
                            "sweep folder (runs hold summary.json, metrics.jsonl or .hydra/)")
        rows = table.rows(runs)
        if args.sort:
            rows = table.sort_rows(rows, args.sort, args.reverse)
        print(table.render(rows, args.format))
    except (UserError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.format == "table":
        print(table.counts(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
