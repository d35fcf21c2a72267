"""Performance work that must not change results: the FLOP count behind MFU, the bench task, bf16
against fp32, the CPU attention path, the data path's determinism and memmap handling, and
compiled evaluation. Speed itself is measured by bench/ scripts, never asserted here."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import TINY, launch
from nanogpt.data import batches as data_mod
from nanogpt.training.bench import bench
from nanogpt.training.optim import AdamWConfig
from nanogpt.training.bench import BenchTask
from nanogpt.gate import Config
from nanogpt.config import DataConfig, ModelConfig
from nanogpt.runtime.schema import HardwareConfig
from nanogpt.data.batches import Batches, Prefetcher, TokenDataset
from nanogpt.runtime.hardware import Runtime
from nanogpt.model import GPT, GPTConfig, causal_attention
from nanogpt.training.optim import make_adamw

TINY_MODEL = ["model.n_layer=2", "model.n_head=2", "model.n_embd=32", "model.block_size=32"]
CPU_FP32 = ["hardware=cpu", "hardware.dtype=float32", "hardware.micro_batch_size=4"]


def hand_flops_per_token(vocab: int, n_layer: int = 2, d: int = 32, T: int = 32) -> int:
    """6 N + 12 L d T, with N counted by hand: the tied token embedding once, no position
    embedding; per layer two LayerNorms, qkv, attention output, MLP up and down (with biases)."""
    per_layer = 2 * 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * 4 * d + 4 * d) + (4 * d * d + d)
    n = vocab * d + n_layer * per_layer + 2 * d  # + the final LayerNorm
    return 6 * n + 12 * n_layer * d * T


def test_flops_and_mfu_in_summary_match_hand_count(tmp_path, data_root):
    launch([*TINY, "data.name=tiny_char", "task.max_iters=3", "task.eval_interval=3", "run=r"], cwd=tmp_path)
    vocab = json.loads((data_root / "tiny_char" / "meta.json").read_text())["vocab_size"]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    per_token = hand_flops_per_token(vocab)
    assert summary["flops_per_token"] == per_token
    assert summary["flops"] == 3 * summary["tokens_per_step"] * per_token
    assert summary["tokens_per_s"] > 0 and 0 < summary["mfu"] < 1.5  # the CPU's peak is measured, so noisy
    logged = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["kind"] == "train"]
    assert all(r["tokens_per_s"] > 0 and r["mfu"] > 0 for r in train)


def tiny_bench_config(**task) -> Config:
    return Config(model=ModelConfig(n_layer=2, n_head=2, n_embd=32, block_size=32, vocab_size=50),
                  data=DataConfig(name="tiny_char"), optim=AdamWConfig(),
                  hardware=HardwareConfig(device="cpu", dtype="float32", micro_batch_size=4),
                  task=BenchTask(**{"iters": 2, "warmup": 1, **task}))


def test_bench_returns_and_records_its_figures(tmp_path, capsys):
    tokens_per_s = bench(tiny_bench_config(tokens_per_step=256), tmp_path)
    result = json.loads((tmp_path / "bench.json").read_text())
    assert tokens_per_s == pytest.approx(result["tokens_per_s"]) and tokens_per_s > 0
    assert result["accum"] == 2 and result["tokens_per_iter"] == 256
    assert result["tokens_per_s"] == pytest.approx(256 / (result["ms_per_iter"] / 1000))
    assert result["flops_per_token"] == hand_flops_per_token(50)
    assert result["achieved_flops"] == pytest.approx(result["flops_per_token"] * tokens_per_s)
    assert result["peak_flops"] > 0 and result["mfu"] == pytest.approx(result["achieved_flops"] / result["peak_flops"])
    assert set(result["cpu_matmul_flops"]) == {"float32", "bfloat16"}
    assert result["peak_memory_bytes"] > 0 and math.isfinite(result["loss_last"])
    out = capsys.readouterr().out
    assert "ms/iter" in out and "tokens/s" in out and "MFU" in out and "CPU matmul rate measured here" in out


def test_bench_task_from_the_command_line_on_real_data_with_a_trace(tmp_path, data_root):
    proc = launch(["task=bench", *TINY_MODEL, *CPU_FP32, "task.iters=2", "task.warmup=1",
                   "task.synthetic=false", "data.name=tiny_char", "task.profile=true"], cwd=tmp_path)
    assert "ms/iter" in proc.stdout and "MFU" in proc.stdout and "tiny_char data" in proc.stdout
    (out_dir,) = {p.parent for p in (tmp_path / "runs" / "_bench").rglob("bench.json")}
    assert json.loads((out_dir / "bench.json").read_text())["synthetic"] is False
    assert (out_dir / "trace.json").stat().st_size > 0


@pytest.mark.parametrize("T", [1, 17, 64])
def test_cpu_bf16_attention_matches_sdpa(T):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 16, requires_grad=True) for _ in range(3))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref.square().sum().backward()
    ref_grads = [t.grad.clone() for t in (q, k, v)]
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    out = causal_attention(qb, kb, vb)
    out.float().square().sum().backward()
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    for got, want in zip((qb.grad, kb.grad, vb.grad), ref_grads):
        torch.testing.assert_close(got.float(), want, atol=8e-2, rtol=5e-2)


def train_losses(dataset: TokenDataset, dtype: torch.dtype, steps: int) -> np.ndarray:
    """The training step as the loop takes it (AdamW, clipping, autocast), on the real data path."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, vocab_size=dataset.vocab_size))
    opt = make_adamw(model, AdamWConfig(lr=3e-3, weight_decay=0.1, beta1=0.9, beta2=0.99), device_type="cpu")
    rt = Runtime(torch.device("cpu"), dtype)
    batches = Batches(dataset, 32, 8, seed=0, device=torch.device("cpu"))
    losses = []
    for it in range(steps):
        x, y = batches.cpu_batch("train", it)
        with rt.autocast():
            _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return np.array(losses)


def test_bf16_autocast_reaches_the_fp32_loss(data_root):
    dataset = TokenDataset(data_root / "tiny_char")
    fp32, bf16 = (train_losses(dataset, dtype, 150) for dtype in (torch.float32, torch.bfloat16))
    assert fp32[-20:].mean() < 0.6 * fp32[:5].mean()  # it learned something worth comparing
    assert abs(bf16[-20:].mean() - fp32[-20:].mean()) < 0.03 * fp32[-20:].mean()
    smooth = np.ones(10) / 10  # step by step, through training, not only at the end
    assert np.abs(np.convolve(bf16, smooth, "valid") - np.convolve(fp32, smooth, "valid")).max() < 0.1


def test_prefetcher_started_mid_run_yields_the_unbroken_runs_batches(data_root):
    batches = Batches(TokenDataset(data_root / "tiny_char"), 16, 3, seed=7, device=torch.device("cpu"))
    accum, resume_at = 2, 3
    unbroken, resumed = Prefetcher(batches, 0, accum), Prefetcher(batches, resume_at, accum)
    try:
        for it in range(6):
            for m in range(accum):
                x, y = unbroken.get(it, m)
                assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one token
                if it >= resume_at:
                    x2, y2 = resumed.get(it, m)
                    assert torch.equal(x, x2) and torch.equal(y, y2)
    finally:
        unbroken.close()
        resumed.close()


def test_memmap_windows_stay_correct_across_releases(data_root, monkeypatch):
    monkeypatch.setattr(data_mod, "RELEASE_BYTES", 1 << 16)  # release every few windows
    releases = []
    release = data_mod.Split.release
    monkeypatch.setattr(data_mod.Split, "release", lambda self: releases.append(1) or release(self))
    dataset = TokenDataset(data_root / "tiny_char")
    tokens = np.fromfile(data_root / "tiny_char" / "train.bin", dtype=np.uint16)
    split = dataset.splits["train"]
    rng = np.random.default_rng(0)
    for _ in range(50):
        starts = rng.integers(0, len(tokens) - 33, size=4)
        assert np.array_equal(split.windows(starts, 33), np.stack([tokens[i:i + 33] for i in starts]))
    assert len(releases) >= 10


@pytest.mark.slow
def test_compiled_model_does_not_recompile_between_train_and_eval(data_root):
    from torch._dynamo.utils import counters

    from nanogpt.runtime.distributed import Dist
    from nanogpt.runtime.hardware import compile_model
    from nanogpt.training.loop import estimate_loss

    torch._dynamo.reset()
    dataset = TokenDataset(data_root / "tiny_char")
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=dataset.vocab_size))
    compiled, opt = compile_model(model), torch.optim.AdamW(model.parameters())
    rt = Runtime(torch.device("cpu"), torch.float32)
    train_b = Batches(dataset, 32, 4, 0, torch.device("cpu"))
    eval_b = Batches(dataset, 32, 8, 0, torch.device("cpu"))  # eval batches are larger
    graphs = []
    for round_ in range(3):
        for it in range(2):
            _, loss = compiled(*train_b.cpu_batch("train", round_ * 2 + it))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        estimate_loss(compiled, eval_b, 2, rt, Dist())
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] == graphs[1] == graphs[2]  # the first round compiled both; nothing since
