#!/usr/bin/env python
"""Peak memory of the data path does not grow with the dataset: a 4 GiB token file against a small one,
and against a plain memmap (what the data path did before).

  python bench/memmap_rss.py                    # 4 GiB vs 40 MiB train.bin, 3000 batches of 12 x 1024
  python bench/memmap_rss.py --size-gib 8 --batches 10000

Each dataset is a synthetic prepared dataset in a temp dir (train.bin created sparse, so it costs
no disk or time; reading a hole still maps a page like real data), deleted afterwards. Each case
runs in a fresh process: the training data path (Batches + the background Prefetcher) draws
random windows, and the process's resident memory is sampled as it goes; ru_maxrss gives the peak.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib


def make_dataset(root: Path, train_bytes: int, vocab: int = 50304) -> Path:
    root.mkdir(parents=True)
    with open(root / "train.bin", "wb") as f:
        f.truncate(train_bytes)  # sparse: instant, and no disk used
    with open(root / "val.bin", "wb") as f:
        f.truncate(1 << 20)
    tokens = {"train": train_bytes // 2, "val": (1 << 20) // 2}
    (root / "meta.json").write_text(json.dumps({"dataset": root.name, "tokenizer": {"kind": "gpt2"},
                                                "vocab_size": vocab, "dtype": "uint16", "tokens": tokens}))
    return root


def rss_parts() -> dict:
    """Resident memory now, split as the kernel counts it (file-backed pages: the memmap)."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


def child(path: str, batches: int, block: int, batch: int, plain: bool) -> None:
    """Run the data path on one dataset; print one JSON line of figures."""
    import torch

    from nanogpt.data import batches as data
    from nanogpt.data.batches import Batches, Prefetcher, TokenDataset

    if plain:  # what the data path did before: a memmap left alone (default read-ahead, never unmapped)
        data.Split.__post_init__ = lambda self: setattr(self, "_mmap", None) or setattr(self, "_mapped", 0)

    dataset = TokenDataset(Path(path))
    b = Batches(dataset, block, batch, seed=1337, device=torch.device("cpu"))
    prefetch = Prefetcher(b, start_iter=0, accum=1)
    start_rss, peak_sampled, t0 = rss_parts(), 0, time.perf_counter()
    for it in range(batches):
        x, y = prefetch.get(it, 0)
        if it % 100 == 0:
            peak_sampled = max(peak_sampled, rss_parts()["VmRSS"])
    elapsed = time.perf_counter() - t0
    prefetch.close()
    end = rss_parts()
    print(json.dumps({"train_bytes": (dataset.path / "train.bin").stat().st_size, "batches": batches, "plain": plain,
                      "batches_per_s": batches / elapsed, "rss_start": start_rss["VmRSS"],
                      "rss_end": end["VmRSS"], "rss_file_end": end.get("RssFile"),
                      "rss_anon_end": end.get("RssAnon"), "rss_sampled_peak": peak_sampled,
                      "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gib", type=float, default=4.0, help="the big train.bin (default: %(default)s)")
    parser.add_argument("--small-mib", type=float, default=40.0, help="the small one (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=3000)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.batches, args.block, args.batch, args.plain)

    tmp = Path(tempfile.mkdtemp(prefix="nanogpt-rss-"))
    results = []
    try:
        paths = {"small": make_dataset(tmp / "small", int(args.small_mib * 2**20)),
                 "big": make_dataset(tmp / "big", int(args.size_gib * 2**30))}
        # the big file with a plain memmap (the data path before), then both with ours
        for name, plain in (("big", True), ("small", False), ("big", False)):
            out = subprocess.run([sys.executable, __file__, "--child", str(paths[name]), "--batches",
                                  str(args.batches), "--block", str(args.block), "--batch", str(args.batch)]
                                 + (["--plain"] if plain else []), check=True, capture_output=True, text=True)
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    mib = 2**20
    print(f"{args.batches} batches of {args.batch} x {args.block} tokens through Batches + Prefetcher | "
          f"{benchlib.machine()}")
    print(f"{'memmap':<22}{'train.bin':>12}{'batches/s':>11}{'RSS start':>11}{'RSS end':>10}{'of it file':>12}{'peak RSS':>10}")
    for r in results:
        kind = "plain (before)" if r["plain"] else "ours (random, released)"
        print(f"{kind:<22}{r['train_bytes'] / mib:>8,.0f} MiB{r['batches_per_s']:>11,.0f}{r['rss_start'] / mib:>7,.0f} MiB"
              f"{r['rss_end'] / mib:>6,.0f} MiB{(r['rss_file_end'] or 0) / mib:>8,.0f} MiB{r['ru_maxrss'] / mib:>6,.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
