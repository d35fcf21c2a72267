"""optim=muon: torch.optim.Muon on the hidden matrices, AdamW on the rest, each group its own
rate and weight decay through the schedule; stepping, GradScaler and state dicts as one."""
import pytest
import torch

from nanogpt.training.optim import MuonConfig
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig
from nanogpt.training.optim import Optimizers, check_resumable, make_muon, muon_groups, set_lr
from nanogpt.training.schedule import Schedule

OCFG = MuonConfig(lr=0.02, embed_lr=0.01, head_lr=0.004, scalar_lr=0.005, weight_decay=0.1,
                  adamw_weight_decay=0.01, warmup_iters=2)


def model_of(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(**(dict(n_layer=2, n_head=2, n_embd=32, vocab_size=40, block_size=16) | kw)))


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 40, (4, 16), generator=g)
    return x, torch.roll(x, -1, 1)


def step(model, opt, seed):
    x, y = batch(seed)
    _, loss = model(x, y)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


@pytest.mark.parametrize("kw", [dict(), dict(tie_embeddings=False, pos_emb="rope", bias=False, norm="rmsnorm", qk_norm=True)])
def test_every_parameter_in_exactly_one_group_with_its_own_rate_and_decay(kw):
    model = model_of(**kw)
    hidden, groups = muon_groups(model, OCFG)
    names = {id(p): n for n, p in model.named_parameters()}
    hidden_names = sorted(names[id(p)] for p in hidden)
    assert hidden_names == sorted(f"transformer.h.{i}.{m}.weight" for i in range(2)
                                  for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    seen = [id(p) for p in hidden] + [id(p) for g in groups for p in g["params"]]
    assert sorted(seen) == sorted(names) and len(seen) == len(set(seen))
    by_rate = {round(g["lr_scale"] * OCFG.lr, 6): g for g in groups}
    embed = by_rate[0.01]
    assert {names[id(p)] for p in embed["params"]} == (
        {"transformer.wte.weight"} | ({"transformer.wpe.weight"} if not kw else set()))
    assert embed["weight_decay"] == 0.01
    if kw:  # an untied head: its own rate; a tied one is the embedding
        assert [names[id(p)] for p in by_rate[0.004]["params"]] == ["lm_head.weight"]
        assert by_rate[0.004]["weight_decay"] == 0.01
    else:
        assert 0.004 not in by_rate
    scalars = by_rate[0.005]
    assert scalars["weight_decay"] == 0.0 and all(p.dim() == 1 for p in scalars["params"])


def test_schedule_sets_each_groups_rate_and_muon_its_decay():
    model = model_of(tie_embeddings=False)
    opt = make_muon(model, OCFG, "cpu")
    muon, adamw = opt.optimizers["muon"], opt.optimizers["adamw"]
    # the rates hold before the schedule first sets them
    assert sorted(g["lr"] for g in opt.param_groups) == pytest.approx([0.004, 0.005, 0.01, 0.02])
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    assert muon.param_groups[0]["weight_decay"] == 0.1 and muon.param_groups[0]["momentum"] == 0.95
    schedule = Schedule(OCFG, max_iters=20)
    for it in (0, 1, 10, 20):
        set_lr(opt, schedule(it))
        rates = sorted(g["lr"] for g in opt.param_groups)
        expected = sorted(schedule(it) * r / 0.02 for r in (0.02, 0.01, 0.004, 0.005))
        assert rates == pytest.approx(expected)
    assert schedule(20) == pytest.approx(0.002)  # min_lr = lr / 10 for every group alike


def test_muon_update_of_a_matrix_is_orthogonalised():
    model = model_of()
    ocfg = MuonConfig(lr=0.02, weight_decay=0.0, momentum=0.0, nesterov=False)
    opt = make_muon(model, ocfg, "cpu")
    w = model.transformer.h[0].mlp.c_fc.weight  # (128, 32): Keller's scale sqrt(128 / 32) = 2
    before = w.detach().clone()
    x, y = batch()
    model(x, y)[1].backward()
    g = torch.linalg.svdvals(w.grad.double())
    opt.step()
    s = torch.linalg.svdvals(((before - w.detach()) / (0.02 * 2)).double())
    # five Newton-Schulz steps (in bf16) pull the singular values towards 1 (Keller: ~U(0.5, 1.5))
    assert ((s > 0.5) & (s < 1.5)).float().mean() >= 0.9, s
    assert g.max() / g.median() > 2 * s.max() / s.median(), (g, s)


def test_state_dict_round_trip_resumes_bit_exactly():
    """Train 6 steps; vs 3 steps, save, a new model and optimizer loaded, 3 more."""
    def fresh():
        model = model_of(tie_embeddings=False)
        return model, make_muon(model, OCFG, "cpu")

    model, opt = fresh()
    straight = [step(model, opt, s) for s in range(6)]
    model, opt = fresh()
    first = [step(model, opt, s) for s in range(3)]
    saved = {"model": model.state_dict(), "optimizer": opt.state_dict()}
    model, opt = fresh()
    model.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    assert first + [step(model, opt, s) for s in range(3, 6)] == straight
    assert step(model, opt, 0) < straight[0]  # it learned


def test_grad_scaler_unscales_and_steps_both_optimizers():
    model = model_of()
    opt = make_muon(model, OCFG, "cpu")
    x, y = batch()
    model(x, y)[1].backward()
    expected = [p.grad.clone() for p in model.parameters()]
    opt.zero_grad()
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    scaler.scale(model(x, y)[1]).backward()
    scaler.unscale_(opt)  # every group of both optimizers: the loss's own gradients again
    assert all(torch.allclose(g, p.grad, rtol=1e-4, atol=1e-8) for g, p in zip(expected, model.parameters()))
    scaler.step(opt)
    scaler.update()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_a_model_without_hidden_matrices_is_refused():
    class Bigram(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = torch.nn.Embedding(10, 8)
            self.lm_head = torch.nn.Linear(8, 10, bias=False)

    with pytest.raises(UserError, match="optim=muon needs 2-D hidden matrices .* has none: use optim=adamw"):
        make_muon(Bigram(), OCFG, "cpu")


def test_an_optimizer_state_of_another_optimizer_is_refused():
    opt = make_muon(model_of(), OCFG, "cpu")
    adamw_state = torch.optim.AdamW(model_of().parameters()).state_dict()
    with pytest.raises(UserError, match="not muon \\+ adamw: resume with the optim it was trained with"):
        opt.load_state_dict(adamw_state)
    with pytest.raises(UserError, match="trained with optim=adamw, and this run asks for optim=muon"):
        check_resumable({"config": {"optim": {"name": "adamw"}}}, OCFG, "ckpt/last.pt")
    check_resumable({"config": {"optim": {"name": "muon"}}}, OCFG, "ckpt/last.pt")


def test_optimizers_is_the_sum_of_its_parts():
    a = torch.nn.Parameter(torch.ones(2, 2))
    b = torch.nn.Parameter(torch.ones(3))
    opt = Optimizers(first=torch.optim.SGD([a], lr=0.1), second=torch.optim.SGD([b], lr=0.2))
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2]
    (a.sum() + 2 * b.sum()).backward()
    opt.step()
    assert torch.allclose(a, torch.full((2, 2), 0.9)) and torch.allclose(b, torch.full((3,), 0.6))
    opt.zero_grad()
    assert a.grad is None and b.grad is None
    assert set(opt.state_dict()) == {"first", "second"}


def test_float32_newton_schulz_is_torchs_update_in_float32():
    """Float32Muon (optim.ns_dtype=float32, CPUs without bf16 units) takes torch.optim.Muon's step:
    the same momentum, orthogonalisation and rate, only its matmuls in float32. Its update is
    nearly orthogonal (singular values in Newton-Schulz's band around 1), and it agrees with
    torch's bf16 step to bf16's precision."""
    from nanogpt.training.optim import Float32Muon, orthogonalise

    g = torch.randn(48, 32, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = torch.linalg.svdvals(orthogonalise(g, 5, torch.float32))
    assert s.min() > 0.5 and s.max() < 1.5
    weights = []
    for cls in (torch.optim.Muon, Float32Muon):
        p = torch.nn.Parameter(torch.randn(48, 32, generator=torch.Generator().manual_seed(1)))
        opt = cls([p], lr=0.1, weight_decay=0.1, momentum=0.9, nesterov=True)
        for seed in range(3):
            p.grad = torch.randn(48, 32, generator=torch.Generator().manual_seed(10 + seed))
            opt.step()
        weights.append(p.detach().clone())
    start = torch.randn(48, 32, generator=torch.Generator().manual_seed(1))
    moved = (weights[0] - start).norm()
    assert (weights[0] - weights[1]).norm() < 0.02 * moved  # bf16 vs float32 rounding only
    assert opt.state[p]["momentum_buffer"].shape == p.shape  # torch's state: checkpoints interchange


@pytest.mark.parametrize("name, has_bf16, device, expect", [
    ("auto", False, "cpu", torch.float32), ("auto", True, "cpu", torch.bfloat16),
    ("auto", False, "cuda", torch.bfloat16), ("float32", True, "cuda", torch.float32),
    ("bfloat16", False, "cpu", torch.bfloat16)])
def test_newton_schulz_dtype_follows_the_hardware(monkeypatch, name, has_bf16, device, expect):
    from nanogpt.runtime import hardware
    from nanogpt.training.optim import Float32Muon, ns_dtype_for

    monkeypatch.setattr(hardware, "cpu_has_fast_bf16", lambda: has_bf16)
    assert ns_dtype_for(name, device) == expect
    opt = make_muon(model_of(), MuonConfig(ns_dtype=name), device)
    assert isinstance(opt.optimizers["muon"], Float32Muon) == (expect == torch.float32)
