"""What a resumed run may change, decided per setting.

A checkpoint records the config it was trained with. Resuming it with another one is either
refused (the run's data or tokenizer: the run would become another experiment under the same
name; the model's shape is checked by checkpoint.check_shape), warned about and recorded (what
is trained changes: batch, learning-rate schedule, optimizer, seed, dropout, precision, number of
ranks), or only recorded (a longer budget, hardware that changes speed, not the maths). Recorded
changes go to metrics.jsonl as {"kind": "resume", "iter": N, "changed": {key: [old, new]}}, once
the resumed session's first step has run with them.
Everything else (logging, evaluation cadence, plots) may change freely.
"""
from __future__ import annotations

import logging

from nanogpt.errors import UserError
from nanogpt.results import flatten

log = logging.getLogger("nanogpt")

WARNED = ("optim.", "seed", "model.dropout", "hardware.micro_batch_size", "task.tokens_per_step",
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
