"""`task=eval`: train/val loss and perplexity of a run's checkpoint (or OpenAI's GPT-2 weights),
as a table and as JSON."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from nanogpt.checkpoint.load import load_run
from nanogpt.config import ConfigError, TaskConfig, at_least, one_of
from nanogpt.data.batches import Batches, eval_batch
from nanogpt.data.catalog import open_dataset
from nanogpt.errors import UserError
from nanogpt.evals.bpb import bits_per_byte, nats_and_bytes, token_bytes_table
from nanogpt.run.metrics import progress, write_task_record
from nanogpt.runtime.hardware import runtime
from nanogpt.runtime.parallel import lockstep

log = logging.getLogger("nanogpt")

# nanoGPT's measurements of OpenAI's checkpoints on OpenWebText (train, val)
GPT2_BASELINES = {"gpt2": (3.11, 3.12), "gpt2-medium": (2.85, 2.84),
                  "gpt2-large": (2.66, 2.67), "gpt2-xl": (2.56, 2.54)}


@dataclass
class EvalTask(TaskConfig):
    name: str = "eval"
    eval_iters: int = 200
    splits: list = field(default_factory=lambda: ["train", "val"])
    out: Optional[str] = None  # JSON output; None: <run>/eval.json, or the Hydra output dir

    def __post_init__(self):
        super().__post_init__()
        at_least("task.eval_iters", self.eval_iters, 1)
        if not self.splits:
            raise ConfigError("task.splits=[] is empty: use [train, val], [train] or [val]")
        for split in self.splits:
            one_of("task.splits", split, ("train", "val"))


def estimate_loss(model, batches: Batches, eval_iters: int, rt, dist=None, splits=("train", "val"),
                  leave: bool = False, errors: dict | None = None, byte_table: torch.Tensor | None = None,
                  bpb: dict | None = None) -> dict[str, float]:
    """Mean loss over the same fixed eval_iters batches of each split (the training loop's
    evaluation, and the eval task's). With several ranks (dist), each scores its share of the
    batches and the sums are all-reduced; the model's train/eval mode is restored after.
    `errors`, if given, receives each split's standard error of that mean (from the spread of
    the batch losses): how far the figure may sit from the split's true loss. With a byte table
    (nanogpt.evals.bpb), `bpb` receives each split's bits per byte."""
    # no_grad for a sharded model: FSDP's gathered weights made in inference mode could not be
    # used by the training step after
    with torch.no_grad() if lockstep(model) else torch.inference_mode():
        return _estimate_loss(model, batches, eval_iters, rt, dist, splits, leave, errors, byte_table, bpb)


def _estimate_loss(model, batches, eval_iters, rt, dist, splits, leave, errors, byte_table=None,
                   bpb=None) -> dict[str, float]:
    was_training = model.training
    model.eval()
    rank, world, is_main = (dist.rank, dist.world_size, dist.is_main) if dist else (0, 1, True)
    # a sharded model's forward is a collective: every rank runs as many as the busiest one, the
    # extra ones (on a batch already counted elsewhere) weighted 0
    end = -(-eval_iters // world) * world if world > 1 and lockstep(model) else eval_iters
    out = {}
    for split in splits:
        # loss sum, batch count, sum of squares, then nats and bytes of the text targets (bits per
        # byte): summed on the device, no host sync per batch
        total = torch.zeros(5, device=rt.device, dtype=torch.float64)
        ks = range(rank, end, world)
        for k in progress(ks, desc=f"eval {split}", is_main=is_main, leave=leave, unit="batch"):
            x, y, *docs = eval_batch(batches, split, k % eval_iters)
            with rt.autocast():
                logits, loss = model(x, y, docs=docs[0] if docs else None)
            loss = loss.double() * (k < eval_iters)
            total[:3] += torch.stack([loss, torch.ones_like(loss) * (k < eval_iters), loss * loss])
            if byte_table is not None:
                total[3:] += nats_and_bytes(logits, y, byte_table) * (k < eval_iters)
        if world > 1:
            torch.distributed.all_reduce(total)
        total, n, squares, nats, nbytes = total.tolist()
        out[split] = total / n
        if errors is not None:
            errors[split] = standard_error(total, squares, n)
        if bpb is not None and byte_table is not None:
            bpb[split] = bits_per_byte(nats, nbytes)
    model.train(was_training)
    return out


def standard_error(total: float, squares: float, n: float) -> float | None:
    """The standard error of a mean of n values from their sum and sum of squares (None: n < 2)."""
    if n < 2:
        return None
    variance = max(squares - total * total / n, 0.0) / (n - 1)
    return math.sqrt(variance / n)


@dataclass
class EvalPlan:
    """How many batches each evaluation of a training run scores, per split."""
    iters: int  # at the periodic evaluations
    final_iters: int  # at the last one: its loss is the one compared across runs
    share: float  # the expected share of the run's compute spent evaluating

    def iters_at(self, it: int, max_iters: int) -> int:
        return self.final_iters if it >= max_iters else self.iters


FINAL_EVAL_FACTOR = 4  # the final evaluation scores 4x the batches: half the standard error


def plan_evaluation(tcfg, max_iters: int, tokens_per_step: int, eval_tokens_per_batch: int,
                    splits: int = 2) -> EvalPlan:
    """Batches per evaluation. task.eval_iters=null sizes them so that evaluation costs at most
    task.eval_budget of the run's compute: a token scored costs ~1/3 of a token trained (forward
    only, vs forward + backward). The batches are fixed, so even a few give a steady curve; the
    standard error logged beside each loss says how far it may sit from the split's true loss."""
    periodic = max(1, -(-max_iters // tcfg.eval_interval))  # at 0, I, 2I, ... below max_iters
    trained = 3 * max_iters * tokens_per_step  # in forward-token units
    scored = splits * eval_tokens_per_batch  # per batch of each split
    iters = tcfg.eval_iters
    if iters is None:
        allowed = tcfg.eval_budget / (1 - tcfg.eval_budget) * trained
        final_weight = FINAL_EVAL_FACTOR if tcfg.final_eval_iters is None else 0
        fixed = 0 if tcfg.final_eval_iters is None else tcfg.final_eval_iters
        iters = max(1, int((allowed / scored - fixed) // (periodic + final_weight)))
    final = tcfg.final_eval_iters if tcfg.final_eval_iters is not None else FINAL_EVAL_FACTOR * iters
    cost = scored * (periodic * iters + final)
    return EvalPlan(iters, final, cost / (cost + trained) if trained else 1.0)


def split_losses(model, dataset, block_size: int, batch_size: int, eval_iters: int, seed: int,
                 rt, splits=("train", "val")) -> dict:
    """Loss, perplexity, bits per byte (when the tokenizer is at hand) and tokens scored of each
    split, for the eval task's table."""
    batches = Batches(dataset, block_size, batch_size, seed, rt.device, doc_mask=model.config.doc_mask)
    table = token_bytes_table(dataset.meta["tokenizer"], model.config.vocab_size)
    table = torch.tensor(table, device=rt.device) if table is not None else None
    errors, bpb = {}, {}
    losses = estimate_loss(model, batches, eval_iters, rt, splits=splits, leave=True, errors=errors,
                           byte_table=table, bpb=bpb)
    return {split: {"loss": loss, "stderr": errors[split], "perplexity": math.exp(loss),
                    "bpb": bpb.get(split), "tokens": eval_iters * batch_size * block_size}
            for split, loss in losses.items()}


def evaluate(cfg, out_dir: Path, data_chosen: bool = False) -> dict:
    """data_chosen: the command named data=...; otherwise a run is scored on its own data."""
    hw, t = cfg.hardware, cfg.task
    rt = runtime(hw)
    if cfg.run:
        model, ckpt, path = load_run(cfg.run, "best", rt.device)
        source = str(path)
        data_name = cfg.data.name if data_chosen else ckpt["config"]["data"]["name"]
    elif cfg.model.pretrained or cfg.model.path:
        from nanogpt.hf.weights import load_pretrained

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
    print(f"{'split':<8}{'loss':>10}{'± s.e.':>10}{'perplexity':>14}{'bits/byte':>11}" +
          (f"{'reference':>12}" if reference else ""))
    for split, r in results.items():
        ref = f"{reference[0 if split == 'train' else 1]:>12.2f}" if reference else ""
        se = f"{r['stderr']:>10.4f}" if r["stderr"] is not None else f"{'-':>10}"
        bpb = f"{r['bpb']:>11.4f}" if r["bpb"] is not None else f"{'-':>11}"
        print(f"{split:<8}{r['loss']:>10.4f}{se}{r['perplexity']:>14.2f}{bpb}{ref}")
    record = {"source": source, "data": data_name, "block_size": block, "batch_size": batch,
              "eval_iters": t.eval_iters, **results}
    if reference:
        record["reference"] = {"train": reference[0], "val": reference[1]}
    write_task_record(record, "eval.json", t.out, cfg.run, out_dir)
    return record


def run(cfg, run_dir: Path, dist) -> float:
    """task=eval: the val loss. A run is scored on the data it trained on, unless the command
    named other data (data=... or data.name=...)."""
    return evaluate(cfg, run_dir, data_chosen=_command_chose_data())["val"]["loss"]


def _command_chose_data() -> bool:
    from nanogpt.run.rundir import command_overrides

    return any(o.split("=")[0] in ("data", "data.name") for o in command_overrides())
