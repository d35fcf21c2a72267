"""μP and CompleteP (model.param, nanogpt/parametrization.py): SP is today's model, μP at its base
shape is SP, each rule reaches the model and the optimizers, the export folds the multipliers,
bad input is refused before any work, and a μP run resumes bit for bit."""
from __future__ import annotations

import re
from pathlib import Path

import gpt2_reference_model as reference
import pytest
import torch
from conftest import TINY, launch, read_metrics

from nanogpt import parametrization
from nanogpt.model import GPT, GPTConfig
from nanogpt.training.optim import AdamWConfig, MuonConfig, make_adamw, make_muon

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=50, block_size=16, dropout=0.0)


def build(seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(**(SHAPE | kw))).eval()


def test_sp_is_the_reference_gpt2_bit_for_bit():
    torch.manual_seed(0)
    ref = reference.GPT(reference.GPTConfig(**SHAPE))
    ours = build(param="sp")
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    x = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    (a, la), (b, lb) = ours(x, x), ref(x, x)
    assert torch.equal(a, b) and torch.equal(la, lb)


@pytest.mark.parametrize("param", ["mup", "completep"])
def test_at_its_base_shape_mup_is_sp(param):
    """Every multiplier is 1 at the base shape: the same weights, the same logits (to rounding:
    sqrt(d) / d is not bitwise 1 / sqrt(d))."""
    sp, mup = build(), build(param=param, base_width=32, base_depth=2)
    for k, v in sp.state_dict().items():
        assert torch.equal(mup.state_dict()[k], v), k
    x = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(mup(x, x)[0], sp(x, x)[0], rtol=1e-6, atol=1e-6)


def test_the_rules_reach_the_model():
    wide = build(n_embd=128, n_head=2, param="mup", base_width=32)  # m = 4
    cfg = wide.config
    assert parametrization.width_mult(cfg) == 4.0
    # hidden init std 0.02 / sqrt(m); the embedding keeps 0.02
    assert wide.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert wide.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert wide.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.01 / 2, rel=0.05)
    assert wide.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    # attention: sqrt(d_base) / d_head = sqrt(16) / 64
    assert wide.transformer.h[0].attn.scale == pytest.approx(4 / 64)
    # the logits are 1/m of an SP model's with the same weights
    sp = GPT(GPTConfig(**(SHAPE | dict(n_embd=128))))
    sp.load_state_dict(wide.state_dict())
    for block in sp.transformer.h:  # SP's 1/sqrt(d) -> μP's; then only the logits differ
        block.attn.scale = 4 / 64
    x = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(wide(x, x)[0], sp.eval()(x, x)[0] / 4, rtol=1e-5, atol=1e-6)


def test_completep_scales_each_residual_branch_by_one_over_the_depth_multiplier():
    deep = build(n_layer=8, param="completep", base_width=32, base_depth=2)  # d = 4
    assert all(block.branch == 0.25 for block in deep.transformer.h)
    # the residual projections keep the base depth's init, 0.02 / sqrt(2 * base_depth)
    assert deep.transformer.h[0].mlp.c_proj.weight.std().item() == pytest.approx(0.01, rel=0.1)


@pytest.mark.parametrize("param", ["sp", "mup", "completep"])
def test_flops_per_token_ignore_the_multipliers(param):
    shape = dict(n_layer=4, n_embd=64, n_head=4)
    assert (build(**shape, param=param, base_width=16, base_depth=2).flops_per_token()
            == build(**shape).flops_per_token())


def groups_by_name(model, optimizer):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: g for g in optimizer.param_groups for p in g["params"]}


def test_adamw_scales_the_hidden_matrices_lr_and_eps():
    lr, eps = 1e-3, 1e-8
    ocfg = AdamWConfig(lr=lr, eps=eps, fused=False)
    mup = build(n_embd=128, param="mup", base_width=32)  # m = 4
    cp = build(n_embd=128, n_layer=8, param="completep", base_width=32, base_depth=2)  # m = 4, d = 4
    for model, eps_hidden in ((mup, eps / 4), (cp, eps / 16)):
        groups = groups_by_name(model, make_adamw(model, ocfg))
        for name in ("transformer.h.0.attn.c_attn.weight", "transformer.h.1.mlp.c_proj.weight"):
            assert groups[name]["lr"] == pytest.approx(lr / 4) and groups[name]["eps"] == pytest.approx(eps_hidden)
        for name in ("transformer.wte.weight", "transformer.wpe.weight", "transformer.h.0.ln_1.weight",
                     "transformer.h.0.attn.c_attn.bias"):
            assert groups[name]["lr"] == lr and groups[name]["eps"] == eps, name
        assert groups["transformer.h.0.ln_1.weight"]["weight_decay"] == 0.0
    # SP: today's two groups, untouched
    sp = build(n_embd=128)
    assert len(make_adamw(sp, ocfg).param_groups) == 2


@pytest.mark.parametrize("adjust,scale", [("original", 1.0), ("match_rms_adamw", 0.5)])
def test_muon_hidden_rate_follows_the_spectral_condition(adjust, scale):
    model = build(n_embd=128, param="mup", base_width=32)  # m = 4
    opt = make_muon(model, MuonConfig(lr=0.02, adjust_lr=adjust, ns_dtype="float32", fused=False))
    assert opt.optimizers["muon"].param_groups[0]["lr"] == pytest.approx(0.02 * scale)
    assert opt.optimizers["muon"].param_groups[0]["lr_scale"] == pytest.approx(scale)


# ----------------------------------------------------------------------------------------------
# export: the multipliers folded into a standard GPT-2

@pytest.mark.parametrize("kw", [dict(param="mup", base_width=32),
                                dict(param="completep", base_width=32, base_depth=1),
                                dict(param="mup", base_width=32, bias=False)])
def test_export_folds_the_multipliers_into_a_standard_gpt2(tmp_path, kw):
    pytest.importorskip("transformers")
    from nanogpt.hf.export import export_hf
    from nanogpt.hf.weights import load_pretrained

    model = build(n_embd=128, n_head=4, block_size=32, vocab_size=100, **kw)
    with torch.no_grad():  # trained-looking biases and gains: a missed fold shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln_" in name:
                p.normal_(0, 0.5)
    x = torch.randint(0, 100, (2, 32), generator=torch.Generator().manual_seed(3))
    want = model(x, x)[0]
    back = load_pretrained(path=export_hf(model, tmp_path / "hf")).eval()
    assert back.config.param == "sp"
    got = back(x, x)[0]
    assert (got - want).abs().max() < 1e-4 * want.abs().max()
    # the multipliers matter here: the unfolded weights in an SP model give other logits
    sp = GPT(GPTConfig(**{**model.config.__dict__, "param": "sp", "base_width": None, "base_depth": None}))
    sp.load_state_dict(model.state_dict())
    assert (sp.eval()(x, x)[0] - want).abs().max() > 1e-2 * want.abs().max()


def test_export_still_refuses_a_modern_option_by_name(tmp_path):
    from nanogpt.errors import UserError
    from nanogpt.hf.export import export_hf

    model = build(param="mup", base_width=16, norm="rmsnorm")
    with pytest.raises(UserError, match=re.escape("the model uses norm='rmsnorm', which a Hugging Face GPT-2")):
        export_hf(model, tmp_path / "hf")
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# bad input: one error line, exit 2, nothing written

@pytest.mark.parametrize("args,message", [
    (["model.param=mup"], "error: invalid model config: param=mup needs model.base_width, the width its "
                          "learning rate was tuned at (e.g. model.base_width=32"),
    (["model.param=completep", "model.base_width=16"],
     "error: invalid model config: param=completep needs model.base_depth"),
    (["model.param=mup", "model.base_width=17"],
     "error: invalid model config: base_width=17 does not divide into n_head=2 heads"),
    (["model.param=mup", "model.base_width=0"],
     "error: invalid model config: base_width=0 does not divide into n_head=2 heads"),
    (["model.param=mu"], "error: invalid model config: unknown param='mu': use sp, mup or completep"),
    (["model=pretrained/gpt2", "model.param=mup", "model.base_width=768"],
     "error: model.param=mup with pretrained weights: GPT-2's weights were trained in the standard"),
])
def test_bad_parametrisation_is_refused_before_any_work(tmp_path, data_root, args, message):
    proc = launch([*TINY, "data.name=tiny_char", *args, "hydra.run.dir=run"], cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(message), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------
# training: resume bit for bit, and refuse another parametrisation by name

RUN = ["optim.decay_iters=4", "optim.warmup_iters=1", "task.eval_interval=2", "optim.lr=3e-3",
       "model.n_embd=64", "model.param=mup", "model.base_width=32"]


def test_a_mup_run_resumes_bit_exactly_and_refuses_sp_or_another_base(tmp_path, data_root):
    from inprocess import train_tiny

    from nanogpt.checkpoint.load import load_run
    from nanogpt.errors import UserError

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train_tiny(straight, *RUN, "task.max_iters=4")
    train_tiny(resumed, *RUN, "task.max_iters=2")
    train_tiny(resumed, *RUN, "task.max_iters=4", "init_from=resume")

    def losses(run):
        return {r["iter"]: r["loss"] for r in read_metrics(run) if r["kind"] == "train"}
    assert losses(straight) == losses(resumed) and sorted(losses(straight)) == [1, 2, 3, 4]
    model, _, _ = load_run(str(straight), "last")
    assert (model.config.param, model.config.base_width) == ("mup", 32)

    before = (resumed / "metrics.jsonl").read_text()
    with pytest.raises(UserError, match=r"another model shape \(param: checkpoint mup vs config sp; "
                                        r"base_width: checkpoint 32 vs config None\)"):
        train_tiny(resumed, *RUN[:-2], "task.max_iters=6", "init_from=resume")
    with pytest.raises(UserError, match=r"another model shape \(base_width: checkpoint 32 vs config 16\)"):
        train_tiny(resumed, *RUN[:-1], "model.base_width=16", "task.max_iters=6", "init_from=resume")
    assert (resumed / "metrics.jsonl").read_text() == before


def test_the_logit_multiplier_comes_before_the_soft_cap_and_keeps_a_zero_head():
    """An untied, zero-initialised head stays zero (the first logits are 0 at every width), and a
    soft-cap squashes the already-scaled logits: c tanh((h W / m) / c) (docs/mup.md)."""
    model = build(n_embd=64, param="mup", base_width=32, tie_embeddings=False, logit_softcap=2.0)  # m = 2
    assert torch.count_nonzero(model.lm_head.weight) == 0
    torch.nn.init.normal_(model.lm_head.weight, std=1.0)
    x = torch.randint(0, 50, (2, 16))
    store = {}
    model.lm_head.register_forward_hook(lambda m, args, out: store.update(raw=out))
    logits, _ = model(x, x)
    torch.testing.assert_close(logits, 2.0 * torch.tanh(store["raw"] / 2.0))
    model.lm_head.register_forward_pre_hook(lambda m, args: store.update(inp=args[0]))
    model.transformer.ln_f.register_forward_hook(lambda m, args, out: store.update(normed=out))
    model(x, x)
    torch.testing.assert_close(store["inp"], store["normed"] / 2)  # the head reads ln_f's output / m


# ----------------------------------------------------------------------------------------------
# FSDP: the per-group rates and eps, the init and the forward multipliers survive sharding

@pytest.mark.slow
@pytest.mark.parametrize("param", ["mup", "completep"])
def test_fsdp_mup_matches_one_process(tmp_path, data_root, param):
    """μP / CompleteP (AdamW) sharded over 2 gloo ranks takes the steps one process takes, to the
    float64 bound of tests/test_fsdp.py: the groups are found by parameter name and shape, which
    FSDP2 keeps (a DTensor is still 2-D, its name unchanged), and the multipliers are the model's."""
    from test_distributed import EXACT, STEP, losses, merged, summary, torchrun

    args = merged(*STEP, "hardware.dtype=float64", "task.max_iters=8", "task.eval_interval=4",
                  "task.eval_iters=2", "model.n_embd=64", "model.n_layer=4", f"model.param={param}",
                  "model.base_width=32", "model.base_depth=2", "optim.lr=1e-2")
    launch([*args, "run=one"], cwd=tmp_path)
    torchrun([*args, "hardware.strategy=fsdp", "run=fsdp"], cwd=tmp_path)
    one, fsdp = tmp_path / "one", tmp_path / "fsdp"
    assert summary(fsdp)["world_size"] == 2 and summary(fsdp)["status"] == "finished"
    a, b = losses(one), losses(fsdp)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for it in a:
        assert abs(a[it] - b[it]) / abs(a[it]) < EXACT, (it, a[it], b[it])
    assert a[8] < a[1] - 0.1  # it learned
    # and the same run as SP takes other steps: the rules acted under FSDP
    launch([*merged(*args, "model.param=sp"), "run=sp"], cwd=tmp_path)
    assert abs(losses(tmp_path / "sp")[8] - a[8]) > 1e-4


# ----------------------------------------------------------------------------------------------
# cooldown branches: a branch of a μP run is μP with the same base; one that changes them is refused

WSD = ["optim.schedule=wsd", "optim.decay_frac=0.25", "optim.warmup_iters=1", "optim.lr=3e-3",
       "optim.min_lr=0", "task.eval_interval=4", "model.n_embd=64", "model.param=mup", "model.base_width=32"]


def test_a_cooldown_branch_of_a_mup_run_keeps_its_parametrisation(tmp_path, data_root):
    from inprocess import train_tiny

    from nanogpt.checkpoint.load import load_run
    from nanogpt.errors import UserError

    parent, branch = tmp_path / "parent", tmp_path / "branch"
    train_tiny(parent, *WSD, "task.max_iters=12", "task.keep_checkpoints=[8]")
    train_tiny(branch, *WSD, "task.max_iters=10", f"task.branch_from={parent}", "task.branch_iter=8")

    def losses(run):
        return {r["iter"]: r["loss"] for r in read_metrics(run) if r["kind"] == "train"}
    assert sorted(losses(branch)) == [9, 10]
    assert losses(branch)[9] == losses(parent)[9]  # the same weights, rates and eps as the parent's step
    model, _, _ = load_run(str(branch), "last")
    assert (model.config.param, model.config.base_width) == ("mup", 32)

    for overrides, message in [
        (WSD[:-2], r"another model shape \(param: checkpoint mup vs config sp; base_width: checkpoint 32 vs config None\)"),
        ([*WSD[:-1], "model.base_width=16"], r"another model shape \(base_width: checkpoint 32 vs config 16\)"),
        ([*WSD[:-2], "model.param=completep", "model.base_width=32", "model.base_depth=1"],
         r"another model shape \(param: checkpoint mup vs config completep; base_depth: checkpoint None vs config 1\)"),
    ]:
        with pytest.raises(UserError, match=message):
            train_tiny(tmp_path / "bad", *overrides, "task.max_iters=10", f"task.branch_from={parent}",
                       "task.branch_iter=8")
        assert not (tmp_path / "bad" / "ckpt").exists() and not (tmp_path / "bad" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------------------------
# scaling fits: a μP sweep over width at one learning rate is collected and fitted like any other

def test_a_mup_width_sweep_at_one_rate_is_collected_and_fitted(tmp_path, data_root):
    """Three widths x two budgets, all μP at one lr (what μP is for: no rate per width). N and
    C are those of SP models of the same shapes: the multipliers cost no parameters or FLOPs."""
    import subprocess
    import sys

    from conftest import REPO
    from inprocess import train_tiny

    from nanogpt.checkpoint.load import load_run
    from nanogpt.scaling.collect import load_runs

    sweep = tmp_path / "sweep"
    for width in (32, 64, 128):
        for iters in (4, 8):
            train_tiny(sweep / f"w{width}_i{iters}", "model.param=mup", "model.base_width=32", "optim.lr=3e-3",
                       f"model.n_embd={width}", f"task.max_iters={iters}", "optim.warmup_iters=1",
                       f"task.eval_interval={iters}")
    runs = {Path(r.run_dir).name: r for r in load_runs([sweep])}
    assert len(runs) == 6 and all(r.status == "finished" for r in runs.values())
    for name, r in runs.items():
        trained = load_run(r.run_dir, "last")[0].config
        sp = GPT(GPTConfig(**{**trained.__dict__, "param": "sp", "base_width": None}))
        assert trained.param == "mup" and trained.n_embd == r.n_embd and r.lr == 3e-3
        assert r.params == sp.num_params(False)
        assert r.C == pytest.approx(r.D * sp.flops_per_token(32)), name
    assert runs["w128_i8"].N > runs["w64_i8"].N > runs["w32_i8"].N
    proc = subprocess.run([sys.executable, "-m", "nanogpt.scaling", "fit", str(sweep), "--bootstrap", "4",
                           "--starts", "4"], capture_output=True, text=True, cwd=REPO, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "approach 3" in proc.stdout.lower(), proc.stdout


# ----------------------------------------------------------------------------------------------
# bench/mup_transfer.py --bracket: only the rates around each optimum, ending with it interior

def load_transfer_bench():
    import importlib.util

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("mup_transfer", REPO / "bench" / "mup_transfer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("start,best", [(4, 1), (4, 4), (2, 6), (1, 0), (6, 7)])
def test_bracket_measures_until_the_optimum_is_interior_or_at_the_grids_end(start, best):
    bench = load_transfer_bench()
    lrs = [2.0 ** -k for k in range(12, 4, -1)]
    measured = []

    def measure(lr):  # a valley at lrs[best], nan past it on the right (a diverged run)
        measured.append(lr)
        i = lrs.index(lr)
        return float("nan") if i > best + 2 else abs(i - best) + 1.0

    bench.bracket(measure, lrs, start)
    got = sorted(lrs.index(lr) for lr in measured)
    assert len(got) == len(set(got))  # each rate once
    # the start and its neighbours, then outward to the optimum's far neighbour (or the grid's end)
    lo, hi = max(0, min(start, best) - 1), min(len(lrs) - 1, max(start, best) + 1)
    assert got == list(range(lo, hi + 1))
