#!/usr/bin/env python
"""GPT-2 BPE data preparation speed and memory: prepare/owt.py on a local corpus of 100+ MiB.

  python bench/prepare_speed.py                   # ~100 MiB of repeated tiny Shakespeare, 1 and 2 processes
  python bench/prepare_speed.py --mib 300 --num-proc 2 4

The corpus is tiny Shakespeare repeated (one document per non-blank line, `--lines`; or
`--doc-chars N` to join lines into documents of about N characters, closer to web pages), written
to a temp dir and deleted afterwards. prepare/owt.py runs as a user runs it, offline; its wall
time, the tokens it wrote, and the peak memory of its process tree (RSS sampled 10 times a second;
PSS, which counts pages shared by the forked workers once) are reported. For scale, the tokenizer
alone (tiktoken's batch encoder, in this process) is timed on the same text.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib
import psutil

RANKS = benchlib.SHAKESPEARE.parents[1] / "gpt2_bpe" / "gpt2.tiktoken"


def make_corpus(path: Path, mib: float, doc_chars: int | None) -> int:
    lines = [line for line in benchlib.SHAKESPEARE.read_text(encoding="utf-8").splitlines() if line.strip()]
    if doc_chars:  # documents of ~doc_chars characters, one per line (newlines inside become spaces)
        docs, cur = [], []
        for line in lines:
            cur.append(line)
            if sum(map(len, cur)) >= doc_chars:
                docs.append(" ".join(cur))
                cur = []
        lines = docs
    text = "\n".join(lines) + "\n"
    copies = -(-int(mib * 2**20) // len(text.encode()))
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(copies):
            f.write(text)
    return path.stat().st_size


def tree_memory(proc: psutil.Process) -> tuple[int, int]:
    """(RSS, PSS) summed over a process and its descendants, in bytes."""
    rss = pss = 0
    for p in [proc] + proc.children(recursive=True):
        try:
            rss += p.memory_info().rss
            for line in Path(f"/proc/{p.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
        except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
            pass
    return rss, pss


def run_prepare(corpus: Path, out: Path, num_proc: int, env: dict) -> dict:
    cmd = [sys.executable, str(benchlib.REPO / "prepare" / "owt.py"), "--files", str(corpus), "--lines",
           "--out-dir", str(out), "--num-proc", str(num_proc), "--rank-file", str(RANKS)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ps, peak_rss, peak_pss = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        rss, pss = tree_memory(ps)
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    output = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"prepare/owt.py failed ({proc.returncode}):\n{output[-3000:]}")
    meta = json.loads((out / "meta.json").read_text())
    tokens = sum(meta["tokens"].values())
    files = sum((out / f"{s}.bin").stat().st_size for s in meta["tokens"])
    return {"num_proc": num_proc, "wall_s": elapsed, "tokens": tokens, "tokens_per_s": tokens / elapsed,
            "peak_rss_tree": peak_rss, "peak_pss_tree": peak_pss, "bin_bytes": files}


def tokenizer_alone(corpus: Path, threads: int) -> float:
    """tokens/s of tiktoken's batch encoder on the corpus's documents, nothing else."""
    from nanogpt.tokenizer import GPT2Tokenizer

    tok = GPT2Tokenizer(RANKS)
    docs = corpus.read_text(encoding="utf-8").splitlines()
    start = time.perf_counter()
    n = sum(len(ids) for ids in tok.encode_batch(docs, num_threads=threads))
    return n / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=float, default=100.0, help="corpus size (default: %(default)s MiB)")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2], help="worker processes to try")
    parser.add_argument("--doc-chars", type=int, help="join lines into documents of about this many characters")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not benchlib.SHAKESPEARE.is_file() or not RANKS.is_file():
        raise SystemExit(f"needs {benchlib.SHAKESPEARE} and {RANKS} (the shared data folder)")

    tmp = Path(tempfile.mkdtemp(prefix="nanogpt-prep-"))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(tmp / "hf-cache"), "PYTHONPATH": str(benchlib.REPO)}
    try:
        corpus = tmp / "corpus.txt"
        size = make_corpus(corpus, args.mib, args.doc_chars)
        docs = sum(1 for _ in open(corpus, encoding="utf-8"))
        print(f"corpus: {size / 2**20:,.0f} MiB, {docs:,} documents | {benchlib.machine()}", flush=True)
        alone = {n: tokenizer_alone(corpus, n) for n in sorted(set(args.num_proc))}
        runs = []
        for n in args.num_proc:
            runs.append(run_prepare(corpus, tmp / f"out{n}", n, env))
            shutil.rmtree(tmp / f"out{n}")
            shutil.rmtree(tmp / "hf-cache", ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    mib = 2**20
    for n, rate in alone.items():
        print(f"tiktoken encode_ordinary_batch alone, {n} thread(s): {rate:,.0f} tokens/s")
    print(f"{'num_proc':>8}{'wall s':>9}{'tokens':>14}{'tokens/s':>11}{'MiB/s':>7}{'peak RSS':>12}{'peak PSS':>12}")
    for r in runs:
        print(f"{r['num_proc']:>8}{r['wall_s']:>9.1f}{r['tokens']:>14,}{r['tokens_per_s']:>11,.0f}"
              f"{size / mib / r['wall_s']:>7.1f}{r['peak_rss_tree'] / mib:>8,.0f} MiB{r['peak_pss_tree'] / mib:>8,.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps({"corpus_bytes": size, "documents": docs, "tokenizer_alone": alone,
                                         "runs": runs, "machine": benchlib.machine()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
