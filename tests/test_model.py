"""The GPT model: architecture facts a user relies on."""
import math

import pytest
import torch
from torch.nn import functional as F

from conftest import assert_cache_matches_recomputation
from nanogpt.model import GPT, GPTConfig, padded_vocab_size


def tiny(**kw):
    cfg = dict(n_layer=2, n_head=2, n_embd=32, vocab_size=50, block_size=16, dropout=0.0)
    cfg.update(kw)
    torch.manual_seed(0)
    return GPT(GPTConfig(**cfg)).eval()


def test_gpt2_124m_parameter_count():
    with torch.device("meta"):
        model = GPT(GPTConfig(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, block_size=1024, bias=True))
    assert model.num_params(non_embedding=False) == 124_439_808
    assert model.num_params(non_embedding=True) == 124_439_808 - 1024 * 768


def test_lm_head_is_tied_to_token_embedding():
    model = tiny()
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_residual_projections_use_scaled_init():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=8, n_head=4, n_embd=256, vocab_size=100, block_size=32))
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(2 * 8), rel=0.05)
    assert model.transformer.h[0].mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_causality_future_tokens_never_change_past_logits():
    model = tiny()
    x = torch.randint(0, 50, (2, 16))
    logits, _ = model(x, x)  # with targets: logits for every position
    for t in (0, 5, 11):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randint(0, 50, x2[:, t + 1:].shape)
        logits2, _ = model(x2, x2)
        torch.testing.assert_close(logits[:, :t + 1], logits2[:, :t + 1])
        if t + 1 < 16:
            assert not torch.allclose(logits[:, t + 1:], logits2[:, t + 1:])


def test_sdpa_attention_equals_handwritten_masked_attention():
    model = tiny()
    attn = model.transformer.h[0].attn
    x = torch.randn(3, 10, 32)
    B, T, C = x.shape
    q, k, v = attn.c_attn(x).split(C, dim=2)
    q, k, v = (t.view(B, T, 2, C // 2).transpose(1, 2) for t in (q, k, v))
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    att = att.masked_fill(torch.tril(torch.ones(T, T)) == 0, float("-inf")).softmax(dim=-1)
    expected = attn.c_proj((att @ v).transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


def test_forward_without_targets_returns_last_position_only():
    model = tiny()
    x = torch.randint(0, 50, (2, 7))
    logits, loss = model(x)
    assert loss is None and logits.shape == (2, 1, 50)
    full, _ = model(x, x)
    torch.testing.assert_close(logits[:, 0], full[:, -1])


def test_loss_ignores_index_minus_one():
    model = tiny()
    x = torch.randint(0, 50, (1, 8))
    y = x.clone()
    y[:, :4] = -1
    logits, loss = model(x, y)
    expected = F.cross_entropy(logits[0, 4:], y[0, 4:])
    torch.testing.assert_close(loss, expected)


def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, vocab_size=30, block_size=16))
    x = torch.randint(0, 30, (4, 16))
    y = torch.randint(0, 30, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1  # from ~log(30) = 3.4


def test_bias_and_dropout_options():
    no_bias = tiny(bias=False)
    assert all(m.bias is None for m in no_bias.modules() if isinstance(m, torch.nn.Linear))
    with_dropout = tiny(dropout=0.5).train()
    x = torch.randint(0, 50, (2, 8))
    a, _ = with_dropout(x, x)
    b, _ = with_dropout(x, x)
    assert not torch.allclose(a, b)  # dropout active in training
    with_dropout.eval()
    torch.testing.assert_close(with_dropout(x, x)[0], with_dropout(x, x)[0])


def test_vocab_padding_and_crop_block_size():
    assert padded_vocab_size(50257) == 50304 and padded_vocab_size(64) == 64
    model = tiny(block_size=16)
    model.crop_block_size(8)
    assert model.config.block_size == 8 and model.transformer.wpe.weight.shape[0] == 8
    model(torch.randint(0, 50, (1, 8)))
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.randint(0, 50, (1, 9)))
    with pytest.raises(ValueError, match="cannot grow"):
        model.crop_block_size(32)


def test_invalid_config_is_rejected():
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)


def test_flops_per_token_matches_hand_count():
    model = tiny(n_layer=2, n_embd=32, vocab_size=50, block_size=16)
    # parameters without the position embedding: wte 50*32, per layer ln 2*2*32, attn 32*96+96 +
    # 32*32+32, mlp 32*128+128 + 128*32+32; final ln 2*32
    per_layer = 4 * 32 + (32 * 96 + 96) + (32 * 32 + 32) + (32 * 128 + 128) + (128 * 32 + 32)
    n = 50 * 32 + 2 * per_layer + 2 * 32
    assert model.num_params(non_embedding=True) == n
    assert model.flops_per_token(16) == 6 * n + 12 * 2 * 32 * 16


@pytest.mark.parametrize("prompt_len", [1, 5])
def test_kv_cache_generation_equals_recomputation(prompt_len):
    model = tiny(block_size=32)
    x = torch.randint(0, 50, (2, prompt_len))
    outs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(123)
        outs.append(model.generate(x, 32 - prompt_len, temperature=1.0, top_k=20, use_cache=use_cache, generator=g))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("weights, autocast", [(torch.float64, torch.bfloat16), (torch.float32, torch.bfloat16)])
def test_cached_sampling_under_autocast_keeps_the_keys_dtype(weights, autocast):
    """Sampling a run trained in float64 on a machine whose hardware=auto picks bf16 autocast:
    autocast leaves float64 alone, so the cache must hold the keys in the dtype they come in
    (it was allocated in the autocast dtype: a dtype error at the first cached step)."""
    model = tiny(block_size=16).to(weights)
    x = torch.randint(0, 50, (2, 3))
    outs = []
    with torch.autocast("cpu", dtype=autocast):
        for use_cache in (True, False):
            outs.append(model.generate(x, 10, use_cache=use_cache, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(outs[0], outs[1])


def test_kv_cache_logits_match_full_forward():
    assert_cache_matches_recomputation(tiny(block_size=16), torch.randint(0, 50, (2, 12)), prompt_len=7)


def test_generation_beyond_block_size_keeps_going():
    model = tiny(block_size=8)
    out = model.generate(torch.zeros(1, 1, dtype=torch.long), 30, top_k=5)
    assert out.shape == (1, 31)
