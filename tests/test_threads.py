"""CPU threads follow the load: fewer while other processes hold the cores (a spinning OpenMP
thread waiting for a descheduled one makes steps 10x slower), all of them when the cores are
free, and whatever the user fixed when they fixed it."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from nanogpt.runtime import hardware, threads


@pytest.fixture
def torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what an earlier job of the same process may leave behind
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_openmp_env(monkeypatch):
    for var in threads.USER_OPENMP_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.mark.parametrize("most, current, others, wanted", [
    (2, 2, 0.0, 2),   # quiet: every core
    (2, 2, 0.3, 2),   # a light background process: not worth a thread
    (2, 2, 1.0, 1),   # one core held (two busy processes against our two spinning threads get ~1)
    (2, 2, 0.67, 1),  # one busy process sharing 2 cores with our 2 threads
    (2, 1, 1.3, 1),   # still busy: stay at one
    (2, 1, 0.45, 1),  # at the edge: no flip back until 0.7 of a core more is free
    (2, 1, 0.1, 2),   # free again: all threads back
    (8, 8, 3.2, 5),   # 8 cores, 3.2 held: the 4.8 left free, rounded
    (8, 5, 0.0, 8),
])
def test_the_thread_count_is_the_cores_the_others_leave_free(most, current, others, wanted):
    assert threads.threads_for(current, most, others) == wanted


def test_the_others_are_the_busy_time_less_our_own():
    before = threads.CpuTimes(at=0.0, busy=10.0, own=3.0)
    after = threads.CpuTimes(at=2.0, busy=13.0, own=4.0)  # 3 busy CPU-seconds in 2 s, 1 of them ours
    assert threads.others_cores(before, after) == pytest.approx(1.0)


def test_measured_load_lowers_then_restores_torch_threads(monkeypatch, torch_threads):
    """Readings as /proc/stat gives them: two other processes busy, then none."""
    follower = threads.LoadFollower(most=2, interval=0.0)
    follower.last = threads.CpuTimes(at=0.0, busy=0.0, own=0.0)
    torch.set_num_threads(2)
    readings = iter([threads.CpuTimes(1.0, 2.0, 0.0),    # 2 cores busy, none of it ours
                     threads.CpuTimes(2.0, 4.0, 0.7),    # still busy: we got 0.7
                     threads.CpuTimes(3.0, 5.0, 1.7)])   # quiet: the busy second was ours
    monkeypatch.setattr(threads, "read_cpu_times", lambda cpus: next(readings))
    seen = []
    for _ in range(3):
        follower.rebalance()
        seen.append(torch.get_num_threads())
    assert seen == [1, 1, 2]


@pytest.mark.skipif((os.cpu_count() or 1) < 2 or not os.path.exists("/proc/stat"),
                    reason="needs 2+ CPUs and Linux's /proc/stat")
def test_two_busy_processes_take_the_runtime_down_to_one_thread(no_openmp_env, torch_threads):
    """Real processes spinning on every core: the runtime starts on fewer threads than cores and
    its header says why (other load on the machine only makes the drop more certain)."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count())]
    try:
        time.sleep(0.5)  # the hogs are running
        rt = hardware.make_runtime("cpu", "float32")
        assert torch.get_num_threads() < os.cpu_count()
        assert rt.why["threads"].startswith(f"{os.cpu_count()} threads, following the load (")
        assert "others keep" in rt.why["threads"]
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def test_a_fixed_thread_count_is_left_alone(no_openmp_env, torch_threads):
    rt = hardware.make_runtime("cpu", "float32", num_threads=1)
    assert rt.load is None and torch.get_num_threads() == 1
    assert rt.why["threads"] == "1 thread (hardware.num_threads=1)"


@pytest.mark.parametrize("var, value", [("OMP_NUM_THREADS", "2"), ("OMP_WAIT_POLICY", "PASSIVE"),
                                        ("GOMP_SPINCOUNT", "300000")])
def test_the_users_openmp_setting_fixes_the_count(monkeypatch, torch_threads, var, value):
    for v in threads.USER_OPENMP_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv(var, value)
    rt = hardware.make_runtime("cpu", "float32")
    assert rt.load is None
    assert f"{var}={value} is set: the count stays fixed whatever the load" in rt.why["threads"]


def test_compiled_kernels_keep_their_count(no_openmp_env, torch_threads):
    rt = hardware.make_runtime("cpu", "float32", compile=True)
    assert rt.load is None
    assert "fixed: compiled kernels keep the count they were built with" in rt.why["threads"]


def test_a_runtime_starts_from_one_thread_per_core_whatever_was_set_before(no_openmp_env, torch_threads):
    """A local sweep runs its jobs in one process: a job after one that ran on fewer threads
    (hardware.num_threads=1, or a busy spell) starts again from one per core."""
    hardware.make_runtime("cpu", "float32", compile=True)  # compile: the count is not then followed
    assert torch.get_num_threads() == len(threads.our_cpus())


def test_every_forward_pass_gives_the_follower_its_chance(monkeypatch, no_openmp_env, torch_threads):
    rt = hardware.make_runtime("cpu", "float32")
    if rt.load is None:
        pytest.skip("nothing to follow here (one CPU or no /proc/stat)")
    calls = []
    monkeypatch.setattr(rt.load, "rebalance", lambda: calls.append(1))
    for _ in range(3):
        with rt.autocast():
            pass
    assert len(calls) == 3


@pytest.mark.slow
def test_the_default_models_steps_do_not_depend_on_the_thread_count(tmp_path, data_root):
    """What makes following the load safe for the default run: its weights after training at one
    and at two threads are the same to the last bit (docs: larger shapes can differ there)."""
    from inprocess import make_config

    from nanogpt.runtime.distributed import Dist
    from nanogpt.training.loop import train

    weights = []
    for n in (1, 2):
        cfg = make_config(["data.name=tiny_char", "task.max_iters=6", "task.num_samples=0", "task.plot=false",
                           "task.eval_interval=6", "task.eval_iters=1", f"hardware.num_threads={n}"])
        (tmp_path / f"t{n}").mkdir()
        train(cfg, tmp_path / f"t{n}", Dist())
        weights.append(torch.load(tmp_path / f"t{n}" / "ckpt" / "last.pt", weights_only=False)["model"])
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
