"""`task=eval`: train/val loss and perplexity of a run's checkpoint (or OpenAI's GPT-2 weights),
as a table and as JSON."""
from __future__ import annotations

import logging
import math
from pathlib import Path

import torch

from nanogpt.build import load_run, open_dataset
from nanogpt.data import Batches, eval_batch
from nanogpt.errors import UserError
from nanogpt.hardware import runtime
from nanogpt.metrics import progress, write_json_atomic

log = logging.getLogger("nanogpt")

# nanoGPT's measurements of OpenAI's checkpoints on OpenWebText (train, val)
GPT2_BASELINES = {"gpt2": (3.11, 3.12), "gpt2-medium": (2.85, 2.84),
                  "gpt2-large": (2.66, 2.67), "gpt2-xl": (2.56, 2.54)}


@torch.inference_mode()
def split_losses(model, dataset, block_size: int, batch_size: int, eval_iters: int, seed: int,
                 rt, splits=("train", "val")) -> dict:
    model.eval()
    batches = Batches(dataset, block_size, batch_size, seed, rt.device)
    out = {}
    for split in splits:
        if split not in dataset.splits:
            raise UserError(f"unknown split {split!r}: use train and/or val")
        total = torch.zeros((), device=rt.device, dtype=torch.float64)  # summed on the device: no sync per batch
        for k in progress(range(eval_iters), desc=f"eval {split}", unit="batch"):
            x, y = eval_batch(batches, split, k)
            with rt.autocast():
                _, loss = model(x, y)
            total += loss.double()
        mean = total.item() / eval_iters
        out[split] = {"loss": mean, "perplexity": math.exp(mean), "tokens": eval_iters * batch_size * block_size}
    return out


def evaluate(cfg, out_dir: Path, data_chosen: bool = False) -> dict:
    """data_chosen: the command named data=...; otherwise a run is scored on its own data."""
    hw, t = cfg.hardware, cfg.task
    rt = runtime(hw)
    if cfg.run:
        model, ckpt, path = load_run(cfg.run, "best", rt.device)
        source = str(path)
        data_name = cfg.data.name if data_chosen else ckpt["config"]["data"]["name"]
    elif cfg.model.pretrained or cfg.model.path:
        from nanogpt.pretrained import load_pretrained

        model = load_pretrained(cfg.model.pretrained, path=cfg.model.path).to(rt.device)
        source, data_name = cfg.model.path or cfg.model.pretrained, cfg.data.name
    else:
        raise UserError("nothing to evaluate: pass run=RUN_DIR, or a pretrained model "
                        "(model=pretrained/gpt2 or model.path=DIR)")
    dataset = open_dataset(data_name, cfg.data.root, cfg.data.auto_prepare)
    if dataset.vocab_size > model.config.vocab_size:
        raise UserError(f"{data_name}'s vocabulary ({dataset.vocab_size}) is larger than the model's "
                        f"({model.config.vocab_size}): evaluate on data with the model's tokenizer")
    block = min(model.config.block_size, cfg.model.block_size if not cfg.run else model.config.block_size)
    dataset.check_block_size(block)
    batch = hw.eval_batch_size or hw.micro_batch_size
    results = split_losses(model, dataset, block, batch, t.eval_iters, cfg.seed, rt, tuple(t.splits))
    reference = GPT2_BASELINES.get(cfg.model.pretrained) if data_name == "owt" and not cfg.run else None

    print(f"\n{source} on {data_name} ({t.eval_iters} batches of {batch} x {block} tokens per split)")
    print(f"{'split':<8}{'loss':>10}{'perplexity':>14}" + (f"{'reference':>12}" if reference else ""))
    for i, (split, r) in enumerate(results.items()):
        ref = ""
        if reference:
            ref = f"{reference[0 if split == 'train' else 1]:>12.2f}"
        print(f"{split:<8}{r['loss']:>10.4f}{r['perplexity']:>14.2f}{ref}")
    record = {"source": source, "data": data_name, "block_size": block, "batch_size": batch,
              "eval_iters": t.eval_iters, **results}
    if reference:
        record["reference"] = {"train": reference[0], "val": reference[1]}
    out = Path(t.out) if t.out else (Path(cfg.run) / "eval.json" if cfg.run else out_dir / "eval.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, record)
    log.info("wrote %s", out)
    return record


def run(cfg, run_dir: Path, dist) -> float:
    """task=eval: the val loss. A run is scored on the data it trained on, unless the command
    named other data (data=... or data.name=...)."""
    return evaluate(cfg, run_dir, data_chosen=_command_chose_data())["val"]["loss"]


def _command_chose_data() -> bool:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return any(o.split("=")[0] in ("data", "data.name") for o in HydraConfig.get().overrides.task)
