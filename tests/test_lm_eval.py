"""The lm-eval adapter (nanogpt/evals/lm_eval.py) runs local tasks (YAMLs pointing at jsonl files the
test writes) and matches lm-eval's own Hugging Face model on the same random-weight checkpoint."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("lm_eval")
transformers = pytest.importorskip("transformers")

from conftest import GPT2_RANKS, REPO, needs_gpt2_ranks  # noqa: E402
from test_hellaswag import random_examples  # noqa: E402

TASKS = {
    "toy_mc": """
task: toy_mc
dataset_path: json
dataset_kwargs: {data_files: {test: "DATA/mc.jsonl"}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{ctx}}"
doc_to_target: "{{label}}"
doc_to_choice: "{{endings}}"
metric_list: [{metric: acc}, {metric: acc_norm}]
""",
    "toy_ppl": """
task: toy_ppl
dataset_path: json
dataset_kwargs: {data_files: {test: "DATA/docs.jsonl"}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{text}}"
metric_list: [{metric: word_perplexity}, {metric: byte_perplexity}, {metric: bits_per_byte}]
""",
    "toy_gen": """
task: toy_gen
dataset_path: json
dataset_kwargs: {data_files: {test: "DATA/mc.jsonl"}}
test_split: test
output_type: generate_until
doc_to_text: "{{ctx}}"
doc_to_target: "{{endings[0]}}"
generation_kwargs: {until: ["."], max_gen_toks: 6, do_sample: false}
metric_list: [{metric: exact_match}]
""",
}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A random GPT-2 (GPT-2's vocabulary, a 64-token context) with tokenizer files, and local tasks."""
    if not GPT2_RANKS.is_file():
        pytest.skip(f"{GPT2_RANKS} not present (../shared)")
    import torch

    from nanogpt.hf.export import gpt2_tokenizer_files
    from nanogpt.tokenizer import GPT2Tokenizer

    root = tmp_path_factory.mktemp("lm_eval")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).eval().save_pretrained(root / "hf")
    for name, text in gpt2_tokenizer_files(GPT2Tokenizer(GPT2_RANKS).enc._mergeable_ranks, 64).items():
        (root / "hf" / name).write_text(text)
    (root / "mc.jsonl").write_text("".join(json.dumps(e) + "\n" for e in random_examples(12, seed=3)))
    rng = np.random.default_rng(5)
    words = "the of and to in a is that for it as was with be by on not he this are or his".split()
    docs = [" ".join(rng.choice(words, int(rng.integers(5, 150)))) for _ in range(6)]  # some span windows
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (root / "tasks").mkdir()
    for name, text in TASKS.items():
        (root / "tasks" / f"{name}.yaml").write_text(text.replace("DATA", str(root)))
    return root


def evaluate_with(model, root: Path) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    return lm_eval.simple_evaluate(model=model, tasks=list(TASKS), task_manager=TaskManager(include_path=str(root / "tasks"), include_defaults=False),
                                   log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0,
                                   fewshot_random_seed=0, bootstrap_iters=0)


@needs_gpt2_ranks
def test_the_adapter_matches_lm_evals_hf_model(setup, monkeypatch):
    monkeypatch.setenv("NANOGPT_GPT2_RANKS", str(GPT2_RANKS))
    from lm_eval.models.huggingface import HFLM

    from nanogpt.evals.lm_eval import NanoGPTLM, load

    model, tokenizer, rt, _ = load(None, "best", None, str(setup / "hf"), "cpu", "float32")
    ours = evaluate_with(NanoGPTLM(model, tokenizer, rt, batch_size=5), setup)
    theirs = evaluate_with(HFLM(pretrained=str(setup / "hf"), device="cpu", batch_size=5, dtype="float32"), setup)
    for task, metric in [("toy_mc", "acc,none"), ("toy_mc", "acc_norm,none"), ("toy_gen", "exact_match,none")]:
        assert ours["results"][task][metric] == theirs["results"][task][metric], (task, metric)
    for metric in ("word_perplexity,none", "byte_perplexity,none", "bits_per_byte,none"):
        assert ours["results"]["toy_ppl"][metric] == pytest.approx(theirs["results"]["toy_ppl"][metric], rel=1e-4)
    # per request: the same log-likelihoods, greedy flags and generations
    for task in TASKS:
        for a, b in zip(ours["samples"][task], theirs["samples"][task]):
            for ra, rb in zip(a["resps"], b["resps"]):
                if task == "toy_gen":
                    assert ra == rb
                elif task == "toy_mc":
                    assert ra[0][0] == pytest.approx(rb[0][0], abs=1e-3) and ra[0][1] == rb[0][1]
                else:
                    assert ra[0] == pytest.approx(rb[0], rel=1e-4)


@needs_gpt2_ranks
def test_the_command_line_on_a_hugging_face_directory(setup, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "nanogpt.lm_eval", "--path", str(setup / "hf"), "--tasks", "toy_mc",
                           "--include-path", str(setup / "tasks"), "--only-include-path", "--dtype", "float32", "--device", "cpu",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "NANOGPT_GPT2_RANKS": str(GPT2_RANKS), "HF_DATASETS_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "toy_mc" in proc.stdout and "acc_norm" in proc.stdout
    record = json.loads(out.read_text())
    assert 0 <= record["results"]["toy_mc"]["acc,none"] <= 1 and record["source"] == str(setup / "hf")


def test_bad_input(tmp_path):
    from nanogpt.errors import UserError
    from nanogpt.evals.lm_eval import main

    with pytest.raises(UserError, match="give one model: a run directory, --model gpt2 .* or --path DIR"):
        main(["--tasks", "x"])
    with pytest.raises(UserError, match="give one model"):
        main([str(tmp_path), "--model", "gpt2", "--tasks", "x"])
    with pytest.raises(UserError, match="run directory .*nowhere does not exist"):
        main([str(tmp_path / "nowhere"), "--tasks", "x"])


@needs_gpt2_ranks
def test_registered_as_an_lm_eval_model(setup, monkeypatch):
    monkeypatch.setenv("NANOGPT_GPT2_RANKS", str(GPT2_RANKS))
    from lm_eval.api.registry import get_model

    from nanogpt.evals.lm_eval import NanoGPTLM

    assert get_model("nanogpt") is NanoGPTLM
    lm = NanoGPTLM.create_from_arg_string(f"path={setup / 'hf'},device=cpu,dtype=float32",
                                          {"batch_size": 3, "device": None})
    assert (lm.batch_size, lm.max_length, lm.eot_token_id) == (3, 64, 50256)
    assert lm.tok_decode(lm.tok_encode("Hello world")) == "Hello world"


def test_a_task_whose_data_cannot_be_downloaded_is_one_error_line(tmp_path, trained_run):
    """Offline, a task on the hub (arc_easy: allenai/ai2_arc) ended in a ConnectionError /
    OfflineModeIsEnabled traceback. A local task YAML naming a hub dataset takes the same path in
    seconds (no indexing of lm-eval's own task files)."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hub_mc.yaml").write_text(TASKS["toy_mc"].replace("toy_mc", "hub_mc").replace(
        'dataset_path: json\ndataset_kwargs: {data_files: {test: "DATA/mc.jsonl"}}',
        "dataset_path: allenai/ai2_arc\ndataset_name: ARC-Easy"))
    proc = subprocess.run([sys.executable, "-m", "nanogpt.lm_eval", str(trained_run), "--tasks", "hub_mc",
                           "--include-path", str(tmp_path / "tasks"), "--only-include-path", "--device", "cpu"],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [error] = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: the data of lm-eval task hub_mc could not be downloaded (")
    assert "allenai/ai2_arc" in error and "--include-path DIR" in error


@needs_gpt2_ranks
def test_hellaswag_and_lm_eval_differ_only_in_normalisation_on_the_same_strings(setup, monkeypatch):
    """The documented comparison (docs/evaluation.md): on the same examples, with the same
    context and endings (toy_mc: no preprocessing, lm-eval's " " before each ending as ours),
    both score the same log-likelihoods, so acc agrees; acc_norm is per token in task=hellaswag
    and per character in lm-eval, and each follows its rule exactly."""
    monkeypatch.setenv("NANOGPT_GPT2_RANKS", str(GPT2_RANKS))
    from nanogpt.evals import hellaswag
    from nanogpt.evals.lm_eval import NanoGPTLM, load

    model, tokenizer, rt, _ = load(None, "best", None, str(setup / "hf"), "cpu", "float32")
    examples = hellaswag.read_jsonl(str(setup / "mc.jsonl"))
    ours = hellaswag.score(model, hellaswag.encode(examples, tokenizer), [e.label for e in examples], rt)
    theirs = evaluate_with(NanoGPTLM(model, tokenizer, rt, batch_size=5), setup)["samples"]["toy_mc"]
    theirs = sorted(theirs, key=lambda s: s["doc_id"])
    for ex, got, their in zip(examples, ours["examples"], theirs):
        loglik = np.array([r[0][0] for r in their["resps"]])
        np.testing.assert_allclose(-np.array(got["sum_loss"]), loglik, atol=1e-3)  # the same scores
        assert their["acc"] == float(got["pred"] == ex.label)
        by_chars = int(np.argmax(loglik / np.array([len(e) for e in ex.endings])))  # lm-eval's acc_norm
        assert their["acc_norm"] == float(by_chars == ex.label)
        assert got["pred_norm"] == int(np.argmin(got["mean_loss"]))  # ours: per token
