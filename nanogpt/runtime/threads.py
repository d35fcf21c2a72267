"""CPU threads that follow the load: one per core while the cores are free, fewer while other
processes hold them.

Why: torch's CPU ops run on an OpenMP team (GNU libgomp in the Linux wheels) whose threads, after
each op, spin ~300,000 turns (milliseconds) waiting for the next one instead of sleeping. On a
quiet machine that saves a wake-up per op: passive waiting (OMP_WAIT_POLICY=PASSIVE) makes the
default model's steps 10-50% slower. On a busy one a spinning thread holds a core while the
thread it waits for sits in the run queue behind another process, so every op waits out a time
slice: steps 10-40x slower (BENCHMARKS.md, "On a busy machine"). Even 3,000 turns of spinning
were 2.9x slower than passive waiting there, so no wait policy, fixed before the runtime starts,
serves both.
The thread count can change at any time: this module measures what the other processes take of
this process's CPUs (/proc/stat's busy time less this process's own CPU time) about once a
second, between forward passes, and sets torch's thread count to the cores they leave free.

A user's choice wins: hardware.num_threads, OMP_NUM_THREADS, OMP_WAIT_POLICY or GOMP_SPINCOUNT
fix the count. So does torch.compile on the CPU (its kernels keep the count they were built for).
The thread count can move the last bits of some reductions (a layer norm's weight gradient over
1,024+ rows; the default model's steps are bit-identical at 1 and 2 threads): pin
hardware.num_threads where runs must repeat bit for bit on a machine whose load varies.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass

import torch

log = logging.getLogger("nanogpt")

# the user's own OpenMP settings: any of them means the thread count is theirs to choose
USER_OPENMP_VARS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
INTERVAL_S = 1.0  # how often the load is re-measured
FIRST_LOOK_S = 0.1  # the measurement a process starts with: short, before any work
# hysteresis, in cores: drop a thread once the others leave half a core less than we run on;
# take one back only when 0.7 of a core more is free, so a machine at the edge does not flip
DROP_BELOW, TAKE_ABOVE = 0.5, 0.7


@dataclass
class CpuTimes:
    at: float  # monotonic seconds
    busy: float  # CPU-seconds the machine spent on our CPUs, not idle
    own: float  # CPU-seconds this process spent (all its threads)


def our_cpus() -> set[int]:
    try:
        return os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return set(range(os.cpu_count() or 1))


def read_cpu_times(cpus: set[int]) -> CpuTimes | None:
    """Busy time of `cpus` (user+nice+system+irq+softirq+steal) and our own; None without /proc/stat."""
    try:
        with open("/proc/stat") as f:
            lines = [line.split() for line in f if line.startswith("cpu") and line[3].isdigit()]
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = 0
    for fields in lines:
        if int(fields[0][3:]) in cpus:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
            busy += user + nice + system + irq + softirq + steal
    return CpuTimes(time.monotonic(), busy / tick, time.process_time())


def others_cores(before: CpuTimes, after: CpuTimes) -> float:
    """How many of our CPUs the other processes kept busy between two readings, in cores."""
    wall = after.at - before.at
    if wall <= 0:
        return 0.0
    return max(0.0, ((after.busy - before.busy) - (after.own - before.own)) / wall)


def threads_for(current: int, most: int, others: float) -> int:
    """The thread count for the cores the others leave free, with hysteresis."""
    free = most - others
    if free < current - DROP_BELOW:
        return max(1, math.floor(free + DROP_BELOW))
    if free >= current + TAKE_ABOVE:
        return min(most, math.floor(free + 1 - TAKE_ABOVE))
    return current


class LoadFollower:
    """Keeps torch's thread count at the cores the other processes leave free."""

    def __init__(self, most: int, interval: float = INTERVAL_S):
        self.most, self.interval = most, interval
        self.cpus = our_cpus()
        self.last = read_cpu_times(self.cpus)
        self.others = 0.0  # the latest measurement, in cores

    def first_look(self, seconds: float = FIRST_LOOK_S) -> None:
        """Measure before any work, so a busy machine's first steps do not spin."""
        time.sleep(seconds)
        self.rebalance(force=True)

    def rebalance(self, force: bool = False) -> None:
        if self.last is None or (not force and time.monotonic() - self.last.at < self.interval):
            return
        now = read_cpu_times(self.cpus)
        if now is None:
            return
        self.others, self.last = others_cores(self.last, now), now
        current = torch.get_num_threads()
        wanted = threads_for(current, self.most, self.others)
        if wanted != current:
            torch.set_num_threads(wanted)
            log.info("threads: %d -> %d (other processes kept %.1f of %d cores busy)%s", current, wanted,
                     self.others, len(self.cpus), "" if wanted > current else ": back up when they are free")

    def why(self) -> str:
        n = torch.get_num_threads()
        now = f"{n} now: others keep {self.others:.1f} cores busy" if n < self.most else "the cores are free"
        return (f"{self.most} threads, following the load ({now}; fewer while other processes hold the "
                "cores, where spinning threads make steps 10x slower; hardware.num_threads=N fixes it)")


def user_choice() -> str | None:
    """The user's own OpenMP setting that fixes the thread count, if any ('NAME=value')."""
    return next((f"{v}={os.environ[v]}" for v in USER_OPENMP_VARS if os.environ.get(v)), None)


def follow_load(most: int) -> LoadFollower | None:
    """A LoadFollower for `most` threads, or None where there is nothing to follow: one thread,
    or no /proc/stat to read the load from."""
    follower = LoadFollower(most)
    if most <= 1 or follower.last is None:
        return None
    torch.set_num_threads(most)
    follower.first_look()
    return follower
