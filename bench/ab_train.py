#!/usr/bin/env python
"""The training loop of two checkouts, interleaved: is one slower than the other?

  git worktree add /tmp/before <commit>      # the code to compare against
  python bench/ab_train.py --before /tmp/before --after . --rounds 5

Each round trains the same small run once with each checkout's `launch.py` (taking turns, so load
from other processes hits both alike), on the same prepared char dataset, and reads the
ms/iter the loop itself logged to metrics.jsonl (the median over the log steps after the first,
which includes start-up). Reported: each checkout's median over the rounds, and after/before.
The losses of the two must be identical (the same step, the same numbers): the script says so.
Run it on a quiet machine; --threads 1 keeps a busy second core out of the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib


def run_once(checkout: Path, data_root: Path, out: Path, args) -> tuple[float, list[float]]:
    cmd = [sys.executable, str(checkout / "launch.py"), "hardware=cpu", "hardware.dtype=float32",
           f"hardware.num_threads={args.threads}", f"data.name={args.data_name}", "model=baby",
           f"model.n_layer={args.n_layer}", f"model.n_head={args.n_head}", f"model.n_embd={args.n_embd}",
           f"model.block_size={args.block}", f"hardware.micro_batch_size={args.batch}",
           f"task.max_iters={args.iters}", f"task.eval_interval={args.iters}", "task.eval_iters=1",
           "task.log_interval=10", "task.num_samples=0", "task.plot=false", f"run={out}"]
    env = {**os.environ, "NANOGPT_DATA_ROOT": str(data_root), "WANDB_MODE": "disabled"}
    subprocess.run(cmd, cwd=out.parent, env=env, check=True, capture_output=True, text=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r.get("kind") == "train"]
    return statistics.median(r["ms_per_iter"] for r in train[1:]), [r["loss"] for r in train]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", type=Path, required=True, help="checkout to compare against")
    p.add_argument("--after", type=Path, default=benchlib.REPO, help="checkout under test (default: this one)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--block", type=int, default=64)
    p.add_argument("--batch", type=int, default=12)
    p.add_argument("--data", help="a prepared char dataset dir (default: shakespeare_char in a temp dir)")
    args = p.parse_args(argv)

    dataset = benchlib.char_dataset(args.data)
    args.data_name = dataset.name
    work = Path(tempfile.mkdtemp(prefix="nanogpt-ab-"))
    times = {"before": [], "after": []}
    losses = {}
    for r in range(args.rounds):
        for name in ("before", "after") if r % 2 == 0 else ("after", "before"):
            ms, curve = run_once(getattr(args, name).resolve(), dataset.parent, work / f"{name}{r}", args)
            times[name].append(ms)
            losses.setdefault(name, curve)
            print(f"round {r}: {name:6s} {ms:7.2f} ms/iter", flush=True)
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    print(f"\n{args.n_layer}x{args.n_embd}, block {args.block}, batch {args.batch}, {args.iters} iters, "
          f"{args.threads} thread(s); {benchlib.machine()}")
    print(f"before {before:.2f} ms/iter | after {after:.2f} ms/iter | after/before {after / before:.3f}")
    print("losses identical" if losses["before"] == losses["after"] else "LOSSES DIFFER: not the same step")


if __name__ == "__main__":
    main()
