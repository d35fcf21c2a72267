"""Muon under FSDP: each hidden matrix's update is gathered whole on one owner rank, orthogonalised
there and its rows scattered back (nanogpt.training.optim.ShardedMuon over
nanogpt.runtime.fsdp.gather_whole / scatter_rows); the momentum stays sharded.

The bar is torch.optim.Muon's own numbers: the sharded step on DTensors equals torch's step on
the whole tensors bit for bit (the gathers and scatters move bits, and every other operation is
elementwise), and a 2-rank FSDP run equals one process in float64 up to the order of FSDP's
gradient sums (tests/test_fsdp.py's bound EXACT), resuming across world sizes both ways.
"""
from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import TINY, launch, write_char_dataset
from test_distributed import merged, summary, torchrun
from test_fsdp import ARGS, agree, losses

SHAPES = [(5, 3), (8, 8), (1, 4), (7, 16), (96, 32), (129, 32), (32, 129)]  # tall, wide, fewer rows than ranks


def test_row_counts_are_torch_chunks():
    """The rows each rank holds, as FSDP2 and DTensor's Shard(0) split them (torch.chunk)."""
    from nanogpt.runtime.fsdp import row_counts

    for rows in range(1, 14):
        for world in range(1, 6):
            chunks = [len(c) for c in torch.arange(rows).chunk(world)]
            assert row_counts(rows, world) == chunks + [0] * (world - len(chunks)), (rows, world)


def test_owners_share_the_newton_schulz_work():
    """A 12-layer GPT's hidden matrices over 4 ranks: every rank owns some, the loads within the
    largest matrix's cost of each other; one rank owns all; the same answer every call."""
    from nanogpt.runtime.fsdp import owners_by_cost

    d = 768
    shapes = [(3 * d, d), (d, d), (4 * d, d), (d, 4 * d)] * 12
    owners = owners_by_cost(shapes, 4)
    assert owners == owners_by_cost(shapes, 4) and set(owners) == {0, 1, 2, 3}
    cost = [min(s) ** 2 * max(s) for s in shapes]
    loads = [sum(c for c, o in zip(cost, owners) if o == r) for r in range(4)]
    assert max(loads) - min(loads) <= max(cost)
    assert owners_by_cost(shapes, 1) == [0] * len(shapes)


def _steps(opt, params, grads):
    for g in grads:
        for p, gi in zip(params, g):
            p.grad = gi.clone()
        opt.step()


@pytest.mark.parametrize("ns_dtype", [torch.bfloat16, torch.float32])
def test_sharded_muon_on_whole_tensors_takes_torchs_step(ns_dtype):
    """One process (plain tensors): ShardedMuon is torch.optim.Muon (bf16 Newton-Schulz) or
    Float32Muon, bit for bit over three steps, with the same state dict."""
    from nanogpt.training.optim import Float32Muon, ShardedMuon

    torch.manual_seed(0)
    start = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    grads = [[torch.randn(s, dtype=torch.float64) for s in SHAPES] for _ in range(3)]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, ns_steps=5, adjust_lr_fn="original")
    ref = [torch.nn.Parameter(t.clone()) for t in start]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    reference = (torch.optim.Muon if ns_dtype == torch.bfloat16 else Float32Muon)(ref, **kw)
    sharded = ShardedMuon(ours, ns_dtype=ns_dtype, **kw)
    _steps(reference, ref, grads)
    _steps(sharded, ours, grads)
    assert all(torch.equal(a, b) for a, b in zip(ref, ours))
    assert sharded.state_dict()["param_groups"] == reference.state_dict()["param_groups"]
    assert all(torch.equal(reference.state[a]["momentum_buffer"], sharded.state[b]["momentum_buffer"])
               for a, b in zip(ref, ours))


RANKS_SCRIPT = """
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from nanogpt.runtime.fsdp import row_counts
from nanogpt.training.optim import Float32Muon, ShardedMuon

dist.init_process_group("gloo")
world, rank = dist.get_world_size(), dist.get_rank()
mesh = init_device_mesh("cpu", (world,))
torch.manual_seed(0)  # the same tensors on every rank
shapes = SHAPES
start = [torch.randn(s, dtype=torch.float64) for s in shapes]
grads = [[torch.randn(s, dtype=torch.float64) for s in shapes] for _ in range(4)]
kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True, ns_steps=5, adjust_lr_fn="original")
for ns_dtype, cls in ((torch.bfloat16, torch.optim.Muon), (torch.float32, Float32Muon)):
    ref = [torch.nn.Parameter(t.clone()) for t in start]
    ours = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, [Shard(0)])) for t in start]
    a, b = cls(ref, **kw), ShardedMuon(ours, ns_dtype=ns_dtype, **kw)
    for g in grads:
        for p, q, gi in zip(ref, ours, g):
            p.grad, q.grad = gi.clone(), distribute_tensor(gi.clone(), mesh, [Shard(0)])
        a.step()
        b.step()
        diff = max((p - q.full_tensor()).abs().max().item() for p, q in zip(ref, ours))
        assert diff == 0.0, (ns_dtype, diff)
    for p, q in zip(ref, ours):  # the momentum stays sharded: this rank's rows only
        buf = b.state[q]["momentum_buffer"]
        assert buf.to_local().shape[0] == row_counts(p.shape[0], world)[rank]
        assert torch.equal(buf.full_tensor(), a.state[p]["momentum_buffer"])
if rank == 0:
    print("bit-exact on", world, "ranks")
dist.destroy_process_group()
"""


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_take_torchs_muon_step_on_uneven_row_shards(tmp_path, world):
    """DTensors sharded by rows over 2 and 3 gloo ranks (uneven splits, a rank with no rows, tall
    matrices whose orthogonalised update is a transposed view): four steps of ShardedMuon equal
    torch's Muon (and Float32Muon) on the whole tensors exactly, the momentum sharded throughout."""
    from conftest import REPO

    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT.replace("SHAPES", repr(SHAPES)))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={world}", str(script)], capture_output=True, text=True,
                          timeout=180, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert f"bit-exact on {world} ranks" in proc.stdout


def test_muon_with_fsdp_is_no_longer_refused(tmp_path, data_root):
    """optim=muon hardware.strategy=fsdp (refused before) trains; on one process its Muon and AdamW
    states are saved in the sharded format, one DCP save holding both."""
    import torch.distributed.checkpoint as dcp

    launch([*TINY, "optim=muon", "hardware.strategy=fsdp", "task.max_iters=2", "task.eval_interval=2",
            "run=r"], cwd=tmp_path)
    assert summary(tmp_path / "r")["status"] == "finished"
    meta = dcp.FileSystemReader((tmp_path / "r" / "ckpt" / "last.dcp").resolve()).read_metadata()
    keys = set(meta.state_dict_metadata)
    assert "optim.state.transformer.h.0.mlp.c_fc.weight.momentum_buffer" in keys
    assert "optim.state.transformer.wte.weight.exp_avg" in keys


# ---- end to end: 2 ranks against one process, and resuming across world sizes

# the modern model (RoPE, RMSNorm, QK-norm, ReLU^2, untied head, soft-capped logits) with Muon;
# mlp_ratio 4.03: the MLP's 129 rows split unevenly (65 + 64); test_fsdp's ARGS: float64,
# 4 micro-batches a step (2 per rank), gradients clipped at 0.1, eval at 6 and 12
MUON = merged(*ARGS, "optim=muon", "optim.lr=0.02", "optim.warmup_iters=2", "optim.schedule=wsd",
              "model.pos_emb=rope", "model.norm=rmsnorm", "model.qk_norm=true", "model.mlp=relu2",
              "model.mlp_ratio=4.03", "model.tie_embeddings=false", "model.logit_softcap=15")
FSDP = "hardware.strategy=fsdp"


@pytest.fixture(scope="module")
def muon_runs(tmp_path_factory):
    """One process, plain Muon (12 steps); FSDP on 2 ranks (12 steps); FSDP on 2 ranks stopped at 6
    (reduce-scatter every micro-batch) and FSDP on one process stopped at 6."""
    root = tmp_path_factory.mktemp("muon_fsdp")
    write_char_dataset(root / "data")
    env = {"NANOGPT_DATA_ROOT": str(root / "data")}
    launch([*MUON, "task.max_iters=12", "run=one"], cwd=root, env=env)
    torchrun([*MUON, "task.max_iters=12", FSDP, "run=whole"], cwd=root, env=env)
    torchrun([*MUON, "task.max_iters=6", FSDP, "hardware.fsdp_accumulation=sharded", "run=part_on_two"],
             cwd=root, env=env)
    launch([*MUON, "task.max_iters=6", FSDP, "run=part_on_one"], cwd=root, env=env)
    return root, env


def max_weight_difference(a, b) -> float:
    """The largest |difference| between two runs' final weights (ckpt/last.pt, consolidated)."""
    from nanogpt.checkpoint import single

    wa, wb = single.load(a / "ckpt" / "last.pt")["model"], single.load(b / "ckpt" / "last.pt")["model"]
    assert wa.keys() == wb.keys()
    return max((wa[k] - wb[k]).abs().max().item() for k in wa)


@pytest.mark.slow
def test_fsdp_muon_takes_the_steps_one_process_takes(muon_runs):
    """12 Muon steps with accumulation and clipping: FSDP on 2 ranks (each matrix orthogonalised by
    its owner) equals torch.optim.Muon in one process, losses to EXACT and weights to 1e-12."""
    root, _ = muon_runs
    one, whole = root / "one", root / "whole"
    assert summary(whole)["world_size"] == 2
    agree(losses(one), losses(whole), range(1, 13))
    agree(losses(one, "eval", "val_loss"), losses(whole, "eval", "val_loss"), [0, 6, 12])
    diff = max_weight_difference(one, whole)
    print(f"max |weight difference| after 12 steps: {diff:.1e}; "
          f"max |loss difference|: {max(abs(losses(one)[i] - losses(whole)[i]) for i in range(1, 13)):.1e}")
    assert diff < 1e-12
    assert losses(one)[12] < losses(one)[1] - 0.3  # it learned: not two flat lines


@pytest.mark.slow
def test_each_rank_saves_half_of_every_momentum_buffer(muon_runs):
    """The momentum is sharded like the weights (dim 0 split in two, 129 rows as 65 + 64): a
    save's optimizer state is 1/world per rank, and DCP reshards it for another world size."""
    import torch.distributed.checkpoint as dcp

    save = (muon_runs[0] / "part_on_two" / "ckpt" / "last.dcp").resolve()
    meta = dcp.FileSystemReader(save).read_metadata().state_dict_metadata
    buffers = {k: m for k, m in meta.items() if k.endswith(".momentum_buffer")}
    assert len(buffers) == 2 * 4  # 2 layers x (c_attn, attn c_proj, c_fc, mlp c_proj)
    assert meta["optim.state.transformer.h.0.mlp.c_fc.weight.momentum_buffer"].size[0] == 129
    for name, m in buffers.items():
        rows = m.size[0]
        assert [c.sizes[0] for c in m.chunks] == [math.ceil(rows / 2), rows // 2], name


@pytest.mark.slow
def test_muon_runs_resume_across_world_sizes(muon_runs):
    """Saved at 6 on 2 ranks, resumed on 1 process; saved at 6 on one process, resumed on 2 ranks:
    both end where the run that never stopped ends (losses to EXACT, weights to 1e-12)."""
    root, env = muon_runs
    resume = ["init_from=resume", "task.max_iters=12", FSDP]
    shutil.copytree(root / "part_on_two", root / "two_then_one", symlinks=True)
    shutil.copytree(root / "part_on_one", root / "one_then_two", symlinks=True)
    launch([*MUON, *resume, "run=two_then_one"], cwd=root, env=env)
    torchrun([*MUON, *resume, "run=one_then_two"], cwd=root, env=env)
    one = root / "one"
    for name in ("two_then_one", "one_then_two"):
        run = root / name
        assert summary(run)["status"] == "finished" and summary(run)["iters"] == 12
        agree(losses(one), losses(run), range(1, 13))
        agree(losses(one, "eval", "val_loss"), losses(run, "eval", "val_loss"), [12])
        diff = max_weight_difference(one, run)
        print(f"{name}: max |weight difference| at 12: {diff:.1e}")
        assert diff < 1e-12, name


@pytest.mark.slow
def test_resuming_a_sharded_muon_run_with_adamw_is_refused_before_any_work(muon_runs):
    """Reachable now that Muon runs sharded: the save holds Muon's momentum, not AdamW's moments."""
    from test_fsdp import ckpt_tree

    root, env = muon_runs
    shutil.copytree(root / "part_on_two", root / "to_adamw", symlinks=True)
    before = ckpt_tree(root / "to_adamw")
    proc = launch([*merged(*MUON, "optim=adamw"), "init_from=resume", "task.max_iters=12", FSDP, "run=to_adamw"],
                  cwd=root, env=env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "was trained with optim=muon, and this run asks for optim=adamw: its optimizer state cannot " \
           "carry over. Use optim=muon, or a new run directory" in proc.stderr
    assert ckpt_tree(root / "to_adamw") == before
