"""HellaSwag (nanogpt/evals/hellaswag.py): our batched scores against a brute-force reference computed with
transformers itself, a trained tiny run above chance, the in-training eval, bad files; and sampling
from a Hugging Face checkpoint without a run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import GPT2_RANKS, launch, needs_gpt2_ranks, read_metrics, write_char_dataset
from inprocess import make_config, train_tiny
from nanogpt.evals import hellaswag
from nanogpt.errors import UserError

ANIMALS = {"cat": "meow", "dog": "woof", "cow": "moo", "duck": "quack", "owl": "hoot", "pig": "oink",
           "lion": "roar", "bee": "buzz"}


def write_jsonl(path: Path, examples: list[dict]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in examples))
    return path


def toy_examples(seed: int = 0) -> list[dict]:
    """"the cat says" -> " meow." among three wrong sounds: learnable from the toy corpus below."""
    rng = np.random.default_rng(seed)
    out = []
    for animal, sound in ANIMALS.items():
        wrong = [s for s in ANIMALS.values() if s != sound]
        endings = [f"{s}." for s in rng.choice(wrong, 3, replace=False)]
        label = int(rng.integers(0, 4))
        endings.insert(label, f"{sound}.")
        out.append({"ctx": f"the {animal} says", "endings": endings, "label": label, "activity_label": "toy"})
    return out


def toy_corpus(n: int = 4000, seed: int = 1) -> str:
    rng = np.random.default_rng(seed)
    animals = list(ANIMALS)
    return "".join(f"the {a} says {ANIMALS[a]}.\n" for a in rng.choice(animals, n))


def hf_checkpoint(path: Path, n_positions: int = 128) -> Path:
    """A random-weight transformers GPT-2 with GPT-2's vocabulary, as save_pretrained writes it."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=n_positions, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(path)
    return path


def run_task(tmp_path: Path, *overrides: str) -> dict:
    cfg = make_config(["task=hellaswag", "hardware=cpu", "hardware.dtype=float32", "hardware.num_threads=1",
                       *overrides])
    return hellaswag.hellaswag(cfg, tmp_path / "out")


# ---------------------------------------------------------------- exactness

def brute_force(model, tokenizer, example: dict) -> tuple[list[float], list[float]]:
    """Each ending alone, unpadded, through transformers: summed and mean loss of its tokens."""
    sums, means = [], []
    ctx = tokenizer.encode(example["ctx"])
    for ending in example["endings"]:
        end = tokenizer.encode(" " + ending)
        ids = torch.tensor([ctx + end])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        losses = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")[-len(end):]
        sums.append(losses.sum().item())
        means.append(losses.mean().item())
    return sums, means


WORDS = ("a man is sitting on a roof he starts pulling up roofing with a hammer then the woman runs "
         "across the field and picks up the ball the dog jumps over it people are dancing").split()


def random_examples(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    text = lambda k: " ".join(rng.choice(WORDS, k))  # noqa: E731
    return [{"ctx": text(int(rng.integers(3, 30))).capitalize(),
             "endings": [text(int(rng.integers(1, 12))) + "." for _ in range(4)],
             "label": int(rng.integers(0, 4))} for _ in range(n)]


@needs_gpt2_ranks
def test_scores_equal_a_brute_force_transformers_reference(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_GPT2_RANKS", str(GPT2_RANKS))
    from transformers import GPT2LMHeadModel

    from nanogpt.tokenizer import GPT2Tokenizer

    ckpt = hf_checkpoint(tmp_path / "hf")
    examples = random_examples(23)
    data = write_jsonl(tmp_path / "val.jsonl", examples)
    record = run_task(tmp_path, f"model.path={ckpt}", f"task.file={data}", "task.batch_size=5")
    ref_model, tok = GPT2LMHeadModel.from_pretrained(ckpt).eval(), GPT2Tokenizer()
    preds, preds_norm = [], []
    for ex, got in zip(examples, record["examples"]):
        sums, means = brute_force(ref_model, tok, ex)
        np.testing.assert_allclose(got["sum_loss"], sums, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got["mean_loss"], means, rtol=1e-4, atol=1e-4)
        preds.append(int(np.argmin(sums)))
        preds_norm.append(int(np.argmin(means)))
        assert got["label"] == ex["label"]
    assert [g["pred"] for g in record["examples"]] == preds
    assert [g["pred_norm"] for g in record["examples"]] == preds_norm
    labels = [ex["label"] for ex in examples]
    assert record["acc"] == pytest.approx(np.mean(np.array(preds) == labels))
    assert record["acc_norm"] == pytest.approx(np.mean(np.array(preds_norm) == labels))
    assert record["n"] == 23 and "reference" not in record
    saved = json.loads((tmp_path / "out" / "hellaswag.json").read_text())
    assert saved["acc_norm"] == record["acc_norm"] and len(saved["examples"]) == 23
    # task.limit scores the first N examples only
    assert run_task(tmp_path, f"model.path={ckpt}", f"task.file={data}", "task.limit=4")["n"] == 4


def test_rows_longer_than_the_context_keep_their_end():
    """A row that does not fit keeps its last block_size + 1 tokens: the ending and what precedes it."""
    from nanogpt.runtime.hardware import make_runtime
    from nanogpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=8, vocab_size=20, n_layer=1, n_head=2, n_embd=16)).eval()
    rt = make_runtime("cpu", "float32")
    long_row = (list(range(1, 15)), 3)  # 14 tokens, 3 of them the ending
    sums, means = hellaswag.ending_losses(model, [long_row, (list(range(6, 15)), 3)], rt)
    assert torch.allclose(sums[0], sums[1]) and torch.allclose(means, sums / 3)


# ---------------------------------------------------------------- a trained run, during training

@pytest.fixture
def toy_data(tmp_path, monkeypatch) -> tuple[Path, Path]:
    root = tmp_path / "data"
    write_char_dataset(root, "animals", toy_corpus())
    monkeypatch.setenv("NANOGPT_DATA_ROOT", str(root))
    return root, write_jsonl(tmp_path / "toy.jsonl", toy_examples())


@pytest.mark.slow
def test_a_trained_tiny_run_scores_above_chance_and_logs_during_training(tmp_path, toy_data):
    _, toy = toy_data
    run = tmp_path / "run"
    train_tiny(run, "data.name=animals", "task.max_iters=300", "task.eval_interval=150", "optim.lr=3e-3",
               "optim.warmup_iters=10", "task.hellaswag_interval=100", f"task.hellaswag_file={toy}",
               "task.plot=true")
    logged = [m for m in read_metrics(run) if m["kind"] == "hellaswag"]
    assert [m["iter"] for m in logged] == [0, 100, 200, 300] and all(m["n"] == 8 for m in logged)
    assert logged[-1]["acc_norm"] >= 0.75, logged  # chance is 0.25
    assert (run / "loss.png").stat().st_size > 0
    record = run_task(tmp_path, f"run={run}", f"task.file={toy}")
    assert record["acc_norm"] == logged[-1]["acc_norm"] and record["acc"] >= 0.5
    assert (run / "hellaswag.json").exists() and "iteration 300" in record["source"]


def test_a_char_model_that_cannot_encode_hellaswag_says_so(tmp_path, data_root):
    toy = write_jsonl(tmp_path / "toy.jsonl", toy_examples())  # "says" and "moo" have letters tiny_char lacks
    with pytest.raises(UserError, match="cannot be encoded with this model's tokenizer .* GPT-2 BPE"):
        train_tiny(tmp_path / "run", "task.max_iters=1", "task.hellaswag_interval=1", f"task.hellaswag_file={toy}")


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("line, message", [
    ("{not json", "line 2 is not valid JSON"),
    (json.dumps({"ctx": "a", "endings": ["b", "c", "d"], "label": 0}), "line 2: \"endings\" is not a list of 4"),
    (json.dumps({"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 7}), "line 2: \"label\" is 7, not 0-3"),
    (json.dumps({"endings": ["b", "c", "d", "e"], "label": 1}), "line 2: \"ctx\" is missing"),
    (json.dumps(["a"]), "line 2: not a JSON object"),
])
def test_a_malformed_line_is_named(tmp_path, line, message):
    good = json.dumps(toy_examples()[0])
    path = tmp_path / "bad.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(UserError, match=message):
        hellaswag.read_jsonl(path)
    assert len(hellaswag.read_jsonl(path, limit=1)) == 1  # the good first line alone is fine


def test_bad_input_end_to_end(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ctx": "a", "endings": ["b"], "label": 0}\n')
    proc = launch(["task=hellaswag", "model.path=nowhere", f"task.file={bad}", "hardware=cpu"], tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "bad.jsonl line 1: \"endings\" is not a list of 4 texts" in proc.stderr
    with pytest.raises(UserError, match="does not exist: download https://.* task.file=PATH"):
        hellaswag.load_examples(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="limit must be at least 1"):
        hellaswag.load_examples(str(bad), limit=0)
    good = write_jsonl(tmp_path / "good.jsonl", toy_examples())
    proc = launch(["task=hellaswag", f"task.file={good}", "hardware=cpu"], tmp_path, check=False)
    assert proc.returncode == 2 and "no model given: pass run=RUN_DIR" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_the_reference_is_shown_beside_openai_weights():
    record = {"n": 10042, "examples_from": "Rowan/hellaswag (validation)", "examples_per_s": 1.0, "device": "cpu",
              "dtype": "float32", "acc": 0.28, "acc_norm": 0.29,
              "reference": {"acc": 0.2859, "acc_norm": 0.2955}}
    text = hellaswag.table(record, "gpt2")
    assert "acc          0.2800      0.2859" in text and "acc_norm     0.2900      0.2955" in text


# ---------------------------------------------------------------- sampling without a run

@needs_gpt2_ranks
def test_sample_from_a_hugging_face_checkpoint_without_a_run(tmp_path):
    ckpt = hf_checkpoint(tmp_path / "hf", n_positions=32)
    proc = launch(["task=sample", f"model.path={ckpt}", "task.prompt=Hello there", "task.num_samples=2",
                   "task.max_new_tokens=40", "hardware=cpu"], tmp_path,
                  env={"NANOGPT_GPT2_RANKS": str(GPT2_RANKS)})
    assert proc.stdout.count("---------------") == 2 and proc.stdout.count("Hello there") == 2
    samples = list((tmp_path / "runs" / "_sample").glob("*/samples.txt"))
    assert len(samples) == 1 and samples[0].read_text().count("Hello there") == 2


def test_a_small_file_reports_the_standard_error_of_acc_and_acc_norm():
    """On 8 examples one flipped prediction is 12.5 points: the table and hellaswag.json say how
    uncertain each figure is (lm-eval's standard error: sample std over sqrt(n))."""
    import torch

    from nanogpt.model import GPT, GPTConfig
    from nanogpt.runtime.hardware import make_runtime

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=16, n_layer=1, n_head=2, n_embd=16))
    rng = np.random.default_rng(0)
    encoded = [[(rng.integers(0, 16, 12).tolist(), 4) for _ in range(4)] for _ in range(8)]
    result = hellaswag.score(model, encoded, [0] * 8, make_runtime("cpu", "float32"))
    for key in ("acc", "acc_norm"):
        p = result[key]
        assert result[f"{key}_se"] == pytest.approx(np.std([1] * round(8 * p) + [0] * round(8 * (1 - p)), ddof=1)
                                                    / np.sqrt(8))
    record = {"n": 8, "examples_from": "val.jsonl", "examples_per_s": 1.0, "device": "cpu", "dtype": "float32",
              "acc": 0.25, "acc_norm": 0.5, "acc_se": hellaswag.standard_error(0.25, 8),
              "acc_norm_se": hellaswag.standard_error(0.5, 8)}
    text = hellaswag.table(record, "run")
    assert "acc          0.2500   ± 0.1637" in text and "acc_norm     0.5000   ± 0.1890" in text
