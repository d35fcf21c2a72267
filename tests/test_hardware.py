"""hardware=auto: what it picks on CPUs with and without bf16 matrix units, and that it says why."""
from __future__ import annotations

import pytest
import torch

from nanogpt.runtime import hardware


@pytest.fixture
def cpu_with(monkeypatch):
    def use(*flags, bf16_speedup=4.0):  # what bf16 units measure: 2-9x fp32
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(hardware, "bf16_matmul_speedup", lambda: bf16_speedup)
    return use


def test_auto_picks_float32_on_an_avx2_cpu_and_says_why(cpu_with):
    cpu_with("fma", "avx2")  # a Zen 3 class CPU: AVX2, no AVX-512, no bf16 matrix units
    rt = hardware.make_runtime("cpu", "auto", num_threads=1)
    assert rt.dtype == torch.float32
    assert rt.why["dtype"].startswith("float32 (auto: no bf16 matrix units on this CPU (flags avx2)")
    assert rt.why["threads"].startswith("1 thread (")


def test_auto_picks_bfloat16_where_the_cpu_has_bf16_units(cpu_with):
    cpu_with("avx2", "avx512f", "avx512_bf16")
    rt = hardware.make_runtime("cpu", "auto", num_threads=1)
    assert rt.dtype == torch.bfloat16
    assert "bf16 matrix units (flags avx512_bf16+avx512f+avx2)" in rt.why["dtype"]


def test_auto_picks_float32_where_the_bf16_units_are_there_but_unused(cpu_with):
    """ATEN_CPU_CAPABILITY=avx2 (or ONEDNN_MAX_CPU_ISA) on a bf16 CPU: the flags say bf16, the
    kernels emulate it at a fraction of fp32's rate (measured 0.02-0.3x: the default run then
    took 2 s a step instead of 0.19)."""
    cpu_with("avx2", "avx512f", "avx512_bf16", bf16_speedup=0.6)
    rt = hardware.make_runtime("cpu", "auto", num_threads=1)
    assert rt.dtype == torch.float32
    assert "but torch's kernels here do not use them: bf16 matmuls measured 0.60x float32" in rt.why["dtype"]


@pytest.mark.skipif(not hardware.cpu_has_bf16_flags(),
                    reason="needs a CPU with bf16 matrix units (avx512_bf16 or amx_bf16)")
def test_the_bf16_measurement_tells_kernels_held_below_the_cpu(tmp_path):
    import os
    import subprocess
    import sys

    probe = "from nanogpt.runtime import hardware; print(hardware.cpu_has_fast_bf16())"
    held = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = [subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                          check=True).stdout.strip() for env in (dict(os.environ), held)]
    assert out == ["True", "False"]


def test_an_explicit_dtype_is_reported_as_chosen(cpu_with):
    cpu_with("avx2", "avx512_bf16")
    rt = hardware.make_runtime("cpu", "float32", num_threads=1)
    assert rt.dtype == torch.float32 and rt.why["dtype"] == "float32 (hardware.dtype=float32)"
    assert rt.why["device"] == "cpu (hardware.device=cpu)"


def test_float64_holds_weights_in_double_and_never_autocasts():
    rt = hardware.make_runtime("cpu", "float64", num_threads=1)
    assert rt.param_dtype == torch.float64
    layer = torch.nn.Linear(4, 4).to(dtype=rt.param_dtype)
    with rt.autocast():
        assert layer(torch.ones(1, 4, dtype=torch.float64)).dtype == torch.float64


def test_compile_reason_names_the_trade_off_on_the_cpu():
    assert "pays only in runs of >15,000 steps" in hardware.why_compile(False, torch.device("cpu"))
    assert hardware.why_compile(True, torch.device("cpu")).startswith("compile on")
