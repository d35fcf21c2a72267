"""`python -m nanogpt.checkpoint upgrade FILE...` and `... consolidate RUN`: maintain checkpoints."""
from __future__ import annotations

import argparse
from pathlib import Path

from nanogpt.checkpoint.sharded import consolidate
from nanogpt.checkpoint.single import upgrade
from nanogpt.errors import run_cli


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m nanogpt.checkpoint", description="Maintain checkpoints.")
    sub = p.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upgrade", help="rewrite checkpoints of an older nanogpt (numpy's RNG state as "
                        "numpy arrays) as tensors and plain data; a file holding any other object is "
                        "refused, unchanged")
    up.add_argument("files", nargs="+", type=Path)
    co = sub.add_parser("consolidate", help="write ckpt/last.pt and ckpt/best.pt of a run trained with "
                        "hardware.strategy=fsdp from its sharded checkpoints (the weights that sample, "
                        "eval and export read)")
    co.add_argument("run", type=Path)
    args = p.parse_args(argv)
    if args.command == "consolidate":
        written = consolidate(args.run)
        for f in written:
            print(f"{f}: written")
        if not written:
            print(f"{args.run}: ckpt/last.pt and ckpt/best.pt are already those of its sharded checkpoints")
        return
    for f in args.files:
        print(f"{f}: {'upgraded' if upgrade(f) else 'already tensors and plain data, unchanged'}")


if __name__ == "__main__":
    run_cli(main)
