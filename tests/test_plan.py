"""task=plan: the memory plan's counts against what autograd and the allocator really hold on
the CPU, and the task's table and record."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, launch
from nanogpt import plan
from nanogpt.model import GPTConfig

GPT2_XL = GPTConfig(block_size=1024, vocab_size=50304, n_layer=48, n_head=25, n_embd=1600)


def measured_activations() -> dict[str, dict]:
    """bench/memory_plan.py, each mode in a fresh process (its allocator set so that resident
    memory is the live tensors' memory), for a 4-layer model of width 256, 512 tokens."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "memory_plan.py"), "activations", "--json"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["mode"]: r for r in results}


@pytest.mark.slow
def test_activation_plan_matches_what_the_cpu_holds():
    r = measured_activations()
    assert sorted(r) == ["block", "none", "selective"]
    for mode in r.values():
        # what the forward keeps is counted op by op: within 3% (allocation rounding, small tensors)
        assert mode["measured_kept"] == pytest.approx(mode["plan_kept"], rel=0.03), mode
        # the peak adds the backward's working memory, estimated per block: within 12%
        assert mode["measured_peak"] == pytest.approx(mode["plan_peak"], rel=0.12), mode
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
