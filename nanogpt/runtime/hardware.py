"""Device, precision and the matching autocast context: the one place that knows about hardware."""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import time
from dataclasses import dataclass, field

import torch

from nanogpt.errors import UserError
from nanogpt.runtime import threads

log = logging.getLogger("nanogpt")

# float64 holds the weights and computes in double precision: slow, for numerical checks (two
# ways of computing the same step agree to ~1e-15 there, whatever the CPU's kernels)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "float64": torch.float64}

# Dense bf16/fp16 tensor-core peaks (FLOP/s) for MFU, from the vendors' data sheets. The first key
# contained in the device's name wins, so more specific names come first ("H100 PCIe" before "H100").
GPU_PEAK_FLOPS = {
    "H100 PCIe": 756e12, "H100 NVL": 835e12, "H200": 989e12, "H100": 989e12, "GH200": 989e12,
    "B200": 2250e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
    "A6000": 155e12, "4090": 165e12, "3090": 71e12, "V100": 125e12, "T4": 65e12,
}


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype  # the autocast dtype; float32 (or float64) means no autocast
    why: dict = field(default_factory=dict)  # how each setting was chosen: device, dtype, threads
    load: threads.LoadFollower | None = None  # CPU threads that follow the load (nanogpt/runtime/threads.py)

    @property
    def device_type(self) -> str:
        return self.device.type

    @property
    def param_dtype(self) -> torch.dtype:
        """The dtype the weights are held in: float32, unless the whole run is in float64."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    def autocast(self):
        # every forward pass enters here: the moment to re-measure the load (about once a second)
        if self.load is not None:
            self.load.rebalance()
        if self.dtype in (torch.float32, torch.float64):
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.dtype)

    @property
    def needs_grad_scaler(self) -> bool:
        return self.dtype == torch.float16

    def synchronize(self):
        if self.device_type == "cuda":
            torch.cuda.synchronize(self.device)


BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # bf16 matrix instructions
SIMD_CPU_FLAGS = ("avx512f", "avx2")  # the widest vector unit, for the record


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset:
    try:
        with open("/proc/cpuinfo") as f:
            return frozenset(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        return frozenset()


def cpu_has_fast_bf16() -> bool:
    """True where the CPU has bf16 matrix instructions (AVX512-BF16 or AMX) and torch's kernels
    use them: bf16 matmuls are then several times faster than fp32. Elsewhere bf16 on the CPU is
    emulated and slower: without the flags, and where the flags are there but the kernels are
    held below them (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA, a build without them), which
    a short measurement tells (bf16 at 2-4x fp32 with the units, 0.02-0.3x without)."""
    return cpu_has_bf16_flags() and bf16_matmul_speedup() > 1.0


def cpu_has_bf16_flags() -> bool:
    """The CPU says it has bf16 matrix instructions; whether torch's kernels use them is
    cpu_has_fast_bf16's question."""
    return any(f in cpu_flags() for f in BF16_CPU_FLAGS)


@functools.lru_cache(maxsize=None)
def bf16_matmul_speedup(n: int = 384, calls: int = 12) -> float:
    """How many times faster a bf16 matmul (n x n) runs than a float32 one with this process's
    kernels (~0.05 s; ~0.2 s where bf16 is emulated). The fastest of several single calls of
    each, taken in turns: one call fits between the scheduler's interruptions, so another
    process's load slows both alike instead of skewing the ratio."""
    gen = torch.Generator().manual_seed(0)  # never touch the global RNG: resume must be exact
    a, b = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    operands = {torch.float32: (a, b), torch.bfloat16: (a.bfloat16(), b.bfloat16())}
    fastest = dict.fromkeys(operands, math.inf)
    for x, y in operands.values():
        x @ y  # warm-up: thread pool, packing buffers, kernel generation
    for _ in range(calls):
        for dtype, (x, y) in operands.items():
            start = time.perf_counter()
            x @ y
            fastest[dtype] = min(fastest[dtype], time.perf_counter() - start)
    return fastest[torch.float32] / fastest[torch.bfloat16]


def _cpu_flags_seen() -> str:
    seen = [f for f in (*BF16_CPU_FLAGS, *SIMD_CPU_FLAGS) if f in cpu_flags()]
    return "flags " + "+".join(seen) if seen else "none of " + ", ".join((*BF16_CPU_FLAGS, *SIMD_CPU_FLAGS))


def _why_dtype(name: str, device: torch.device, dtype: torch.dtype) -> str:
    if name != "auto":
        return f"hardware.dtype={name}"
    if device.type == "cuda":
        return "auto: bf16 where the GPU supports it, else float16 with a GradScaler"
    if device.type != "cpu":
        return f"auto: float32 on {device.type}"
    if dtype == torch.bfloat16:
        return f"auto: the CPU has bf16 matrix units ({_cpu_flags_seen()}): bf16 autocast is 2-4x fp32"
    if cpu_has_bf16_flags():
        return (f"auto: the CPU has bf16 matrix units ({_cpu_flags_seen()}) but torch's kernels here do "
                f"not use them: bf16 matmuls measured {bf16_matmul_speedup():.2f}x float32 (is "
                "ATEN_CPU_CAPABILITY or ONEDNN_MAX_CPU_ISA set?)")
    return (f"auto: no bf16 matrix units on this CPU ({_cpu_flags_seen()}): bf16 would be emulated, "
            "slower than float32")


def _why_threads(requested: int | None, cpus: int | None, device: torch.device,
                 load: threads.LoadFollower | None, compile: bool) -> str:
    n = torch.get_num_threads()
    count = f"{n} thread{'s' * (n > 1)}"
    if device.type != "cpu":
        return f"{count} on the CPU (data loading and host work only)"
    if load is not None:
        return load.why()
    if requested:
        return f"{count} (hardware.num_threads={requested})"
    if threads.user_choice():
        return f"{count} ({threads.user_choice()} is set: the count stays fixed whatever the load)"
    where = f"the {cpus} CPUs of this task" if cpus else "one per core"
    if compile:
        return f"{count} ({where}; fixed: compiled kernels keep the count they were built with)"
    if n <= 1:
        return f"{count} ({where})"
    return f"{count} ({where}; fixed: this system has no /proc/stat to measure the load from)"


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"hardware.device={name} but CUDA is not available on this machine: "
                            "use hardware=cpu (or hardware=auto)")
        return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError("hardware.device=mps but MPS is not available: use hardware=cpu")
    if name not in ("cpu", "mps"):
        raise UserError(f"unknown hardware.device={name!r}: use auto, cpu, cuda, cuda:N or mps")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_fast_bf16():
            return torch.bfloat16
        return torch.float32
    if name not in DTYPES:
        raise UserError(f"unknown hardware.dtype={name!r}: use one of auto, {', '.join(DTYPES)}")
    if name == "float64" and device.type == "mps":
        raise UserError("hardware.dtype=float64 is not supported on MPS: use float32")
    if name == "float16" and device.type == "cpu":
        raise UserError("hardware.dtype=float16 is not supported on the CPU: use bfloat16 or float32")
    return DTYPES[name]


def make_runtime(device: str, dtype: str, local_rank: int = 0, tf32: bool = True,
                 num_threads: int | None = None, cpus: int | None = None, compile: bool = False) -> Runtime:
    """num_threads: the user's fixed thread count; else `cpus` (a SLURM task's) or one per core,
    following the load on the CPU unless the user's OpenMP settings or compiled kernels fix it."""
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
    if num_threads or cpus:
        torch.set_num_threads(num_threads or cpus)
    elif not os.environ.get("OMP_NUM_THREADS"):  # one per core, whatever an earlier job of this
        torch.set_num_threads(len(threads.our_cpus()))  # process (a local sweep's) left behind
    follows_load = dev.type == "cpu" and not num_threads and not compile and not threads.user_choice()
    load = threads.follow_load(torch.get_num_threads()) if follows_load else None
    resolved = resolve_dtype(dtype, dev)
    why = {"device": f"{dev} ({'auto: ' + _why_auto_device(dev) if device == 'auto' else 'hardware.device=' + device})",
           "dtype": f"{str(resolved).replace('torch.', '')} ({_why_dtype(dtype, dev, resolved)})",
           "threads": _why_threads(num_threads, cpus, dev, load, compile)}
    return Runtime(dev, resolved, why, load)


def why_compile(compile: bool, device: torch.device) -> str:
    if compile:
        return "compile on (hardware.compile=true: the first steps compile, later ones run fused kernels)"
    if device.type == "cpu":
        return ("compile off (on the CPU compiling takes ~40 s and makes the default model's steps ~7% "
                "faster: it pays only in runs of >15,000 steps; hardware.compile=true to turn it on)")
    return "compile off (hardware.compile=false)"


def _why_auto_device(dev: torch.device) -> str:
    return {"cuda": "CUDA is available", "mps": "Apple MPS is available"}.get(dev.type, "no CUDA or MPS device")


def runtime(hw, local_rank: int = 0, cpus: int | None = None) -> Runtime:
    """The Runtime of a hardware config (the hardware group); `cpus`: the thread count when
    hardware.num_threads is not set (the CPUs a SLURM task was given)."""
    return make_runtime(hw.device, hw.dtype, local_rank, hw.tf32, hw.num_threads, cpus, hw.compile)


@functools.lru_cache(maxsize=None)
def measured_cpu_matmul_flops(dtype: torch.dtype = torch.float32, n: int = 1024, seconds: float = 0.3,
                              trials: int = 5) -> float:
    """The CPU's achieved square-matmul rate (FLOP/s): the honest ceiling for CPU MFU. The best
    of several short trials, so another process's burst does not lower the ceiling (and so
    inflate MFU); a machine that stays busy throughout still reads low."""
    gen = torch.Generator().manual_seed(0)  # never touch the global RNG: resume must be exact
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    for _ in range(2):
        a @ b  # warm-up (thread pool, packing buffers)
    best = 0.0
    for _ in range(trials):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / trials:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start))
    return best


def peak_flops(rt: Runtime) -> float | None:
    """Peak FLOP/s of one device for MFU: a data-sheet table for GPUs, a measurement on the CPU."""
    return peak_flops_info(rt)[0]


def peak_flops_info(rt: Runtime) -> tuple[float | None, str]:
    """The peak for MFU and where it comes from, for the record."""
    dtype = str(rt.dtype).replace("torch.", "")
    if rt.device_type == "cuda":
        name = torch.cuda.get_device_name(rt.device)
        if rt.dtype == torch.float64:
            return None, f"{name}: float64 has no tensor-core peak in the table, no MFU"
        for key, flops in GPU_PEAK_FLOPS.items():
            if key in name:
                if rt.dtype == torch.float32:  # TF32 tensor cores run at half the bf16 rate
                    return flops / 2, f"{name}: data-sheet TF32 peak (half of dense bf16)"
                return flops, f"{name}: data-sheet dense bf16 peak"
        return None, f"{name}: not in the peak table (nanogpt.runtime.hardware.GPU_PEAK_FLOPS), no MFU"
    if rt.device_type == "cpu":
        dtype = rt.dtype if rt.dtype != torch.float16 else torch.float32
        return (measured_cpu_matmul_flops(dtype),
                f"{str(dtype).replace('torch.', '')} 1024x1024 matmul rate measured on this CPU")
    return None, f"{rt.device_type}: no peak known, no MFU"


def compile_model(model: torch.nn.Module) -> torch.nn.Module:
    """torch.compile with static shapes. Training and evaluation batches (of another size, in
    eval and no-grad mode) then compile once each and both graphs stay cached: switching between
    them never recompiles, and no graph falls back to a slower dynamic batch dimension."""
    return torch.compile(model, dynamic=False)
