"""GPT-2 weights in (nanogpt.hf.weights) and out (nanogpt.hf.export), checked against transformers.

Everything is offline: the "pretrained" models are randomly initialised transformers GPT-2s
saved to temporary directories, in the layouts the hub uses.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel  # noqa: E402

from nanogpt.errors import UserError  # noqa: E402
from nanogpt.checkpoint.load import load_run  # noqa: E402
from nanogpt.hf.export import _merge_parts, bytes_to_unicode, export_hf  # noqa: E402
from nanogpt.export import main as export_main  # noqa: E402
from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.hf.weights import hf_state_dict, load_pretrained  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RANK_FILE = REPO.parent / "shared" / "data" / "gpt2_bpe" / "gpt2.tiktoken"
needs_ranks = pytest.mark.skipif(not RANK_FILE.is_file(), reason=f"no GPT-2 rank file at {RANK_FILE}")
SMALL = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=100, n_positions=32)


def hf_model(**shape) -> GPT2LMHeadModel:
    # bos/eos inside the vocabulary: transformers warns about out-of-range ids otherwise
    return GPT2LMHeadModel(GPT2Config(**shape, bos_token_id=0, eos_token_id=0)).eval()


def full_logits(model: GPT, x: torch.Tensor) -> torch.Tensor:
    """Our GPT returns every position's logits only when given targets."""
    with torch.no_grad():
        return model(x, torch.zeros_like(x))[0]


def hf_logits(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = hf_model(**SMALL)
    path = tmp_path_factory.mktemp("hf_small")
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def gpt2_124m_dir(tmp_path_factory):
    """A random transformers GPT-2 with the 124M model's shapes, as save_pretrained writes it."""
    torch.manual_seed(0)
    model = hf_model()  # GPT2Config's defaults are GPT-2 124M
    path = tmp_path_factory.mktemp("hf_124m")
    model.save_pretrained(path)
    return path, model


def rewrite_weights(src: Path, dst: Path, edit) -> Path:
    """Copy an HF model dir with its tensors passed through edit(dict) -> dict."""
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = edit(load_file(src / "model.safetensors"))
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


# ----------------------------------------------------------------------------------------------
# loading


def test_small_hf_model_loads_with_the_same_logits(small_dir):
    path, ref = small_dir
    model = load_pretrained(path=path)
    cfg = model.config
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size, cfg.bias) == (2, 4, 64, 32, 100, True)
    x = torch.randint(0, 100, (3, 32), generator=torch.Generator().manual_seed(1))
    assert (full_logits(model, x) - hf_logits(ref, x)).abs().max() < 1e-4
    # tied like our own GPT (one Parameter), real memory, eval mode
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not any(p.is_meta for p in model.parameters())
    assert not model.training


def test_124m_shaped_model_loads_with_the_same_logits(gpt2_124m_dir):
    path, ref = gpt2_124m_dir
    model = load_pretrained(path=path)
    assert (model.config.n_layer, model.config.n_embd, model.config.vocab_size) == (12, 768, 50257)
    assert model.num_params(non_embedding=False) == sum(p.numel() for p in ref.parameters())
    x = torch.randint(0, 50257, (2, 64), generator=torch.Generator().manual_seed(2))
    assert (full_logits(model, x) - hf_logits(ref, x)).abs().max() < 1e-4


def test_loading_124m_holds_about_one_copy_of_the_weights(gpt2_124m_dir):
    """Peak RSS above the pre-load baseline, in a fresh process: one float32 copy (475 MB) plus
    the largest tensor in flight (wte, 147 MB) and allocator slack; two copies would be 2x."""
    path, _ = gpt2_124m_dir
    out = subprocess.run([sys.executable, "-m", "nanogpt.pretrained", "--path", str(path)],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert out.returncode == 0, out.stderr
    print(out.stdout)
    ratio = float(re.search(r"= ([\d.]+) x the weights", out.stdout).group(1))
    assert ratio < 1.6, out.stdout


def test_openai_hub_layout_loads(small_dir, tmp_path):
    """openai-community/gpt2's file: no "transformer." prefix, old mask buffers, an explicit
    (equal) lm_head.weight."""
    path, ref = small_dir

    def openai_layout(t):
        t = {k.removeprefix("transformer."): v for k, v in t.items()}
        t["h.0.attn.bias"] = torch.tril(torch.ones(1, 1, 32, 32))
        t["h.1.attn.masked_bias"] = torch.tensor(-1e4)
        t["lm_head.weight"] = t["wte.weight"].clone()
        return t

    model = load_pretrained(path=rewrite_weights(path, tmp_path / "m", openai_layout))
    x = torch.randint(0, 100, (2, 16))
    assert (full_logits(model, x) - hf_logits(ref, x)).abs().max() < 1e-4


def test_safetensors_without_pread_backend(small_dir, monkeypatch):
    """safetensors < 0.8 has no backend= argument: the mmap path must give the same weights."""
    import safetensors

    real = safetensors.safe_open

    def old_safe_open(path, framework, device="cpu", **kwargs):
        if kwargs:
            raise TypeError("safe_open() got an unexpected keyword argument 'backend'")
        return real(path, framework=framework, device=device)

    monkeypatch.setattr(safetensors, "safe_open", old_safe_open)
    path, ref = small_dir
    model = load_pretrained(path=path)
    x = torch.randint(0, 100, (2, 16))
    assert (full_logits(model, x) - hf_logits(ref, x)).abs().max() < 1e-4


def test_pytorch_model_bin_fallback(small_dir, tmp_path):
    path, ref = small_dir
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    model = load_pretrained(path=tmp_path)
    x = torch.randint(0, 100, (2, 16))
    assert (full_logits(model, x) - hf_logits(ref, x)).abs().max() < 1e-4


def test_sharded_safetensors_load(small_dir, tmp_path):
    path, ref = small_dir
    tensors = load_file(path / "model.safetensors")
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for fname, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, tmp_path / fname, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    x = torch.randint(0, 100, (2, 16))
    assert (full_logits(load_pretrained(path=tmp_path), x) - hf_logits(ref, x)).abs().max() < 1e-4


def test_dtype_and_dropout(small_dir):
    path, ref = small_dir
    model = load_pretrained(path=path, dtype=torch.bfloat16, dropout=0.1)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.dropout == 0.1
    x = torch.randint(0, 100, (2, 16))
    assert (full_logits(model, x).float() - hf_logits(ref, x)).abs().max() < 0.1


def test_no_config_json_takes_the_shape_from_the_name(gpt2_124m_dir, tmp_path):
    path, _ = gpt2_124m_dir
    (tmp_path / "model.safetensors").symlink_to(path / "model.safetensors")
    for name in ("gpt2", "openai-community/gpt2"):
        assert load_pretrained(name, path=tmp_path).config.n_layer == 12
    with pytest.raises(UserError, match="cannot tell the model's shape"):
        load_pretrained("my-gpt", path=tmp_path)
    with pytest.raises(UserError, match=r"missing: transformer\.h\.12\."):  # the wrong size
        load_pretrained("gpt2-medium", path=tmp_path)


def test_hub_names_and_offline_error(small_dir, monkeypatch):
    import huggingface_hub

    path, ref = small_dir
    asked = []

    def fake_download(repo_id, filename, **kwargs):
        asked.append(repo_id)
        return str(path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = load_pretrained("gpt2_medium")  # config.json from the "hub" wins over GPT2_SIZES
    assert asked == ["openai-community/gpt2-medium"] * 2 and model.config.n_layer == 2
    load_pretrained("someone/my-gpt2")
    assert asked[-1] == "someone/my-gpt2"

    def offline(repo_id, filename, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot reach the hub, not in cache")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(UserError, match=r"openai-community/gpt2-xl/model.safetensors.*model\.path=DIR"):
        load_pretrained("gpt2-xl")


def test_missing_unexpected_and_misshaped_tensors_are_named(small_dir, tmp_path):
    path, _ = small_dir

    def drop(t):
        del t["transformer.h.1.mlp.c_fc.weight"]
        return t

    with pytest.raises(UserError, match=r"missing: transformer\.h\.1\.mlp\.c_fc\.weight"):
        load_pretrained(path=rewrite_weights(path, tmp_path / "a", drop))

    def extra(t):
        t["transformer.h.2.ln_1.weight"] = torch.ones(64)
        return t

    with pytest.raises(UserError, match=r"unexpected: transformer\.h\.2\.ln_1\.weight"):
        load_pretrained(path=rewrite_weights(path, tmp_path / "b", extra))

    def misshape(t):
        t["transformer.h.0.attn.c_attn.weight"] = torch.zeros(64, 96)
        return t

    with pytest.raises(UserError, match=r"transformer\.h\.0\.attn\.c_attn\.weight: \(96, 64\).*\(192, 64\)"):
        load_pretrained(path=rewrite_weights(path, tmp_path / "c", misshape))

    def untied(t):
        t["lm_head.weight"] = t["transformer.wte.weight"] + 1
        return t

    with pytest.raises(UserError, match="lm_head.weight differs"):
        load_pretrained(path=rewrite_weights(path, tmp_path / "d", untied))


def test_bad_directories_and_configs(small_dir, tmp_path):
    path, _ = small_dir
    with pytest.raises(UserError, match="not a directory"):
        load_pretrained(path=tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"no GPT-2 weights in .*it holds config\.json"):
        load_pretrained(path=tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model.safetensors").symlink_to(path / "model.safetensors")
    (odd / "config.json").write_text(json.dumps(cfg | {"activation_function": "relu"}))
    with pytest.raises(UserError, match="activation_function 'relu'"):
        load_pretrained(path=odd)
    (odd / "config.json").write_text(json.dumps(cfg | {"model_type": "llama"}))
    with pytest.raises(UserError, match="only GPT-2"):
        load_pretrained(path=odd)


# ----------------------------------------------------------------------------------------------
# our GPT -> Hugging Face


def our_model(seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(**(dict(block_size=32, vocab_size=100, n_layer=2, n_head=4, n_embd=64) | kw)))
    with torch.no_grad():  # random, non-zero biases and LayerNorm affine: a transpose slip shows
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name or "ln_f" in name:
                p.normal_(0, 0.5)
    return model.eval()


def test_hf_state_dict_loads_strictly_into_transformers():
    model = our_model()
    hf = hf_model(**SMALL)
    hf.load_state_dict(hf_state_dict(model), strict=True)
    x = torch.randint(0, 100, (2, 32))
    assert (full_logits(model, x) - hf_logits(hf, x)).abs().max() < 1e-4


@pytest.mark.parametrize("variant", [
    dict(),
    dict(bias=False),
    dict(vocab_size=128),  # a vocabulary padded from 100 to a multiple of 64 is exported padded
    dict(mlp_ratio=3.0),  # another MLP width: HF's n_inner
])
def test_export_round_trip(tmp_path, variant):
    model = our_model(**variant)
    out = export_hf(model, tmp_path / "hf")
    assert sorted(p.name for p in out.iterdir()) == [".nanogpt-export", "config.json", "model.safetensors"]
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert hf.config.vocab_size == model.config.vocab_size
    x = torch.randint(0, 100, (2, 32), generator=torch.Generator().manual_seed(3))
    assert (full_logits(model, x) - hf_logits(hf, x)).abs().max() < 1e-4
    # and back in: the same function (bias=False comes back with zero biases)
    back = load_pretrained(path=out)
    assert (full_logits(back, x) - full_logits(model, x)).abs().max() < 1e-5


@pytest.mark.parametrize("option,named", [
    (dict(pos_emb="rope"), "pos_emb='rope'"),
    (dict(norm="rmsnorm"), "norm='rmsnorm'"),
    (dict(qk_norm=True), "qk_norm=True"),
    (dict(mlp="relu2"), "mlp='relu2'"),
    (dict(tie_embeddings=False), "tie_embeddings=False"),
    (dict(logit_softcap=30.0), "logit_softcap=30.0"),
    (dict(pos_emb="rope", rope_base=500.0), "pos_emb='rope', rope_base=500.0"),
    (dict(doc_mask=True), "doc_mask=True"),
])
def test_export_refuses_a_model_gpt2_cannot_express(tmp_path, option, named):
    with pytest.raises(UserError, match=re.escape(f"the model uses {named}, which a Hugging Face GPT-2 cannot hold")):
        export_hf(our_model(**option), tmp_path / "hf")
    with pytest.raises(UserError, match=re.escape(named)):
        hf_state_dict(our_model(**option))
    assert not any(tmp_path.iterdir())  # nothing written


def test_export_cli_refuses_a_rope_run_before_writing(tmp_path, capsys):
    run = make_run(tmp_path / "run", our_model(pos_emb="rope", tie_embeddings=False), None)
    with pytest.raises(UserError, match="pos_emb='rope', tie_embeddings=False"):
        export_main([str(run), str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()


def test_export_refuses_a_non_empty_directory(tmp_path):
    out = tmp_path / "hf"
    out.mkdir()
    export_hf(our_model(), out)  # an empty directory is fine
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty.*--force"):
        export_hf(our_model(seed=1), out)
    assert (out / "keep.txt").exists()
    export_hf(our_model(seed=1), out, force=True)
    assert not (out / "keep.txt").exists()  # replaced as a whole
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary directories left behind
    with pytest.raises(UserError, match="not a directory"):
        export_hf(our_model(), out / "config.json", force=True)


def make_run(run_dir: Path, model: GPT, tokenizer: dict | None, which="best", compiled=True) -> Path:
    """A training run's checkpoint as the training loop writes it (torch.compile prefixes and all)."""
    state = model.state_dict()
    if compiled:
        state = {"_orig_mod." + k: v for k, v in state.items()}
    ckpt = {"model": state, "model_args": {**vars(model.config), "future_field": 1}, "iter": 1234,
            "best_val_loss": 3.0, "config": {"data": {"name": "tiny"}}, "tokenizer": tokenizer}
    (run_dir / "ckpt").mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, run_dir / "ckpt" / f"{which}.pt")
    return run_dir


def test_export_cli_on_a_run(tmp_path):
    model = our_model(bias=False, vocab_size=128)
    run = make_run(tmp_path / "run", model, {"kind": "char", "chars": list("abc")})
    with pytest.warns(UserWarning, match="char-level"):
        out = export_main([str(run), str(tmp_path / "hf")])
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["nanogpt"]["iter"] == 1234 and cfg["nanogpt"]["dataset"] == "tiny"
    assert cfg["eos_token_id"] is None and cfg["n_positions"] == 32 and cfg["vocab_size"] == 128
    assert json.loads((out / "nanogpt_tokenizer.json").read_text())["chars"] == ["a", "b", "c"]
    assert not (out / "vocab.json").exists()
    x = torch.randint(0, 128, (2, 32))
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    assert (full_logits(model, x) - hf_logits(hf, x)).abs().max() < 1e-4

    with pytest.raises(UserError, match=r"no checkpoint .*last\.pt; it has best\.pt: pass --which best"):
        export_main([str(run), str(tmp_path / "hf2"), "--which", "last"])
    with pytest.raises(UserError, match="not empty"):
        export_main([str(run), str(out)])


def test_export_cli_refusal_is_a_clean_error(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "nanogpt.export", str(tmp_path / "run"), str(tmp_path / "out")],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.startswith("error:") and "not empty" in proc.stderr and "Traceback" not in proc.stderr


def test_load_run_rejects_mismatched_weights(tmp_path):
    model = our_model()
    run = make_run(tmp_path / "run", model, None, compiled=False)
    ckpt = torch.load(run / "ckpt" / "best.pt", weights_only=False)
    ckpt["model_args"]["n_embd"] = 128
    torch.save(ckpt, run / "ckpt" / "best.pt")
    with pytest.raises(UserError, match="do not match its model_args"):
        load_run(run)


# ----------------------------------------------------------------------------------------------
# tokenizer files


def test_bytes_to_unicode_and_merge_recovery():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256 and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert table[ord("a")] == "a"
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"bc": 3, b"ab": 4, b"abc": 5}
    assert _merge_parts(ranks, b"abc") == (b"a", b"bc")  # bc (rank 3) was merged before ab (4)
    assert _merge_parts(ranks, b"ab") == (b"a", b"b")


@needs_ranks
def test_exported_gpt2_tokenizer_matches_tiktoken(tmp_path, monkeypatch):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, GPT2TokenizerFast

    from nanogpt.tokenizer import GPT2Tokenizer

    monkeypatch.setenv("NANOGPT_GPT2_RANKS", str(RANK_FILE))
    model = our_model(vocab_size=50304)
    run = make_run(tmp_path / "run", model, {"kind": "gpt2"})
    out = export_main([str(run), str(tmp_path / "hf")])
    assert {"vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 50256

    # GPT-2's own pre-tokenizer regex (encoder.py in openai/gpt-2), independent of nanogpt.tokenizer
    gpt2_pattern = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    enc = tiktoken.Encoding("gpt2", pat_str=gpt2_pattern, mergeable_ranks=load_tiktoken_bpe(str(RANK_FILE)),
                            special_tokens={"<|endoftext|>": 50256})
    shakespeare = REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
    text = (shakespeare.read_text()[:100_000] if shakespeare.is_file() else "") + (
        "Hello world! It's 2024; naïve café — 日本語 😀\n\n  tabs\t\tand   spaces 123456 don't I'll we've\n")
    expected = enc.encode_ordinary(text)
    assert GPT2Tokenizer().encode(text) == expected  # what nanogpt's data is tokenized with
    for tok in (GPT2TokenizerFast.from_pretrained(out), AutoTokenizer.from_pretrained(out)):
        ids = tok(text)["input_ids"]
        assert ids == expected
        assert tok.decode(ids) == text
        assert tok.eos_token_id == 50256
    assert Tokenizer.from_file(str(out / "tokenizer.json")).encode(text).ids == expected


def test_missing_rank_file(tmp_path, monkeypatch):
    import nanogpt.tokenizer as tokmod

    with pytest.raises(UserError, match="does not exist"):  # asked for explicitly: an error
        export_hf(our_model(), tmp_path / "a", tokenizer_meta={"kind": "gpt2"}, rank_file=tmp_path / "none")

    def unavailable(rank_file=None):
        raise tokmod.TokenizerError("could not load the GPT-2 BPE ranks (offline)")

    monkeypatch.setattr(tokmod, "GPT2Tokenizer", unavailable)
    with pytest.warns(UserWarning, match="without tokenizer files.*offline"):
        out = export_hf(our_model(), tmp_path / "b", tokenizer_meta={"kind": "gpt2"})
    assert sorted(p.name for p in out.iterdir()) == [".nanogpt-export", "config.json", "model.safetensors"]
    assert not os.path.exists(tmp_path / "a")
