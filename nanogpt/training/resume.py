"""What a resumed run may change, decided per setting.

A checkpoint records the config it was trained with. Resuming it with another one is either
refused (the run's data or tokenizer: the run would become another experiment under the same
name; the model's shape is checked by checkpoint.check_shape), warned about and recorded (what
is trained changes: batch, learning-rate schedule, optimizer, seed, dropout, precision, number of
ranks), or only recorded (a longer budget, hardware that changes speed, not the maths). Recorded
changes go to metrics.jsonl as {"kind": "resume", "iter": N, "changed": {key: [old, new]}}, once
the resumed session's first step has run with them.
Everything else (logging, evaluation cadence, plots) may change freely.

Which checkpoint a run resumes from is chosen here too (load_latest): the newest one that loads and
whose optimizer state fits the optimizer its config names.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from nanogpt.checkpoint.single import (
    RESUMABLE,
    BadCheckpoint,
    copy_checkpoint,
    load,
    model_config,
)
from nanogpt.errors import UserError
from nanogpt.io import error_reason
from nanogpt.model import GPT
from nanogpt.run.results import flatten
from nanogpt.training.optim import OPTIM_SCHEMAS, OPTIMIZERS

log = logging.getLogger("nanogpt")

WARNED = ("optim.", "seed", "model.dropout", "model.doc_mask", "data.packing", "hardware.micro_batch_size", "task.tokens_per_step",
          "hardware.dtype", "world_size")
RECORDED = ("task.max_iters", "task.max_tokens", "task.max_flops", "hardware.num_threads",
            "hardware.device", "hardware.compile")


def _matches(key: str, patterns) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def check_resume(ckpt: dict, config: dict, tokenizer_meta: dict, world_size: int, run_dir) -> dict:
    """Refuse a resume on other data; warn about changed training settings. Returns the changes
    to record ({key: [old, new]}), empty when the checkpoint recorded no config."""
    old = ckpt.get("config")
    if not isinstance(old, dict):
        return {}
    check_same_data(ckpt, config, tokenizer_meta, run_dir)
    before, now = flatten(old), flatten(config)
    before["world_size"], now["world_size"] = len(ckpt.get("rng") or [None]), world_size
    changed = {k: [before.get(k), now.get(k)] for k in sorted(now)
               if _matches(k, WARNED + RECORDED) and k in before and before[k] != now[k]}
    warned = [f"{k}: {a} -> {b}" for k, (a, b) in changed.items() if _matches(k, WARNED)]
    if warned:
        log.warning("resuming %s with settings it was not trained with (%s): the run goes on with "
                    "the new ones from here, recorded in metrics.jsonl; to compare settings, train "
                    "each in its own run directory instead", run_dir, "; ".join(warned))
    return changed


def check_same_data(ckpt: dict, config: dict, tokenizer_meta: dict, run_dir) -> None:
    """Refuse to resume a run on another dataset or tokenizer than it was trained on."""
    old, old_tokenizer = ckpt.get("config"), ckpt.get("tokenizer")
    if not isinstance(old, dict):
        return
    was = (old.get("data") or {}).get("name")
    now = config["data"]["name"]
    if was is not None and was != now:
        raise UserError(f"{run_dir} was trained on {was!r}; this command has data.name={now}. A run "
                        f"keeps its data: resume it with data.name={was}, or train on {now} in a new run "
                        "directory (run=NEW_DIR; to start from this run's weights, export them with "
                        "python -m nanogpt.export and pass model.path=EXPORT_DIR)")
    if old_tokenizer is not None and old_tokenizer != tokenizer_meta:
        raise UserError(f"{run_dir} was trained with another tokenizer than the data of this command "
                        f"has ({_describe(old_tokenizer)} vs {_describe(tokenizer_meta)}): the same token ids "
                        "would mean other text. Prepare the data again with the run's tokenizer, or "
                        "train in a new run directory (run=NEW_DIR)")


def _describe(tokenizer) -> str:
    if isinstance(tokenizer, dict) and tokenizer.get("kind") == "char":
        return f"char, {len(tokenizer.get('chars') or [])} characters"
    return str((tokenizer or {}).get("kind", tokenizer)) if isinstance(tokenizer, dict) else repr(tokenizer)


def tokens_trained(ckpt: dict, start_iter: int, tokens_per_step: int) -> int:
    """Tokens a checkpoint's run had trained on: recorded since the count became part of the
    checkpoint; before, from the batch its config names (a resume may have changed it)."""
    tokens = ckpt.get("tokens")
    if isinstance(tokens, int) and not isinstance(tokens, bool):
        return tokens
    old = flatten(ckpt.get("config") or {})
    per_step = old.get("task.tokens_per_step")
    if not per_step and old.get("hardware.micro_batch_size") and old.get("model.block_size"):
        per_step = old["hardware.micro_batch_size"] * old["model.block_size"] * len(ckpt.get("rng") or [None])
    return start_iter * (per_step or tokens_per_step)


def load_latest(run_dir: Path, repair: bool = False) -> tuple[Path | None, dict | None]:
    """The newest checkpoint of a run that loads, for resuming: the higher iteration of last.pt
    and best.pt (a kill between writing best.pt and copying it to last.pt leaves best.pt ahead).
    A file that does not load is skipped with a warning, so one bad file never stops a resume;
    UserError when checkpoints exist but none of them loads. (None, None): no checkpoint.
    repair (the process holding the run's lock): when best.pt is chosen, last.pt becomes a copy
    of it, so last.pt is never left behind (a run stopped at max_iters would not rewrite it)."""
    ckpt_dir = Path(run_dir) / "ckpt"
    candidates, failures = [], []
    for rank, name in enumerate(RESUMABLE):
        path = ckpt_dir / name
        if not path.exists():
            continue
        try:  # mmap: reading the iteration and checking the optimizer's state cost no tensor reads
            peek = load(path, mmap=True)
            it = _resume_iter(peek, path)
            del peek
        except BadCheckpoint as e:
            failures.append(e.problem)
            continue
        candidates.append((-it, rank, path))
    for neg_it, _, path in sorted(candidates):
        try:
            ckpt = load(path)
        except BadCheckpoint as e:
            failures.append(e.problem)
            continue
        for failure in failures:
            log.warning("%s; resuming from %s (iteration %d) instead", failure, path, -neg_it)
        if repair and path.name == "best.pt":
            log.info("%s is older than %s or does not load (a run stopped between writing them): "
                     "replacing it with a copy of best.pt", ckpt_dir / "last.pt", path)
            copy_checkpoint(path, ckpt_dir / "last.pt")
        return path, ckpt
    if failures:
        raise UserError(f"no checkpoint of {run_dir} loads: {' | '.join(failures)}. Move "
                        f"{ckpt_dir} aside to start over, or train in a new run directory")
    return None, None


def _resume_iter(ckpt: dict, path: Path) -> int:
    if not isinstance(ckpt.get("iter"), int) or "optimizer" not in ckpt:
        raise BadCheckpoint(f"{path} holds a model but no training state (iter, optimizer): it can "
                            "initialise a run (model.path) but not resume one",
                            "Put a training checkpoint in ckpt/, or train in a new run directory")
    problem = _optimizer_problem(ckpt)
    if problem:
        raise BadCheckpoint(f"{path}: its optimizer state does not fit its model ({problem})",
                            "Use the run's other checkpoint (ckpt/best.pt or ckpt/last.pt), or train in "
                            "a new run directory")
    return ckpt["iter"]


def _optimizer_problem(ckpt: dict) -> str | None:
    """Load the optimizer state into the optimizer its config names, built for a model on the
    meta device (no memory, no tensor read), and compare each parameter's state with its shape:
    torch's load_state_dict checks only the number of parameters per group, and a moment of the
    wrong shape would fail at the first step."""
    config = ckpt.get("config")
    optim = config.get("optim") if isinstance(config, dict) else None
    name = (optim.get("name") if isinstance(optim, dict) else None) or "adamw"
    if name not in OPTIMIZERS:
        return None  # the resume refuses it by name (optim.check_resumable)
    with torch.device("meta"):
        model = GPT(model_config(ckpt["model_args"]))
    optimizer = OPTIMIZERS[name](model, OPTIM_SCHEMAS[name](), "meta")
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except Exception as e:  # noqa: BLE001 - what torch's load_state_dict raises on another layout
        return error_reason(e)
    for opt in getattr(optimizer, "optimizers", {"": optimizer}).values():
        for group in opt.param_groups:
            for p in group["params"]:
                for key, value in opt.state.get(p, {}).items():
                    if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                        return f"{key} of a {tuple(p.shape)} parameter is {tuple(value.shape)}"
    return None
