#!/usr/bin/env python
"""The default run on a busy machine: ms/iter of `python launch.py` while N CPU-bound processes
(started and stopped by this script) compete for the cores, against the alternatives, in turns.

  python bench/busy.py                          # quiet and 2 busy processes (on a 2-core machine)
  python bench/busy.py --hogs 0 2 4 --rounds 3 --iters 80
  python bench/busy.py --variant spin3k:GOMP_SPINCOUNT=3000 --variant t1::hardware.num_threads=1

Each variant is one whole `python launch.py` run (the default model and data, no samples, no
evaluation in the middle), its ms/iter the median of the logged intervals after the first. The
variants take turns within each round, so a change in the machine's state hits them alike. A
variant is NAME:ENV=V,ENV=V:OVERRIDE OVERRIDE (either part may be empty). The figures go to
BENCHMARKS.md, "On a busy machine".
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import benchlib  # first: puts this checkout on sys.path

REPO = benchlib.REPO
# libgomp's own default spin (300,000 turns before sleeping, OMP_WAIT_POLICY unset): what every
# run did before launch.py chose the wait policy, since a user's GOMP_SPINCOUNT wins over ours
BEFORE = "before:GOMP_SPINCOUNT=300000:"
VARIANTS = ["default::", BEFORE, "passive:OMP_WAIT_POLICY=PASSIVE:", "1 thread::hardware.num_threads=1"]


def parse_variant(spec: str) -> tuple[str, dict, list[str]]:
    name, _, rest = spec.partition(":")
    env_part, _, overrides = rest.partition(":")
    env = dict(kv.split("=", 1) for kv in env_part.split(",") if kv)
    return name, env, overrides.split()


@contextmanager
def hogs(n: int):
    """n processes that keep one core each busy (pure Python loops: no threads of their own)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def ms_per_iter(env: dict, overrides: list[str], iters: int) -> float:
    with tempfile.TemporaryDirectory(prefix="nanogpt-busy-") as run_dir:
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_", "KMP_"))}
        subprocess.run([sys.executable, "launch.py", f"task.max_iters={iters}", "task.num_samples=0",
                        "task.eval_interval=1000000", f"hydra.run.dir={run_dir}", *overrides],
                       cwd=REPO, env={**clean, **env}, check=True, capture_output=True)
        with open(Path(run_dir) / "metrics.jsonl") as f:
            intervals = [r["ms_per_iter"] for r in map(json.loads, f) if r.get("kind") == "train"]
    return statistics.median(intervals[1:] or intervals)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hogs", type=int, nargs="+", default=[0, os.cpu_count() or 2],
                    help="busy processes per load level (default: none, then one per core)")
    ap.add_argument("--variant", action="append", help="NAME:ENV=V,...:OVERRIDES (repeatable); "
                    "default: today's default, libgomp's own spin (before), passive waiting, 1 thread")
    ap.add_argument("--iters", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    variants = [parse_variant(v) for v in (args.variant or VARIANTS)]
    print(f"# {benchlib.machine()}; {args.iters} iterations a run, {args.rounds} rounds in turns")
    for n in args.hogs:
        times = {name: [] for name, _, _ in variants}
        with hogs(n):
            for _ in range(args.rounds):
                for name, env, overrides in variants:
                    times[name].append(ms_per_iter(env, overrides, args.iters))
            load = os.getloadavg()[0]
        report(n, load, times)


def report(n: int, load: float, times: dict) -> None:
    print(f"\n{n} busy processes (load average {load:.1f} at the end)\n")
    print("| setting | ms/iter (each round) | median | vs best of passive, 1 thread |")
    print("| --- | --- | --- | --- |")
    medians = {k: statistics.median(v) for k, v in times.items()}
    best = min((medians[k] for k in ("passive", "1 thread") if k in medians), default=None)
    for name, ms in times.items():
        ratio = f"{medians[name] / best:.2f}x" if best else "-"
        print(f"| {name} | {', '.join(f'{m:.0f}' for m in ms)} | {medians[name]:.0f} | {ratio} |")


if __name__ == "__main__":
    main()
