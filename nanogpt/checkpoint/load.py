"""The one loader of a model: a training run's checkpoint, OpenAI's GPT-2 weights, or a local
Hugging Face directory, with the tokenizer that goes with it."""
from __future__ import annotations

import logging
from pathlib import Path

from nanogpt.checkpoint import sharded as dcp
from nanogpt.checkpoint import single as checkpoint
from nanogpt.errors import UserError
from nanogpt.hf.weights import model_from_state_dict
from nanogpt.model import GPT, GPTConfig

log = logging.getLogger("nanogpt")


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


def load_model_and_tokenizer(run: str | None, which: str, pretrained: str | None, path: str | None, device,
                             revision: str | None = None):
    """(model in eval mode, tokenizer, what it is) for a task that only reads a model: a run's
    checkpoint with the tokenizer it was trained with, or OpenAI's GPT-2 weights (model.pretrained
    at the hub `revision`, the presets' pinned commit; or a local Hugging Face directory in
    model.path) with GPT-2's BPE."""
    from nanogpt.tokenizer import GPT2Tokenizer, TokenizerError, load_tokenizer

    try:
        if run:
            model, ckpt, ckpt_path = load_run(run, which, device)
            return model, load_tokenizer(ckpt["tokenizer"]), f"{ckpt_path} (iteration {ckpt['iter']})"
        if pretrained or path:
            from nanogpt.hf.weights import describe_source, load_pretrained

            model = load_pretrained(pretrained, path=path, revision=revision).to(device)
            # hub weights: the repository and the commit they resolved to (what was scored)
            return model, GPT2Tokenizer(), str(path) if path else describe_source(model.weights_source)
    except TokenizerError as e:
        raise UserError(str(e)) from e
    raise UserError("no model given: pass run=RUN_DIR (a training run), or OpenAI's weights with "
                    "model=pretrained/gpt2 (gpt2_medium, gpt2_large, gpt2_xl) or model.path=DIR (a local "
                    "Hugging Face GPT-2 directory)")
