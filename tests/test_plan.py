"""task=plan: the memory plan's counts against what autograd and the allocator really hold on
the CPU, and the task's table and record."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO, launch
from nanogpt.training import memory_plan as plan
from nanogpt.model import MLPS, NORMS, POS_EMBS, GPTConfig

sys.path.insert(0, str(REPO / "bench"))
import memory_plan  # bench/memory_plan.py: what a forward keeps, tensor by tensor

GPT2_XL = GPTConfig(block_size=1024, vocab_size=50304, n_layer=48, n_head=25, n_embd=1600)

# The count is exact on the CPU (torch 2.13): 1% leaves room for a small tensor another torch
# version may add, and catches any tensor the width of the residual stream (2% of a block or more).
SAVED_TOLERANCE = 0.01
MODES = plan.CHECKPOINTING
DTYPES = ("float32", "bfloat16")


def assert_plan_counts_what_the_cpu_keeps(config: GPTConfig, dtype: str, mode: str) -> None:
    measured = memory_plan.saved_per_token(config, dtype, mode)
    counted = {"block": plan.layer_saved(config, dtype, mode, device="cpu"),
               "head": plan.head_saved(config, dtype, device="cpu")}
    assert measured == pytest.approx(counted, rel=SAVED_TOLERANCE), (config, dtype, mode)


@pytest.mark.parametrize("model", ["baby", "modern_baby", "modern_baby model.mlp_ratio=2.5"])
def test_the_plan_counts_what_each_block_keeps_for_the_backward(model):
    """model=baby is GPT-2's block (LayerNorm, GELU); modern_baby has RMSNorm, QK-norm, ReLU²,
    rotary positions, an untied head and soft-capped logits: bytes per token per block and for
    the head, in fp32 and under bf16 autocast, with each activation checkpointing mode."""
    name, *overrides = model.split()
    config = memory_plan.model_config(name, [o.removeprefix("model.") for o in overrides])
    for dtype in DTYPES:
        for mode in MODES:
            assert_plan_counts_what_the_cpu_keeps(config, dtype, mode)


# every GPTConfig field, with the values to measure the plan with (each on its own, from GPT-2's
# block): a new field, or a new choice of norm, MLP or position embedding, is measured here
OPTION_VALUES = {
    "block_size": [640], "vocab_size": [96], "n_layer": [3], "n_head": [8], "n_embd": [96],
    "dropout": [0.1], "bias": [False], "pos_emb": POS_EMBS, "rope_base": [500.0], "norm": NORMS,
    "qk_norm": [True], "mlp": MLPS, "mlp_ratio": [2.5], "tie_embeddings": [False],
    "logit_softcap": [15.0], "doc_mask": [True],
    # fields that need each other: a dict of the fields to set together
    "param": [dict(param="mup", base_width=32), dict(param="completep", base_width=32, base_depth=2)],
    "base_width": [dict(param="mup", base_width=16)], "base_depth": [dict(param="completep", base_width=32, base_depth=4)],
}
SMALL_GPT2 = GPTConfig(block_size=memory_plan.SAVED_TOKENS, vocab_size=128, n_layer=1, n_head=4, n_embd=64)


def test_every_model_option_is_measured_against_the_plan():
    fields = {f.name for f in dataclasses.fields(GPTConfig)}
    assert set(OPTION_VALUES) == fields, (
        "a new GPTConfig field: give it values in tests/test_plan.py's OPTION_VALUES, so that the "
        "memory plan (nanogpt/training/memory_plan.py) is measured with it")


@pytest.mark.parametrize("field,value", [(f, v) for f, values in OPTION_VALUES.items() for v in values])
def test_the_plan_counts_what_each_model_option_keeps(field, value):
    config = dataclasses.replace(SMALL_GPT2, **(value if isinstance(value, dict) else {field: value}))
    for dtype in DTYPES:
        for mode in ("none", "selective"):  # block keeps the block's input, whatever the block
            assert_plan_counts_what_the_cpu_keeps(config, dtype, mode)


def test_a_norm_the_plan_does_not_know_is_refused_by_name(monkeypatch):
    monkeypatch.delitem(plan.NORM_SAVES, plan.RMSNorm)  # as a new norm class would be
    with pytest.raises(NotImplementedError, match="does not know what RMSNorm keeps for the backward "
                                                  "pass: add it to nanogpt/training/memory_plan.py's NORM_SAVES"):
        plan.plan(plan.Setup(dataclasses.replace(SMALL_GPT2, norm="rmsnorm"), 1))


def test_the_cuda_autocast_the_plan_assumes_is_torchs():
    """Where the plan's CUDA figures differ from the CPU's measured ones: CUDA's autocast runs pow
    (ReLU²'s square) and rms_norm (QK-norm) in fp32, the CPU's does not."""
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    for op in ("aten::pow.Tensor_Scalar", "aten::rms_norm"):
        assert has(op, "AutocastCUDA") and not has(op, "AutocastCPU"), op
    modern = dataclasses.replace(SMALL_GPT2, mlp="relu2", qk_norm=True)
    extra = plan.layer_saved(modern, "bfloat16", "none") - plan.layer_saved(modern, "bfloat16", "none", "cpu")
    # ReLU²'s fp32 copy for square (4 bytes x hidden); QK-norm's fp32 output (2 more bytes x q, k)
    assert extra == 4 * modern.mlp_hidden + 2 * 2 * modern.n_embd


MODERN = ["norm=rmsnorm", "qk_norm=true", "mlp=relu2", "pos_emb=rope", "bias=false", "tie_embeddings=false",
          "logit_softcap=15", "mlp_ratio=3"]


def measured_activations(options=()) -> dict[str, dict]:
    """bench/memory_plan.py, each mode in a fresh process (its allocator set so that resident
    memory is the live tensors' memory), for a 4-layer model of width 256, 512 tokens."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "memory_plan.py"), "activations", "--json",
                           *(f"--set={o}" for o in options)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["mode"]: r for r in results}


@pytest.mark.slow
@pytest.mark.parametrize("options", [(), MODERN], ids=["gpt2", "modern"])
def test_activation_plan_matches_what_the_cpu_holds(options):
    r = measured_activations(options)
    assert sorted(r) == ["block", "none", "selective"]
    for mode in r.values():
        # what the forward keeps is counted op by op: within 3% (allocation rounding, small tensors)
        assert mode["measured_kept"] == pytest.approx(mode["plan_kept"], rel=0.03), mode
        # the peak adds the backward's working memory, estimated per block: within 3% (measured: 0.5%)
        assert mode["measured_peak"] == pytest.approx(mode["plan_peak"], rel=0.03), mode
    kept = {m: r[m]["measured_kept"] for m in r}
    assert kept["block"] < 0.25 * kept["none"] and kept["selective"] < 0.8 * kept["none"]
    assert r["block"]["measured_peak"] < 0.5 * r["none"]["measured_peak"]


def test_fsdp_divides_the_model_states_by_the_ranks():
    counts = plan.Counts.of(GPT2_XL)
    assert counts.total == pytest.approx(1.558e9, rel=0.002)  # GPT-2 XL, padded vocabulary
    ddp = plan.plan(plan.Setup(GPT2_XL, 4, 8, "ddp", "block", accumulation=False))
    fsdp = plan.plan(plan.Setup(GPT2_XL, 4, 8, "fsdp", "block", accumulation=False))
    assert ddp["optimizer"] == 8 * counts.total and fsdp["optimizer"] == counts.total
    assert fsdp["parameters"] < ddp["parameters"] / 3 and fsdp["gradients"] < ddp["gradients"] / 4
    assert fsdp["activations"] == ddp["activations"]  # sharding the model shards no activation
    # accumulating whole gradients costs 4 bytes per parameter (and 2 for the gathered bf16 weights)
    whole = plan.plan(plan.Setup(GPT2_XL, 4, 8, "fsdp", "block", accumulation=True))
    assert whole["gradients"] == pytest.approx(counts.total * (4 / 8 + 4))


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_the_optimizer_state_is_what_the_optimizer_really_holds(optimizer):
    """task=plan counted AdamW's two moments whatever optim= said: Muon keeps one momentum on the
    hidden matrices. The plan's term equals the bytes of the state tensors after a real step."""
    from nanogpt.model import GPT
    from nanogpt.training.optim import OPTIMIZERS, AdamWConfig, MuonConfig

    config = GPTConfig(block_size=32, vocab_size=96, n_layer=2, n_head=2, n_embd=64, tie_embeddings=False)
    model = GPT(config)
    ocfg = AdamWConfig() if optimizer == "adamw" else MuonConfig(ns_dtype="float32")
    optimizer_ = OPTIMIZERS[optimizer](model, ocfg, "cpu")
    model(torch.randint(0, 96, (2, 32)), torch.randint(0, 96, (2, 32)))[1].backward()
    optimizer_.step()
    held = sum(t.numel() * t.element_size() for opt in getattr(optimizer_, "optimizers", {"": optimizer_}).values()
               for state in opt.state.values() for t in state.values() if torch.is_tensor(t) and t.dim() > 0)
    counts = plan.Counts.of(config)
    assert plan.plan(plan.Setup(config, 1, optimizer=optimizer))["optimizer"] == held
    assert (counts.muon > 0.5 * counts.total) and (optimizer == "adamw") == (held == 8 * counts.total)
    if optimizer == "muon":  # under FSDP, each rank's share, and the step's whole matrices
        fsdp = plan.plan(plan.Setup(config, 1, 4, "fsdp", "none", optimizer="muon"))
        assert fsdp["optimizer"] == held / 4


def test_plan_task_prints_the_table_and_records_it(tmp_path):
    proc = launch(["task=plan", "model=gpt2_1558m", "hardware=gpu_node", "task.gpu_memory_gb=40"], cwd=tmp_path)
    assert "1558M parameters" in proc.stdout and "fits 40 GB" in proc.stdout
    [out] = (tmp_path / "runs" / "_plan").iterdir()
    record = json.loads((out / "plan.json").read_text())
    rows = {(r["strategy"], r["fsdp_accumulation"], r["activation_checkpointing"]): r for r in record["rows"]}
    assert record["world_size"] == 8 and record["micro_batch_size"] == 12 and len(rows) == 9
    assert not rows[("ddp", "unsharded", "none")]["fits"]  # GPT-2 XL under DDP: no
    assert rows[("fsdp", "unsharded", "block")]["fits"]  # sharded and checkpointed: yes
    assert all(r["fits"] == (r["total"] <= 40) for r in rows.values())


def test_plan_task_refuses_a_bad_value_before_any_work(tmp_path):
    proc = launch(["task=plan", "task.gpu_memory_gb=0"], cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "task.gpu_memory_gb=0" in proc.stderr
    assert not (tmp_path / "runs").exists()
