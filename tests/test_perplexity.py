"""Sliding-window perplexity (nanogpt.evals.perplexity) against brute-force references."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig
from nanogpt.evals.perplexity import _windows, main, sliding_window_loss

REPO = Path(__file__).resolve().parents[1]
RANK_FILE = REPO.parent / "shared" / "data" / "gpt2_bpe" / "gpt2.tiktoken"
VOCAB, BLOCK = 50, 8


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=BLOCK, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=32)).eval()


def text_ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


def next_token_nll(model, context: torch.Tensor, target: int) -> float:
    """-log p(target | context), from the full logits of one forward pass."""
    with torch.no_grad():
        logits, _ = model(context[None], torch.zeros_like(context)[None])
    return -F.log_softmax(logits[0, -1].double(), dim=-1)[target].item()


@pytest.mark.parametrize("n", [2, 8, 9, 41, 48])
def test_stride_equal_to_block_is_the_token_weighted_mean_of_disjoint_blocks(model, n):
    ids = text_ids(n)
    # inputs ids[k*B : (k+1)*B], targets shifted by one; the last block may be shorter
    total, count = 0.0, 0
    for start in range(0, n - 1, BLOCK):
        x = ids[start:min(start + BLOCK, n - 1)]
        y = ids[start + 1:start + 1 + len(x)]
        with torch.no_grad():
            _, loss = model(x[None], y[None])
        total += loss.item() * len(y)
        count += len(y)
    got = sliding_window_loss(model, ids, stride=BLOCK, batch_size=2)
    assert got["tokens"] == count == n - 1
    assert got["loss"] == pytest.approx(total / count, abs=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(got["loss"]))


@pytest.mark.parametrize("n,stride,block", [(41, 3, 8), (41, 1, 8), (37, 5, 8), (20, 4, 4), (6, 2, 8), (30, 7, 7)])
def test_overlapping_windows_match_a_per_token_brute_force(model, n, stride, block):
    """Token t is scored by the first window that reaches it: windows start at 0, s, 2s, ... and
    window k predicts tokens k*s + 1 .. k*s + block, so t sees ids[k*s : t] with
    k = max(0, ceil((t - block) / s)): at least block - s tokens of context, all of it near the start."""
    ids = text_ids(n, seed=1)
    nlls = []
    for t in range(1, n):
        k = max(0, math.ceil((t - block) / stride))
        nlls.append(next_token_nll(model, ids[k * stride:t], int(ids[t])))
    got = sliding_window_loss(model, ids, block_size=block, stride=stride, batch_size=3)
    assert got["tokens"] == n - 1
    assert got["loss"] == pytest.approx(sum(nlls) / len(nlls), abs=1e-5)


def test_batch_size_and_padding_change_nothing(model):
    ids = text_ids(45, seed=2)
    results = [sliding_window_loss(model, ids, stride=3, batch_size=b)["loss"] for b in (1, 2, 5, 100)]
    assert max(results) - min(results) < 1e-5


@pytest.mark.parametrize("n", range(2, 30))
@pytest.mark.parametrize("block,stride", [(8, 8), (8, 3), (8, 1), (5, 4)])
def test_windows_score_every_token_once(n, block, stride):
    scored = []
    for begin, end, first in _windows(n, block, stride):
        assert 0 <= begin and end - begin <= block and end <= n - 1 and 0 <= first < end - begin
        scored += range(begin + 1 + first, end + 1)  # target indices scored by this window
    assert scored == list(range(1, n))


def test_dropout_model_is_evaluated_in_eval_mode_and_its_mode_restored():
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=BLOCK, vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=16, dropout=0.5))
    ids = text_ids(30)
    model.train()
    a = sliding_window_loss(model, ids, stride=4)["loss"]
    assert model.training
    assert sliding_window_loss(model.eval(), ids, stride=4)["loss"] == pytest.approx(a, abs=1e-6)


def test_bad_arguments(model):
    ids = text_ids(20)
    with pytest.raises(ValueError, match="stride 9 must be in"):
        sliding_window_loss(model, ids, stride=9)
    with pytest.raises(ValueError, match="stride 0 must be in"):
        sliding_window_loss(model, ids, stride=0)
    with pytest.raises(ValueError, match=r"block_size 16 must be in \[1, 8\]"):
        sliding_window_loss(model, ids, block_size=16)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        sliding_window_loss(model, ids[:1])
    with pytest.raises(ValueError, match="1-D"):
        sliding_window_loss(model, ids.view(4, 5))
    with pytest.raises(ValueError, match="model's tokenizer"):
        sliding_window_loss(model, torch.tensor([1, 2, VOCAB]))


# ----------------------------------------------------------------------------------------------
# the command line


def make_char_run(run_dir: Path, model: GPT, chars: list[str]) -> Path:
    """A run directory as the training loop leaves it (only what perplexity reads)."""
    (run_dir / "ckpt").mkdir(parents=True)
    torch.save({"model": {"_orig_mod." + k: v for k, v in model.state_dict().items()},
                "model_args": vars(model.config), "iter": 7, "config": {"data": {"name": "tiny"}},
                "tokenizer": {"kind": "char", "chars": chars}}, run_dir / "ckpt" / "best.pt")
    return run_dir


def test_cli_on_a_char_run(tmp_path, capsys):
    chars = sorted(set("hello world, this is a tiny text\n"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=len(chars), n_layer=1, n_head=2, n_embd=16)).eval()
    run = make_char_run(tmp_path / "run", model, chars)
    text = "hello world, this is a tiny text\n" * 5
    (tmp_path / "a.txt").write_text(text)
    ids = [chars.index(c) for c in text]

    got = main(["--run", str(run), "--file", str(tmp_path / "a.txt"), "--device", "cpu"])
    ref = sliding_window_loss(model, ids, stride=8)  # default stride: half the block
    assert got == pytest.approx(ref)
    out = capsys.readouterr().out
    assert f"{len(ids) - 1:,} tokens scored, block 16, stride 8" in out and "perplexity" in out

    got = main(["--run", str(run), "--file", str(tmp_path / "a.txt"), "--stride", "16", "--max-tokens", "40"])
    assert got == pytest.approx(sliding_window_loss(model, ids[:40]))

    (tmp_path / "b.txt").write_text("HELLO")
    with pytest.raises(UserError, match="could not tokenize .*not in the vocabulary"):
        main(["--run", str(run), "--file", str(tmp_path / "b.txt")])
    with pytest.raises(UserError, match="stride 32 must be in"):
        main(["--run", str(run), "--file", str(tmp_path / "a.txt"), "--stride", "32"])
    with pytest.raises(UserError, match="no text file"):
        main(["--run", str(run), "--file", str(tmp_path / "missing.txt")])


def test_cli_refuses_a_file_that_is_not_utf8_text(tmp_path, capsys):
    """Before: a UnicodeDecodeError traceback; now one error line, exit 2, before any model loads."""
    from nanogpt.errors import run_cli

    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SystemExit) as e:
        run_cli(main, ["--file", str(binary), "--device", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"error: {binary} is not UTF-8 text"), err
    assert len(err.splitlines()) == 1 and "pass a UTF-8 text file" in err


def test_cli_dataset_text_is_joined_with_blank_lines(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    chars = sorted(set("abc \n"))
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=16, vocab_size=len(chars), n_layer=1, n_head=2, n_embd=16)).eval()
    run = make_char_run(tmp_path / "run", model, chars)
    rows = ["a b c", "", " cab", "bca \n"]
    asked = []

    def fake_load_dataset(name, config=None, split=None):
        asked.append((name, config, split))
        return datasets.Dataset.from_dict({"text": rows, "id": list(range(len(rows)))})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    got = main(["--run", str(run), "--dataset", "wt", "--config", "raw", "--split", "validation"])
    assert asked == [("wt", "raw", "validation")]
    ids = [chars.index(c) for c in "\n\n".join(rows)]
    assert got == pytest.approx(sliding_window_loss(model, ids, stride=8))
    with pytest.raises(UserError, match="no column 'txt'; its columns: text, id"):
        main(["--run", str(run), "--dataset", "wt", "--column", "txt"])


@pytest.mark.skipif(not RANK_FILE.is_file(), reason=f"no GPT-2 rank file at {RANK_FILE}")
def test_cli_on_a_local_gpt2_directory(tmp_path, monkeypatch):
    """--model/--path: OpenAI-style weights and GPT-2 BPE (a tiny random model, 50257 tokens)."""
    transformers = pytest.importorskip("transformers")
    from nanogpt.hf.weights import load_pretrained
    from nanogpt.tokenizer import GPT2Tokenizer

    monkeypatch.setenv("NANOGPT_GPT2_RANKS", str(RANK_FILE))
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, n_positions=32)
    transformers.GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    text = "The quick brown fox jumps over the lazy dog.\n\n" * 10
    (tmp_path / "a.txt").write_text(text)
    got = main(["--path", str(tmp_path / "gpt2"), "--file", str(tmp_path / "a.txt")])
    ids = GPT2Tokenizer().encode(text)
    ref = sliding_window_loss(load_pretrained(path=tmp_path / "gpt2"), ids, stride=16)
    assert got == pytest.approx(ref)
    assert math.log(50257) - 0.5 < got["loss"] < math.log(50257) + 0.5  # an untrained model: ~uniform
