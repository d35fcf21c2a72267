"""Turning configs into plain objects: the dataset, the model's GPTConfig, a run's model."""
from __future__ import annotations

import importlib
import logging
from pathlib import Path


from nanogpt import checkpoint
from nanogpt.data import PREPARE_COMMANDS, TokenDataset, dataset_dir, has_data, prepare_command
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig, padded_vocab_size

log = logging.getLogger("nanogpt")


def open_dataset(name: str, root: str | None = None, auto_prepare: bool = False,
                 is_main: bool = True) -> TokenDataset:
    path = dataset_dir(name, root)
    if not has_data(path):
        if not auto_prepare:
            script = Path("prepare") / f"{name}.py"
            known = name in PREPARE_COMMANDS or (Path(__file__).parent.parent / script).exists()
            hint = (f"run `{prepare_command(name)}`" if known
                    else f"no prepare script is named {name!r}: check data=... (known: "
                         f"{', '.join(known_datasets())})")
            raise UserError(f"no prepared data for {name!r} at {path}: {hint}")
        if is_main:  # other ranks wait at a barrier in the caller, then open what rank 0 wrote
            log.info("preparing %s in %s (first use)", name, path)
            importlib.import_module(f"prepare.{name}").prepare(path)
    return TokenDataset(path)


def known_datasets() -> list[str]:
    here = Path(__file__).parent.parent / "prepare"
    scripts = {p.stem for p in here.glob("*.py") if not p.stem.startswith("_")} - {"common", "hf", "bpe", "fineweb"}
    return sorted(scripts | set(PREPARE_COMMANDS))


def model_args(mcfg, data_vocab: int | None) -> GPTConfig:
    """GPTConfig from the model config group and the data's vocabulary."""
    vocab = mcfg.vocab_size or data_vocab
    if vocab is None:
        raise UserError("model.vocab_size is not set and the data has no vocabulary size")
    if data_vocab is not None and data_vocab > vocab:
        raise UserError(f"the data's vocabulary ({data_vocab} tokens) is larger than the model's "
                        f"vocab_size ({vocab}): drop model.vocab_size or set it >= {data_vocab}")
    if mcfg.pad_vocab:
        vocab = padded_vocab_size(vocab)
    try:
        return GPTConfig(block_size=mcfg.block_size, vocab_size=vocab, n_layer=mcfg.n_layer,
                         n_head=mcfg.n_head, n_embd=mcfg.n_embd, dropout=mcfg.dropout, bias=mcfg.bias)
    except ValueError as e:
        raise UserError(f"invalid model config: {e}") from e


def load_run(run: str | None, which: str = "best", device="cpu") -> tuple[GPT, dict, Path]:
    """The model of a finished or running run directory (for sampling / evaluation)."""
    if not run:
        raise UserError("no run given: pass run=RUN_DIR (a training run's directory)")
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    order = {"best": ("best.pt", "last.pt"), "last": ("last.pt", "best.pt")}.get(which)
    if order is None:
        raise UserError(f"unknown checkpoint {which!r}: use best or last")
    paths = [run_dir / "ckpt" / n for n in order if (run_dir / "ckpt" / n).exists()]
    if not paths:
        raise UserError(f"{run_dir} has no checkpoint (ckpt/best.pt or ckpt/last.pt): train it "
                        "first, or wait for its first evaluation to write one")
    failures = []
    for path in paths:  # a corrupt preferred checkpoint falls back to the other one
        try:
            ckpt = checkpoint.load(path, map_location="cpu")
            break
        except checkpoint.BadCheckpoint as e:
            failures.append(e.problem)
    else:
        raise UserError(f"no checkpoint of {run_dir} loads: {' | '.join(failures)}. Train it again "
                        "in a new run directory")
    for failure in failures:
        log.warning("%s; using %s instead", failure, path)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device), ckpt, path


def load_model_and_tokenizer(run: str | None, which: str, pretrained: str | None, path: str | None, device):
    """(model in eval mode, tokenizer, what it is) for a task that only reads a model: a run's
    checkpoint with the tokenizer it was trained with, or OpenAI's GPT-2 weights (model.pretrained,
    or a local Hugging Face directory in model.path) with GPT-2's BPE."""
    from nanogpt.tokenizer import GPT2Tokenizer, TokenizerError, load_tokenizer

    try:
        if run:
            model, ckpt, ckpt_path = load_run(run, which, device)
            return model.eval(), load_tokenizer(ckpt["tokenizer"]), f"{ckpt_path} (iteration {ckpt['iter']})"
        if pretrained or path:
            from nanogpt.pretrained import load_pretrained

            model = load_pretrained(pretrained, path=path).to(device)
            return model, GPT2Tokenizer(), str(path or pretrained)
    except TokenizerError as e:
        raise UserError(str(e)) from e
    raise UserError("no model given: pass run=RUN_DIR (a training run), or OpenAI's weights with "
                    "model=pretrained/gpt2 (gpt2_medium, gpt2_large, gpt2_xl) or model.path=DIR (a local "
                    "Hugging Face GPT-2 directory)")
