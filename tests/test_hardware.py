"""hardware=auto: what it picks on CPUs with and without bf16 matrix units, and that it says why."""
from __future__ import annotations

import pytest
import torch

from nanogpt import hardware


@pytest.fixture
def cpu_with(monkeypatch):
    def use(*flags):
        monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))
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
