"""Each model option, and Muon with WSD, through the real training loop in tiny form: it trains,
a run stopped half way resumes to the very numbers of one that never stopped, and its checkpoint
samples with the KV cache exactly as without."""
from __future__ import annotations

import pytest
import torch

from conftest import read_metrics
from inprocess import train_tiny
from nanogpt.checkpoint.load import load_run

# the schedule does not depend on max_iters (decay_iters fixed): a run of 2 resumed to 4 must
# equal a run of 4
RUN = ["optim.decay_iters=4", "optim.warmup_iters=1", "task.eval_interval=2", "optim.lr=3e-3"]
VARIANTS = {
    "rope": ["model.pos_emb=rope"],
    "rmsnorm": ["model.norm=rmsnorm"],
    "qk_norm": ["model.qk_norm=true"],
    "relu2": ["model.mlp=relu2", "model.mlp_ratio=3"],
    "untied": ["model.tie_embeddings=false"],
    "softcap": ["model.logit_softcap=10"],
    "no_bias": ["model.bias=false"],
    "modern+muon+wsd": ["model.pos_emb=rope", "model.norm=rmsnorm", "model.qk_norm=true",
                        "model.mlp=relu2", "model.tie_embeddings=false", "model.logit_softcap=15",
                        "model.bias=false", "optim=muon", "optim.lr=0.02", "optim.schedule=wsd",
                        "optim.decay_frac=0.5", "optim.cooldown=1-sqrt"],
    # Newton-Schulz in float32 (Float32Muon: what optim.ns_dtype=auto picks on CPUs without bf16)
    "muon_float32_ns": ["model.pos_emb=rope", "model.qk_norm=true", "optim=muon", "optim.lr=0.02",
                        "optim.ns_dtype=float32"],
}


def train_losses(run_dir) -> dict[int, float]:
    return {r["iter"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


@pytest.mark.parametrize("name", VARIANTS)
def test_option_trains_resumes_bit_exactly_and_samples_with_the_cache(tmp_path, data_root, name):
    args = [*RUN, *VARIANTS[name]]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    done = train_tiny(straight, *args, "task.max_iters=4")
    train_tiny(resumed, *args, "task.max_iters=2")
    again = train_tiny(resumed, *args, "task.max_iters=4", "init_from=resume")
    a, b = train_losses(straight), train_losses(resumed)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    assert a == b  # bit for bit
    assert done["final_val_loss"] == again["final_val_loss"]
    assert a[4] < a[1]  # it learned

    model, ckpt, _ = load_run(str(straight), "last")
    options = dict(arg[len("model."):].split("=") for arg in VARIANTS[name] if arg.startswith("model."))
    for key, value in options.items():  # the options reached the model
        got = getattr(model.config, key)
        assert str(got).lower() == value if isinstance(got, (str, bool)) else got == float(value)
    assert ckpt["config"]["optim"]["name"] == ("muon" if "optim=muon" in args else "adamw")
    prompt = torch.zeros(2, 1, dtype=torch.long)
    outs = [model.generate(prompt, 20, top_k=10, use_cache=c, generator=torch.Generator().manual_seed(5))
            for c in (True, False)]
    assert torch.equal(*outs)


def test_resuming_with_another_optimizer_is_refused_before_any_step(tmp_path, data_root):
    from nanogpt.errors import UserError

    run = tmp_path / "run"
    train_tiny(run, *RUN, "task.max_iters=2")
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match="trained with optim=adamw, and this run asks for optim=muon"):
        train_tiny(run, *RUN, "task.max_iters=4", "optim=muon", "init_from=resume")
    with pytest.raises(UserError, match=r"another model shape \(pos_emb: checkpoint learned vs config rope"):
        train_tiny(run, *RUN, "task.max_iters=4", "model.pos_emb=rope", "init_from=resume")
    assert (run / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("args,message", [
    (["model.pos_emb=rope", "model.n_embd=30", "model.n_head=2"],
     "error: invalid model config: pos_emb=rope needs an even head size, but n_embd / n_head = 30 / 2 = 15"),
    (["model.norm=batchnorm"], "error: invalid model config: unknown norm='batchnorm': use layernorm or rmsnorm"),
    (["model.logit_softcap=-1"], "error: invalid model config: logit_softcap must be null (off) or > 0, got -1.0"),
    (["optim=muon", "optim.adjust_lr=moonshot"], "error: unknown optim.adjust_lr='moonshot': use original or match_rms_adamw"),
    (["optim.schedule=wsd", "optim.cooldown=sqrt"], "error: unknown optim.cooldown='sqrt': use linear, cosine or 1-sqrt"),
    (["optim.schedule=wsd", "optim.decay_frac=0"], "error: optim.decay_frac=0.0 is out of range: it must be in (0, 1]"),
    (["init_from=pretrained", "task.branch_from=runs/x", "task.branch_iter=2"],
     "error: init_from=pretrained and task.branch_from both say where the weights come from"),
])
def test_nonsense_combinations_are_refused_before_any_work(tmp_path, data_root, args, message):
    from conftest import TINY, launch

    proc = launch([*TINY, "data.name=tiny_char", *args, "hydra.run.dir=run"], cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()
