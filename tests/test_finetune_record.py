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


# The hub commits of OpenAI's weights, as public code pins them (e.g. huggingface_hub's own
# resolve_revision("openai-community/gpt2") example; snapshot paths models--openai-community--
# gpt2-large/snapshots/32b71b1...); conf/model/pretrained/*.yaml ask for these, not for `main`.
PINNED = {"gpt2": "607a30d783dfa663caf39e06633721c8d4cfcd7e",
          "gpt2_medium": "6dcaa7a952f72f9298047fd5137cd6e4f05f41da",
          "gpt2_large": "32b71b12589c2f8d625668d2335a01cac3249519",
          "gpt2_xl": "15ea56dee5df4983c59b2538573817e1667135e2"}


def _fake_hub(monkeypatch, tmp_path, small_hf_dir) -> list:
    """huggingface_hub.hf_hub_download answering from a fake cache at whatever commit is asked
    (main: "1" * 40); the (repo, revision) pairs asked for are returned in the list."""
    import huggingface_hub

    asked = []

    def download(repo_id, filename, revision=None, **kw):
        asked.append((repo_id, revision))
        snapshot = tmp_path / f"models--{repo_id.replace('/', '--')}" / "snapshots" / (revision or "1" * 40)
        snapshot.mkdir(parents=True, exist_ok=True)
        if not (snapshot / filename).exists():
            (snapshot / filename).symlink_to(small_hf_dir / filename)
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return asked


def test_openai_presets_load_the_hub_commit_they_pin(tmp_path, small_hf_dir, monkeypatch):
    """model=pretrained/* fetched `main` (the hub could change the weights under a run); each
    preset now names a commit, which the download asks for and the run records."""
    from inprocess import make_config

    from nanogpt.hf.weights import load_pretrained

    for preset, commit in PINNED.items():
        assert make_config([f"model=pretrained/{preset}"]).model.revision == commit, preset
    asked = _fake_hub(monkeypatch, tmp_path, small_hf_dir)
    model = load_pretrained("gpt2", revision=PINNED["gpt2"])
    assert set(asked) == {("openai-community/gpt2", PINNED["gpt2"])}
    assert model.weights_source == {"hub": "openai-community/gpt2", "revision": PINNED["gpt2"],
                                    "commit": PINNED["gpt2"]}


@needs_gpt2_ranks  # GPT-2's tokenizer comes with OpenAI's weights
def test_evaluation_tasks_ask_for_the_presets_commit(tmp_path, small_hf_dir, monkeypatch):
    """task=hellaswag / core / sample on model=pretrained/gpt2 loaded `main` whatever the preset said."""
    from nanogpt.checkpoint.load import load_model_and_tokenizer

    asked = _fake_hub(monkeypatch, tmp_path, small_hf_dir)
    _, _, source = load_model_and_tokenizer(None, "best", "gpt2", None, "cpu", revision=PINNED["gpt2"])
    assert set(asked) == {("openai-community/gpt2", PINNED["gpt2"])}
    assert source == f"openai-community/gpt2 from the Hugging Face hub at commit {PINNED['gpt2']} (revision {PINNED['gpt2']})"


def test_command_lines_ask_for_the_presets_commit(tmp_path, monkeypatch):
    """`python -m nanogpt.perplexity --model gpt2-xl` and `nanogpt.lm_eval --model ...` fetched
    `main`; they now ask for the commit conf/model/pretrained pins (--revision main: the newest)."""
    import nanogpt.hf.weights as weights
    from nanogpt.checkpoint import load as checkpoint_load
    from nanogpt.evals import lm_eval, perplexity
    from nanogpt.hf.weights import preset_revision

    for preset, commit in PINNED.items():
        assert preset_revision(preset.replace("_", "-")) == commit
        assert preset_revision(f"openai-community/{preset.replace('_', '-')}") == commit
    assert preset_revision("someone/other-model") is None and preset_revision(None) is None

    asked = []

    class Stop(Exception):
        pass

    def fake_load(name, path=None, revision=None, **kw):
        asked.append((name, revision))
        raise Stop

    monkeypatch.setattr(weights, "load_pretrained", fake_load)
    text = tmp_path / "t.txt"
    text.write_text("hello world\n")
    for argv, want in ((["--model", "gpt2-xl"], PINNED["gpt2_xl"]), (["--model", "gpt2", "--revision", "main"], "main")):
        with pytest.raises(Stop):
            perplexity.main([*argv, "--file", str(text), "--device", "cpu"])
        assert asked.pop() == (argv[1], want)
    monkeypatch.setattr(checkpoint_load, "load_model_and_tokenizer",
                        lambda run, which, pretrained, path, device, revision=None: fake_load(pretrained, revision=revision))
    with pytest.raises(Stop):
        lm_eval.load(None, "best", "gpt2-medium", None, "cpu", "float32")
    assert asked.pop() == ("gpt2-medium", PINNED["gpt2_medium"])
