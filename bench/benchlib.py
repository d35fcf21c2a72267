"""What the benchmark scripts share: the repo on sys.path, a char dataset to train on, timing that is
fair on a noisy machine, and a line that records the machine's state next to every figure."""
from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as `python bench/x.py`: import this checkout's nanogpt
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

# the read-only shared/ folder sits next to the checkout (or next to the folder of worktrees)
SHAKESPEARE = next((p / "shared" / "data" / "tinyshakespeare" / "input.txt" for p in REPO.parents
                    if (p / "shared" / "data" / "tinyshakespeare" / "input.txt").is_file()),
                   REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt")


def char_dataset(path: str | None = None) -> Path:
    """A prepared char-level dataset: `path` if given, else tiny Shakespeare (nanoGPT's
    shakespeare_char) prepared from the local copy, else the embedded Python docs, in a temp dir."""
    if path:
        return Path(path)
    out = Path(tempfile.mkdtemp(prefix="nanogpt-bench-"))
    if SHAKESPEARE.is_file():
        from prepare.shakespeare_char import prepare

        prepare(out / "shakespeare_char", input_path=SHAKESPEARE)
        return out / "shakespeare_char"
    from prepare.pydoc_char import prepare

    prepare(out / "pydoc_char")
    return out / "pydoc_char"


def machine() -> str:
    """Everything a reader needs to judge a figure from this run."""
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"torch {torch.__version__}, {torch.get_num_threads()} threads of {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}), load average {load}")


def matmul_rates() -> str:
    from nanogpt.runtime.hardware import measured_cpu_matmul_flops

    measured_cpu_matmul_flops.cache_clear()  # a fresh measurement: the load changes over a run
    return ", ".join(f"{str(d).replace('torch.', '')} {measured_cpu_matmul_flops(d) / 1e9:,.0f} GFLOP/s"
                     for d in (torch.float32, torch.bfloat16))


def median_ms(seconds: list[float]) -> float:
    return statistics.median(seconds) * 1000


def set_threads(n: int | None) -> None:
    """n threads; None: as many as the cores other processes leave free when the benchmark starts
    (nanogpt/runtime/threads.py; fixed from then on, so the variants taking turns see the same count)."""
    if n:
        torch.set_num_threads(n)
        return
    from nanogpt.runtime import threads

    if not threads.user_choice():
        threads.follow_load(torch.get_num_threads())
