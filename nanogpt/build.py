"""Turning configs into plain objects: the dataset, the model's GPTConfig, a run's model."""
from __future__ import annotations

import dataclasses
import importlib
import logging
import re
from pathlib import Path


from nanogpt import checkpoint, dcp
from nanogpt.data import PREPARE_COMMANDS, TokenDataset, has_data, prepare_command
from nanogpt.errors import UserError
from nanogpt.model import GPT, GPTConfig, padded_vocab_size
from nanogpt.paths import dataset_dir
from nanogpt.pretrained import model_from_state_dict

log = logging.getLogger("nanogpt")


# Corpora prepared on first use (data.auto_prepare): they ship with Python, nothing to download.
# Every other dataset is prepared by its script, run on purpose (OpenWebText is ~17 GB).
EMBEDDED_DATASETS = ("pydoc_char",)
_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def open_dataset(name: str, root: str | None = None, auto_prepare: bool = False,
                 is_main: bool = True) -> TokenDataset:
    check_dataset_name(name)
    path = dataset_dir(name, root)
    if not has_data(path):  # meta.json, llm.c shards, or an unfinished prepare to explain
        if not (auto_prepare and name in EMBEDDED_DATASETS):
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


def check_dataset_name(name) -> None:
    """A dataset name is one directory under the data root: it cannot lead elsewhere."""
    if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name) or ".." in name:
        raise UserError(f"data.name={name!r} is not a dataset name: use the name of a directory under "
                        "the data root (letters, digits, '_', '-', '.'), e.g. data=shakespeare_char; "
                        "for data kept elsewhere, set data.root=DIR")


def known_datasets() -> list[str]:
    here = Path(__file__).parent.parent / "prepare"
    helpers = {"common", "hf", "bpe", "fineweb"}  # fineweb.py makes the datasets PREPARE_COMMANDS names
    scripts = {p.stem for p in here.glob("*.py") if not p.stem.startswith("_")} - helpers
    return sorted(scripts | set(PREPARE_COMMANDS))


def model_args(mcfg, data_vocab: int | None) -> GPTConfig:
    """The model's GPTConfig: the model group's architecture fields, with the vocabulary filled in
    from the data (model.vocab_size=null) and padded if asked."""
    vocab = mcfg.vocab_size or data_vocab
    if vocab is None:
        raise UserError("model.vocab_size is not set and the data has no vocabulary size")
    if data_vocab is not None and data_vocab > vocab:
        raise UserError(f"the data's vocabulary ({data_vocab} tokens) is larger than the model's "
                        f"vocab_size ({vocab}): drop model.vocab_size or set it >= {data_vocab}")
    if mcfg.pad_vocab:
        vocab = padded_vocab_size(vocab)
    try:
        return GPTConfig.from_dict({**dataclasses.asdict(mcfg), "vocab_size": vocab})
    except ValueError as e:
        raise UserError(f"invalid model config: {e}") from e


def load_run(run, which: str = "best", device="cpu", fallback: bool = True) -> tuple[GPT, dict, Path]:
    """(model in eval mode on `device`, checkpoint dict, its path) of a training run directory:
    the one loader of a run's model (sample, eval, export, perplexity).

    which: best or last. With `fallback` (the tasks), a missing or corrupt preferred checkpoint
    falls back to the other one with a warning; without (export and perplexity, whose --which
    names a file), only that file is used and a missing one names the files the run has."""
    if not run:
        raise UserError("no run given: pass run=RUN_DIR (a training run's directory)")
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    order = {"best": ("best.pt", "last.pt"), "last": ("last.pt", "best.pt")}.get(which)
    if order is None:
        raise UserError(f"unknown checkpoint {which!r}: use best or last")
    stale = dcp.stale_consolidation(run_dir, which)  # a sharded run: its .pt may lag its .dcp
    if stale:
        raise UserError(stale)
    paths = [run_dir / "ckpt" / n for n in order[:None if fallback else 1] if (run_dir / "ckpt" / n).is_file()]
    if not paths:
        raise UserError(_no_checkpoint(run_dir, which, fallback))
    failures = []
    for path in paths:  # a corrupt preferred checkpoint falls back to the other one
        try:
            ckpt = checkpoint.load(path, map_location="cpu")
            break
        except checkpoint.BadCheckpoint as e:
            if not fallback:
                raise
            failures.append(e.problem)
    else:
        raise UserError(f"no checkpoint of {run_dir} loads: {' | '.join(failures)}. Train it again "
                        "in a new run directory")
    for failure in failures:
        log.warning("%s; using %s instead", failure, path)
    try:  # the model takes over the checkpoint's tensors: no random init, no second copy
        model = model_from_state_dict(GPTConfig.from_dict(ckpt["model_args"]), ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{path}: the weights do not match its model_args {ckpt['model_args']}: {e}") from e
    return model.to(device).eval(), ckpt, path


def _no_checkpoint(run_dir: Path, which: str, fallback: bool) -> str:
    if fallback:
        return (f"{run_dir} has no checkpoint (ckpt/best.pt or ckpt/last.pt): train it first, or "
                "wait for its first evaluation to write one")
    path = run_dir / "ckpt" / f"{which}.pt"
    have = sorted(p.name for p in path.parent.glob("*.pt")) if path.parent.is_dir() else []
    hint = (f"it has {', '.join(have)}: pass --which {Path(have[0]).stem}" if have else
            "is RUN_DIR a training run's output directory (with ckpt/)?")
    return f"no checkpoint {path}; {hint}"


def load_model_and_tokenizer(run: str | None, which: str, pretrained: str | None, path: str | None, device):
    """(model in eval mode, tokenizer, what it is) for a task that only reads a model: a run's
    checkpoint with the tokenizer it was trained with, or OpenAI's GPT-2 weights (model.pretrained,
    or a local Hugging Face directory in model.path) with GPT-2's BPE."""
    from nanogpt.tokenizer import GPT2Tokenizer, TokenizerError, load_tokenizer

    try:
        if run:
            model, ckpt, ckpt_path = load_run(run, which, device)
            return model, load_tokenizer(ckpt["tokenizer"]), f"{ckpt_path} (iteration {ckpt['iter']})"
        if pretrained or path:
            from nanogpt.pretrained import load_pretrained

            model = load_pretrained(pretrained, path=path).to(device)
            return model, GPT2Tokenizer(), str(path or pretrained)
    except TokenizerError as e:
        raise UserError(str(e)) from e
    raise UserError("no model given: pass run=RUN_DIR (a training run), or OpenAI's weights with "
                    "model=pretrained/gpt2 (gpt2_medium, gpt2_large, gpt2_xl) or model.path=DIR (a local "
                    "Hugging Face GPT-2 directory)")
