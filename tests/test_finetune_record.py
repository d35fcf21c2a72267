"""A finetune from a local Hugging Face directory records the model it trained, and which
weights it loaded (issue 25, items 2 and 9)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import QUICK, launch, needs_gpt2_ranks

from nanogpt.hf.export import export_hf
from nanogpt.hf.weights import describe_source, snapshot_commit, weights_source
from nanogpt.model import GPT, GPTConfig

# the finetune preset on the tiny char data: its model.path, a batch of a few micro-batches
FINETUNE = ["experiment=finetune_shakespeare", *[a for a in QUICK if not a.startswith("model")],
            "task.tokens_per_step=64", "task.eval_interval=2", "hardware.micro_batch_size=2"]


@pytest.fixture(scope="module")
def small_hf_dir(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide GPT-2 of block 32, written by nanogpt's own export."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=64, bias=True))
    return export_hf(model, tmp_path_factory.mktemp("hf") / "small")


def test_a_finetune_records_the_architecture_of_the_weights_it_loaded(tmp_path, data_root, small_hf_dir):
    run = tmp_path / "run"
    proc = launch([*FINETUNE, f"model.path={small_hf_dir}", "task.max_iters=2", f"run={run}"], cwd=tmp_path)
    expected = {"n_layer": 2, "n_embd": 64, "n_head": 2, "block_size": 32, "vocab_size": 64,
                "pretrained": None, "path": str(small_hf_dir)}
    hydra_model = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["model"]
    summary = json.loads((run / "summary.json").read_text())
    ckpt = torch.load(run / "ckpt" / "last.pt", weights_only=True)
    for recorded in (hydra_model, summary["config"]["model"], ckpt["config"]["model"]):
        assert {k: recorded[k] for k in expected} == expected
    assert ckpt["model_args"]["n_layer"] == 2
    assert f"weights loaded: model.path={small_hf_dir.resolve()} (2 layers x 64 wide, 2 heads, block 32" in proc.stdout
    assert summary["weights"] == {"path": str(small_hf_dir.resolve())}

    # the same command, further: resumes the 2 x 64 model (the preset's 12 x 768 did not fit it)
    proc = launch([*FINETUNE, f"model.path={small_hf_dir}", "task.max_iters=4", "init_from=resume",
                   f"run={run}"], cwd=tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["iters"] == 4 and summary["config"]["model"]["n_layer"] == 2
    assert summary["weights"] == {"path": str(small_hf_dir.resolve())}


def test_hub_weights_record_the_commit_they_resolved_to(tmp_path):
    snapshot = tmp_path / "models--openai-community--gpt2" / "snapshots" / "607a30d783dfa663caf39e06633721c8d4cfcd7e"
    snapshot.mkdir(parents=True)
    source = weights_source("gpt2", None, [snapshot / "model.safetensors"])
    assert source == {"hub": "openai-community/gpt2", "revision": "main",
                      "commit": "607a30d783dfa663caf39e06633721c8d4cfcd7e"}
    assert describe_source(source) == ("openai-community/gpt2 from the Hugging Face hub at commit "
                                       "607a30d783dfa663caf39e06633721c8d4cfcd7e (revision main)")
    assert snapshot_commit(tmp_path / "elsewhere" / "model.safetensors") is None


@needs_gpt2_ranks  # GPT-2's tokenizer comes with OpenAI's weights
def test_a_task_on_hub_weights_names_the_commit_it_scored(tmp_path, small_hf_dir, monkeypatch):
    """task=hellaswag / eval / lm_eval on model=pretrained/gpt2: their JSON's "source" was "gpt2"."""
    import huggingface_hub

    from nanogpt.checkpoint.load import load_model_and_tokenizer

    commit = "1" * 40
    snapshot = tmp_path / "models--openai-community--gpt2" / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        (snapshot / f).symlink_to(small_hf_dir / f)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kw: str(snapshot / filename))
    _, _, source = load_model_and_tokenizer(None, "best", "gpt2", None, "cpu")
    assert source == f"openai-community/gpt2 from the Hugging Face hub at commit {commit} (revision main)"
