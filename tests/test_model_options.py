"""The model options (rope, rmsnorm, qk_norm, relu2, untied head, soft-cap): each on its own and
all together; and the GPT-2 configuration, which must stay exactly today's model."""
import math

import pytest
import torch
from torch.nn import functional as F

from conftest import assert_cache_matches_recomputation
from nanogpt.model import GPT, GPTConfig, apply_rotary, rotary_angles
import gpt2_reference_model as reference

SHAPE = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=50, block_size=16, dropout=0.0)
OPTIONS = {  # one option at a time, then all of them (the modern recipe)
    "rope": dict(pos_emb="rope"),
    "rope_base": dict(pos_emb="rope", rope_base=500.0),
    "rmsnorm": dict(norm="rmsnorm"),
    "qk_norm": dict(qk_norm=True),
    "relu2": dict(mlp="relu2"),
    "mlp_ratio": dict(mlp_ratio=3.0),
    "untied": dict(tie_embeddings=False),
    "softcap": dict(logit_softcap=3.0),
    "no_bias": dict(bias=False),
    "modern": dict(pos_emb="rope", norm="rmsnorm", qk_norm=True, mlp="relu2", tie_embeddings=False,
                   logit_softcap=15.0, bias=False),
}


def build(**kw):
    torch.manual_seed(0)
    model = GPT(GPTConfig(**(SHAPE | kw)))
    if not model.config.tie_embeddings:  # a trained head: a zero one makes every logit 0
        torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    return model.eval()


# ----------------------------------------------------------------------------------------------
# the GPT-2 configuration is today's model, bit for bit

@pytest.mark.parametrize("kw", [{}, dict(bias=False), dict(n_layer=3, n_head=4, n_embd=64, block_size=24)])
def test_gpt2_configuration_gives_the_reference_models_weights_and_logits(kw):
    args = SHAPE | kw
    torch.manual_seed(0)
    ours = GPT(GPTConfig(**args))
    torch.manual_seed(0)
    ref = reference.GPT(reference.GPTConfig(**args))
    # the same random numbers drawn in the same order: the same initial weights
    assert ours.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    x = torch.randint(0, 50, (3, args["block_size"]))
    (a, loss_a), (b, loss_b) = ours(x, x), ref(x, x)
    assert torch.equal(a, b) and torch.equal(loss_a, loss_b)
    assert torch.equal(ours(x)[0], ref(x)[0])
    loss_a.backward()
    loss_b.backward()
    for (n, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), n
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    assert torch.equal(ours.generate(x[:, :3], 20, top_k=10, generator=g1),
                       ref.generate(x[:, :3], 20, top_k=10, generator=g2))


def test_explicit_gpt2_options_are_the_defaults():
    explicit = GPTConfig(pos_emb="learned", norm="layernorm", qk_norm=False, mlp="gelu", mlp_ratio=4.0,
                         tie_embeddings=True, logit_softcap=None, bias=True)
    assert explicit == GPTConfig()


# ----------------------------------------------------------------------------------------------
# every option: trains, is causal, samples with the cache exactly as without

@pytest.mark.parametrize("name", OPTIONS)
def test_option_trains_on_one_batch(name):
    model = build(**OPTIONS[name]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 50, (4, 16))
    first = None
    for _ in range(30):
        _, loss = model(x[:, :-1], x[:, 1:])
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        opt.step()
    assert loss.item() < 0.7 * first


@pytest.mark.parametrize("name", OPTIONS)
def test_option_is_causal(name):
    model = build(**OPTIONS[name])
    x = torch.randint(0, 50, (2, 16))
    logits, _ = model(x, x)
    x2 = x.clone()
    x2[:, 9:] = (x2[:, 9:] + 1) % 50
    logits2, _ = model(x2, x2)
    torch.testing.assert_close(logits[:, :9], logits2[:, :9])
    assert not torch.allclose(logits[:, 9:], logits2[:, 9:])


@pytest.mark.parametrize("name", OPTIONS)
def test_option_kv_cache_logits_equal_recomputation(name):
    assert_cache_matches_recomputation(build(**OPTIONS[name]), torch.randint(0, 50, (2, 12)), prompt_len=5)


@pytest.mark.parametrize("name", OPTIONS)
def test_option_sampling_with_cache_equals_without(name):
    model = build(**OPTIONS[name])
    x = torch.randint(0, 50, (2, 3))
    outs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(7)
        outs.append(model.generate(x, 13, temperature=1.0, top_k=20, use_cache=use_cache, generator=g))
    assert torch.equal(outs[0], outs[1])
    # and beyond block_size the cache is rebuilt: generation goes on
    assert model.generate(x, 40, top_k=5).shape == (2, 43)


def test_kv_cache_in_bfloat16_autocast_for_the_modern_model():
    model = build(**OPTIONS["modern"])
    x = torch.randint(0, 50, (2, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.generate(x, 10, top_k=5)
        _, loss = model.train()(x, x)
    assert out.shape == (2, 14) and torch.isfinite(loss)


# ----------------------------------------------------------------------------------------------
# what each option computes

def test_rope_has_no_position_table_and_scores_depend_on_relative_position():
    model = build(pos_emb="rope")
    assert "wpe" not in model.transformer
    assert not any("wpe" in k for k in model.state_dict())
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cos, sin = rotary_angles(torch.arange(40), 16, 10000.0)
        return (apply_rotary(q, cos[m:m + 1], sin[m:m + 1]) * apply_rotary(k, cos[n:n + 1], sin[n:n + 1])).sum()

    torch.testing.assert_close(score(7, 3), score(30, 26))  # both 4 apart
    torch.testing.assert_close(score(5, 5), (q * k).sum())  # no offset: no change
    assert not torch.allclose(score(7, 3), score(7, 5))
    # a rotation: norms kept
    cos, sin = rotary_angles(torch.arange(3), 16, 10000.0)
    torch.testing.assert_close(apply_rotary(q.expand(1, 1, 3, 16), cos, sin).norm(dim=-1),
                               q.norm(dim=-1).expand(1, 1, 3))


def test_rope_angles_by_hand():
    cos, sin = rotary_angles(torch.tensor([0, 3]), 4, 100.0)
    # frequencies 100^(-0/4) = 1 and 100^(-2/4) = 0.1
    torch.testing.assert_close(cos, torch.tensor([[1.0, 1.0], [math.cos(3.0), math.cos(0.3)]]))
    torch.testing.assert_close(sin, torch.tensor([[0.0, 0.0], [math.sin(3.0), math.sin(0.3)]]))


def test_rmsnorm_and_qk_norm_modules():
    model = build(norm="rmsnorm", qk_norm=True)
    block = model.transformer.h[0]
    assert isinstance(block.ln_1, torch.nn.RMSNorm) and isinstance(model.transformer.ln_f, torch.nn.RMSNorm)
    assert block.attn.q_gain.shape == block.attn.k_gain.shape == (16,)
    x = torch.randn(3, 5, 32) * 7 + 2
    torch.testing.assert_close(block.ln_1(x), x / x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt())
    assert not hasattr(build().transformer.h[0].attn, "q_gain")


def test_qk_norm_and_rope_by_hand():
    """The joint pass over queries and keys equals the textbook one: each head's q and k
    RMS-normalised with their own gains, then turned by the rotary angles."""
    model = build(qk_norm=True, pos_emb="rope")
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        attn.q_gain.uniform_(0.5, 1.5)
        attn.k_gain.uniform_(0.5, 1.5)
    x = torch.randn(2, 7, 32)
    rope = rotary_angles(torch.arange(7), 16, 10000.0)
    q, k, v = attn._modern_qkv(x, rope)
    qh, kh, vh = (t.view(2, 7, 2, 16).transpose(1, 2) for t in attn.c_attn(x).split(32, dim=2))
    rms = lambda t, g: t / t.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt() * g  # noqa: E731
    torch.testing.assert_close(q, apply_rotary(rms(qh, attn.q_gain), *rope))
    torch.testing.assert_close(k, apply_rotary(rms(kh, attn.k_gain), *rope))
    torch.testing.assert_close(v, vh)


def test_relu2_mlp_and_ratio():
    model = build(mlp="relu2", mlp_ratio=2.5)
    mlp = model.transformer.h[0].mlp
    assert mlp.c_fc.weight.shape == (80, 32) and mlp.c_proj.weight.shape == (32, 80)
    x = torch.randn(2, 3, 32)
    torch.testing.assert_close(mlp(x), mlp.c_proj(F.relu(mlp.c_fc(x)) ** 2))


def test_untied_head_is_its_own_zero_initialised_matrix():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**SHAPE, tie_embeddings=False))
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert torch.count_nonzero(model.lm_head.weight) == 0
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.1)
    x = torch.randint(0, 50, (2, 16))
    _, loss = model(x, x)  # every logit 0: the uniform distribution
    assert loss.item() == pytest.approx(math.log(50), abs=1e-6)


def test_softcap_bounds_the_logits():
    model = build(logit_softcap=2.0)
    raw = build()
    x = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        for m in (model, raw):
            m.lm_head.weight.mul_(20)  # large raw logits
        logits, _ = model(x, x)
        raw_logits, _ = raw(x, x)
    assert logits.abs().max() <= 2.0 and raw_logits.abs().max() > 4
    torch.testing.assert_close(logits, 2.0 * torch.tanh(raw_logits / 2.0))
    torch.testing.assert_close(model(x)[0][:, -1], logits[:, -1])


def test_crop_block_size_with_rope():
    model = build(pos_emb="rope")
    model.crop_block_size(8)
    model(torch.randint(0, 50, (1, 8)))
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.randint(0, 50, (1, 9)))


def test_bfloat16_autocast_rmsnorm_keeps_the_input_dtype_without_warnings(recwarn):
    model = build(norm="rmsnorm", qk_norm=True)
    x = torch.randint(0, 50, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = model.transformer.h[0].ln_1(model.transformer.wte(x).bfloat16())
        model(x, x)
    assert h.dtype == torch.bfloat16
    assert not [w for w in recwarn if "Mismatch dtype" in str(w.message)]


# ----------------------------------------------------------------------------------------------
# FLOPs per token against a hand count, for each option

def hand_count(L=2, C=32, H=2, V=50, T=16, hidden=128, bias=True, layernorm=True, qk_norm=False,
               tied=True):
    """Matmul weights (+ biases and norm gains, as PaLM's 6N counts them) per token."""
    b = 1 if bias else 0
    norm = C * (1 + b) if layernorm else C  # LayerNorm: gain (+ bias); RMSNorm: gain only
    attn = (C * 3 * C + b * 3 * C) + (C * C + b * C) + (2 * (C // H) if qk_norm else 0)
    mlp = (C * hidden + b * hidden) + (hidden * C + b * C)
    head = V * C  # the head is a matmul, tied or not; an untied wte is a lookup, not counted
    n = head + L * (2 * norm + attn + mlp) + norm
    return n, 6 * n + 12 * L * C * T


@pytest.mark.parametrize("name,hand", [
    ("gpt2", {}), ("rope", {}), ("rope_base", {}), ("relu2", {}), ("softcap", {}),
    ("rmsnorm", dict(layernorm=False)),
    ("qk_norm", dict(qk_norm=True)),
    ("mlp_ratio", dict(hidden=96)),
    ("untied", dict(tied=False)),
    ("no_bias", dict(bias=False)),
    ("modern", dict(layernorm=False, qk_norm=True, tied=False, bias=False)),
])
def test_flops_per_token_matches_hand_count(name, hand):
    model = build(**OPTIONS.get(name, {}))
    n, flops = hand_count(**hand)
    assert model.num_params(non_embedding=True) == n
    assert model.flops_per_token(16) == flops
    total = n + (16 * 32 if model.config.pos_emb == "learned" else 0) + (50 * 32 if name in ("untied", "modern") else 0)
    assert model.num_params(non_embedding=False) == total


# ----------------------------------------------------------------------------------------------
# combinations that make no sense are refused up front

@pytest.mark.parametrize("kw,match", [
    (dict(pos_emb="rope", n_embd=30, n_head=2), r"pos_emb=rope needs an even head size.*30 / 2 = 15"),
    (dict(pos_emb="alibi"), r"unknown pos_emb='alibi': use learned or rope"),
    (dict(norm="batchnorm"), r"unknown norm='batchnorm': use layernorm or rmsnorm"),
    (dict(mlp="swiglu"), r"unknown mlp='swiglu': use gelu or relu2"),
    (dict(mlp_ratio=0.0), r"mlp_ratio must give an MLP at least 1 wide"),
    (dict(logit_softcap=0.0), r"logit_softcap must be null \(off\) or > 0"),
    (dict(rope_base=1.0), r"rope_base must be > 1"),
])
def test_nonsense_options_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        GPTConfig(**kw)
