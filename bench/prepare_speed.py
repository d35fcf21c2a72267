#!/usr/bin/env python
"""GPT-2 BPE data preparation speed and memory: prepare/owt.py or prepare/fineweb.py on a local corpus.

  python bench/prepare_speed.py                   # ~100 MiB of repeated tiny Shakespeare, 1 and 2 processes
  python bench/prepare_speed.py --mib 300 --num-proc 2 4
  python bench/prepare_speed.py --script fineweb --format parquet --mib 100 1000 --num-proc 2 --doc-chars 5000

The corpus is tiny Shakespeare repeated (one document per non-blank line, `--lines`; or
`--doc-chars N` to join lines into documents of about N characters, closer to web pages), written
to a temp dir (as text, or as Parquet files in the hub's layout with --format parquet) and deleted
afterwards. The prepare script runs as a user runs it, offline (owt: --files/--data-files, Arrow
copy and nanoGPT's split; fineweb: --data-files, streamed into llm.c shards); its wall time, the
tokens it wrote, and the peak memory of its process tree (RSS sampled 10 times a second; PSS,
which counts pages shared by the worker processes once) are reported. Several --mib sizes show
whether peak memory grows with the corpus. For scale, the tokenizer alone (tiktoken's batch
encoder, in this process) is timed on the same text.
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


def as_parquet(corpus: Path, folder: Path, rows_per_file: int = 100_000, rows_per_group: int = 2_000) -> str:
    """The corpus's lines as Parquet files named as the hub names them, in row groups of ~10 MB as
    the hub's files are (a reader holds a whole row group in memory); returns their glob."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True)
    batch, n = [], 0
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            batch.append(line.rstrip("\n"))
            if len(batch) == rows_per_file:
                pq.write_table(pa.table({"text": batch}), folder / f"train-{n:05d}.parquet",
                               row_group_size=rows_per_group)
                batch, n = [], n + 1
    if batch:
        pq.write_table(pa.table({"text": batch}), folder / f"train-{n:05d}.parquet", row_group_size=rows_per_group)
    return str(folder / "*.parquet")


def prepare_command(script: str, source: str, out: Path, num_proc: int) -> list[str]:
    inputs = ["--files", source, "--lines"] if not source.endswith(".parquet") else ["--data-files", source]
    extra = ["--shard-tokens", str(10**7), "--val-tokens", str(10**6)] if script == "fineweb" else []
    return [sys.executable, str(benchlib.REPO / "prepare" / f"{script}.py"), *inputs, *extra, "--out-dir", str(out),
            "--num-proc", str(num_proc), "--rank-file", str(RANKS)]


def run_prepare(cmd: list[str], out: Path, num_proc: int, env: dict) -> dict:
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
        raise SystemExit(f"{' '.join(cmd[1:3])} failed ({proc.returncode}):\n{output[-3000:]}")
    meta = json.loads((out / "meta.json").read_text())
    tokens = sum(meta["tokens"].values())
    files = sum(p.stat().st_size for p in out.glob("*.bin"))
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
    parser.add_argument("--script", choices=["owt", "fineweb"], default="owt", help="prepare script (default: owt)")
    parser.add_argument("--format", choices=["txt", "parquet"], default="txt", help="corpus files (default: txt)")
    parser.add_argument("--mib", type=float, nargs="+", default=[100.0], help="corpus sizes (default: 100 MiB)")
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2], help="worker processes to try")
    parser.add_argument("--doc-chars", type=int, help="join lines into documents of about this many characters")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not benchlib.SHAKESPEARE.is_file() or not RANKS.is_file():
        raise SystemExit(f"needs {benchlib.SHAKESPEARE} and {RANKS} (the shared data folder)")

    print(f"prepare/{args.script}.py on {args.format} | {benchlib.machine()}", flush=True)
    runs, alone = [], {}
    for mib in args.mib:
        tmp = Path(tempfile.mkdtemp(prefix="nanogpt-prep-"))
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_CACHE": str(tmp / "hf-cache"), "PYTHONPATH": str(benchlib.REPO)}
        try:
            corpus = tmp / "corpus.txt"
            size = make_corpus(corpus, mib, args.doc_chars)
            docs = sum(1 for _ in open(corpus, encoding="utf-8"))
            print(f"corpus: {size / 2**20:,.0f} MiB, {docs:,} documents", flush=True)
            if not alone:
                alone = {n: tokenizer_alone(corpus, n) for n in sorted(set(args.num_proc))}
            source = as_parquet(corpus, tmp / "parquet" / "data") if args.format == "parquet" else str(corpus)
            for n in args.num_proc:
                r = run_prepare(prepare_command(args.script, source, tmp / f"out{n}", n), tmp / f"out{n}", n, env)
                runs.append({**r, "corpus_bytes": size, "documents": docs})
                shutil.rmtree(tmp / f"out{n}")
                shutil.rmtree(tmp / "hf-cache", ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    mib = 2**20
    for n, rate in alone.items():
        print(f"tiktoken encode_ordinary_batch alone, {n} thread(s): {rate:,.0f} tokens/s")
    print(f"{'corpus':>10}{'num_proc':>9}{'wall s':>9}{'tokens':>14}{'tokens/s':>11}{'MiB/s':>7}{'peak RSS':>12}{'peak PSS':>12}")
    for r in runs:
        print(f"{r['corpus_bytes'] / mib:>6,.0f} MiB{r['num_proc']:>9}{r['wall_s']:>9.1f}{r['tokens']:>14,}"
              f"{r['tokens_per_s']:>11,.0f}{r['corpus_bytes'] / mib / r['wall_s']:>7.1f}"
              f"{r['peak_rss_tree'] / mib:>8,.0f} MiB{r['peak_pss_tree'] / mib:>8,.0f} MiB")
    print(f"load average after: {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps({"script": args.script, "format": args.format, "tokenizer_alone": alone,
                                         "runs": runs, "machine": benchlib.machine()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
