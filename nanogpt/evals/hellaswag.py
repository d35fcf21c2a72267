"""HellaSwag, scored completion-style as llm.c and build-nanogpt do it.

Each example is a context and four endings. Every ending is appended to the context (the ending
encoded as " " + ending), and scored by the loss of its own tokens given what comes before:
`acc` picks the ending with the lowest summed loss, `acc_norm` the lowest mean loss per token.
The 10,042 validation examples come from the hub (Rowan/hellaswag) or from a local jsonl in the
original format (task.file=hellaswag_val.jsonl). Examples are sorted by length and scored in
padded batches, in the runtime's autocast dtype.

    python launch.py task=hellaswag run=RUN
    python launch.py task=hellaswag model=pretrained/gpt2          # or model.path=DIR
    python launch.py ... task.hellaswag_interval=1000              # during training (acc_norm logged)
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from nanogpt.config import TaskConfig, at_least, one_of
from nanogpt.errors import UserError
from nanogpt.evals.scoring import continuation_logprobs

log = logging.getLogger("nanogpt")

HUB_ID = "Rowan/hellaswag"
VAL_URL = "https://raw.githubusercontent.com/rowanz/hellaswag/master/data/hellaswag_val.jsonl"
VAL_EXAMPLES = 10_042
# OpenAI's checkpoints scored this way by llm.c's dev/data/hellaswag.py: (acc, acc_norm)
REFERENCE = {"gpt2": (0.2859, 0.2955), "gpt2-xl": (0.3842, 0.4893)}
FORMAT_HINT = ("each line must be one HellaSwag example as in hellaswag_val.jsonl: a JSON object with "
               "\"ctx\" (text), \"endings\" (4 texts) and \"label\" (0-3)")


@dataclass
class HellaSwagTask(TaskConfig):
    name: str = "hellaswag"
    file: Optional[str] = None  # a local jsonl in the original format; None: Rowan/hellaswag from the hub
    limit: Optional[int] = None  # score the first N examples only (a quick look)
    batch_size: int = 16  # examples per forward pass (4 rows each)
    which: str = "best"  # best | last checkpoint of run=
    out: Optional[str] = None  # JSON output; None: <run>/hellaswag.json, or the Hydra output dir

    def __post_init__(self):
        super().__post_init__()
        at_least("task.limit", self.limit, 1)
        at_least("task.batch_size", self.batch_size, 1)
        one_of("task.which", self.which, ("best", "last"))


@dataclass
class Example:
    ctx: str
    endings: list[str]
    label: int


# ----------------------------------------------------------------------------------------------
# the examples

def parse_example(record, where: str) -> Example:
    if not isinstance(record, dict):
        raise UserError(f"{where}: not a JSON object; {FORMAT_HINT}")
    ctx, endings, label = record.get("ctx"), record.get("endings"), record.get("label")
    if not isinstance(ctx, str):
        raise UserError(f"{where}: \"ctx\" is missing or not text; {FORMAT_HINT}")
    if not (isinstance(endings, list) and len(endings) == 4 and all(isinstance(e, str) for e in endings)):
        raise UserError(f"{where}: \"endings\" is not a list of 4 texts; {FORMAT_HINT}")
    try:  # the hub's copy stores the label as a string
        label = int(label)
    except (TypeError, ValueError):
        label = -1
    if not 0 <= label <= 3:
        raise UserError(f"{where}: \"label\" is {record.get('label')!r}, not 0-3; {FORMAT_HINT}")
    return Example(ctx, list(endings), label)


def read_jsonl(path: str | Path, limit: int | None = None) -> list[Example]:
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"HellaSwag file {path} does not exist: download {VAL_URL} and pass task.file=PATH")
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if limit is not None and len(examples) >= limit:
                break
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {n} is not valid JSON ({e.msg}); {FORMAT_HINT}") from None
            examples.append(parse_example(record, f"{path} line {n}"))
    if not examples:
        raise UserError(f"{path} holds no examples; {FORMAT_HINT}")
    return examples


def load_hub(limit: int | None = None) -> list[Example]:
    try:
        import datasets

        ds = datasets.load_dataset(HUB_ID, split="validation")
    except Exception as e:  # offline, or the hub changed
        raise UserError(f"could not load {HUB_ID} (validation) from the Hugging Face hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}). Offline: download {VAL_URL} elsewhere "
                        "and pass task.file=PATH") from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [parse_example(row, f"{HUB_ID} row {i}") for i, row in enumerate(ds)]


def load_examples(file: str | None = None, limit: int | None = None) -> list[Example]:
    if limit is not None and limit < 1:
        raise UserError(f"the HellaSwag limit must be at least 1, got {limit}")
    return read_jsonl(file, limit) if file else load_hub(limit)


def encode(examples: list[Example], tokenizer) -> list[list[tuple[list[int], int]]]:
    """Per example, its 4 rows: (context + ending tokens, number of ending tokens)."""
    out = []
    try:
        for ex in examples:
            ctx = tokenizer.encode(ex.ctx)
            endings = [tokenizer.encode(" " + e) for e in ex.endings]
            out.append([(ctx + e, len(e)) for e in endings])
    except ValueError as e:  # a char vocabulary without some of HellaSwag's characters
        raise UserError(f"the HellaSwag examples cannot be encoded with this model's tokenizer ({e}); "
                        "HellaSwag needs a GPT-2 BPE model (data prepared with GPT-2's tokenizer)") from None
    return out


# ----------------------------------------------------------------------------------------------
# scoring

def ending_losses(model, rows: list[tuple[list[int], int]], rt) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed, mean) loss of each row's ending tokens."""
    logprob, n, _ = continuation_logprobs(model, rows, rt)
    sums = (-logprob).float()
    return sums, sums / n.clamp(min=1)


def score(model, encoded, labels: list[int], rt, batch_size: int = 16, progress=None) -> dict:
    """acc, acc_norm and per-example results, examples scored in batches of similar length."""
    if batch_size < 1:
        raise UserError(f"task.batch_size must be at least 1, got {batch_size}")
    was_training = model.training
    model.eval()
    order = np.argsort([max(len(t) for t, _ in rows) for rows in encoded], kind="stable")
    sums = torch.zeros(len(encoded), 4)
    means = torch.zeros(len(encoded), 4)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        s, m = ending_losses(model, [row for i in idx for row in encoded[i]], rt)
        sums[idx], means[idx] = s.view(-1, 4), m.view(-1, 4)
        if progress is not None:
            progress.update(len(idx))
    model.train(was_training)
    pred, pred_norm = sums.argmin(1), means.argmin(1)
    labels_t = torch.tensor(labels)
    acc, acc_norm = (pred == labels_t).float().mean().item(), (pred_norm == labels_t).float().mean().item()
    return {"n": len(encoded), "acc": acc, "acc_norm": acc_norm,
            "acc_se": standard_error(acc, len(encoded)), "acc_norm_se": standard_error(acc_norm, len(encoded)),
            "examples": [{"label": lab, "pred": int(p), "pred_norm": int(q), "sum_loss": s.tolist(),
                          "mean_loss": m.tolist()}
                         for lab, p, q, s, m in zip(labels, pred, pred_norm, sums, means)]}


def standard_error(p: float, n: int) -> float | None:
    """The standard error of an accuracy p over n examples, as lm-eval computes it (the sample
    standard deviation of the 0/1 scores over sqrt(n)): ±0.16 at p = 0.25 on 8 examples, ±0.005
    on HellaSwag's 10,042. None for a single example."""
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else None


# ----------------------------------------------------------------------------------------------
# task=hellaswag

def hellaswag(cfg, out_dir: Path) -> dict:
    from nanogpt.checkpoint.load import load_model_and_tokenizer
    from nanogpt.run.metrics import progress, write_task_record
    from nanogpt.runtime.hardware import runtime

    t = cfg.task
    examples = load_examples(t.file, t.limit)  # a bad file fails before any model is loaded
    rt = runtime(cfg.hardware)
    model, tokenizer, source = load_model_and_tokenizer(cfg.run, t.which, cfg.model.pretrained, cfg.model.path,
                                                        rt.device, revision=cfg.model.revision)
    encoded = encode(examples, tokenizer)
    start = time.perf_counter()
    with progress(total=len(encoded), desc="hellaswag", unit="ex") as bar:
        result = score(model, encoded, [ex.label for ex in examples], rt, t.batch_size, bar)
    seconds = time.perf_counter() - start
    full_set = t.file is None and t.limit is None
    reference = REFERENCE.get(cfg.model.pretrained) if full_set and not cfg.run and not cfg.model.path else None
    record = {"source": source, "examples_from": t.file or f"{HUB_ID} (validation)", "n": result["n"],
              "acc": result["acc"], "acc_norm": result["acc_norm"], "acc_se": result["acc_se"],
              "acc_norm_se": result["acc_norm_se"], "seconds": seconds,
              "examples_per_s": result["n"] / seconds, "device": str(rt.device),
              "dtype": str(rt.dtype).replace("torch.", ""), "examples": result["examples"]}
    if reference:
        record["reference"] = {"acc": reference[0], "acc_norm": reference[1], "by": "llm.c dev/data/hellaswag.py"}
    print(table(record, source))
    write_task_record(record, "hellaswag.json", t.out, cfg.run, out_dir)
    return record


def run(cfg, run_dir: Path, dist) -> float:
    """task=hellaswag: acc_norm (what a sweep would compare)."""
    return hellaswag(cfg, Path(run_dir))["acc_norm"]


def table(record: dict, source: str) -> str:
    ref = record.get("reference")
    lines = [f"\nHellaSwag: {source} on {record['n']:,} examples of {record['examples_from']} "
             f"({record['examples_per_s']:,.1f} examples/s on {record['device']}, {record['dtype']})",
             f"{'metric':<10}{'score':>9}" + ("   ± std err" if "acc_se" in record else "")
             + (f"{'reference':>12}" if ref else "")]
    for key in ("acc", "acc_norm"):
        se = record.get(f"{key}_se", "absent")
        error = "" if se == "absent" else f"   ± {se:.4f}" if se is not None else "   ±    n/a"
        lines.append(f"{key:<10}{record[key]:>9.4f}{error}" + (f"{ref[key]:>12.4f}" if ref else ""))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# during training: task.hellaswag_interval=N

class DuringTraining:
    """Scores HellaSwag every `interval` iterations; each rank takes every world_size-th example."""

    def __init__(self, interval: int, encoded, labels, batch_size: int):
        self.interval, self.encoded, self.labels, self.batch_size = interval, encoded, labels, batch_size

    @classmethod
    def setup(cls, tcfg, tokenizer_meta: dict, dist) -> DuringTraining | None:
        interval = getattr(tcfg, "hellaswag_interval", 0) or 0
        if interval <= 0:
            return None
        from nanogpt.tokenizer import load_tokenizer

        examples = load_examples(getattr(tcfg, "hellaswag_file", None), getattr(tcfg, "hellaswag_limit", None))
        mine = examples[dist.rank::dist.world_size]
        return cls(interval, encode(mine, load_tokenizer(tokenizer_meta)), [ex.label for ex in mine], 16)

    def maybe_log(self, it: int, model, rt, dist, metrics, tokens: int) -> None:
        """At every interval-th iteration: score, sum over ranks, log acc_norm (console, metrics.jsonl,
        wandb; loss.png draws it)."""
        if it % self.interval:
            return
        start = time.perf_counter()
        r = score(model, self.encoded, self.labels, rt, self.batch_size) if self.encoded else {"n": 0, "acc": 0.0, "acc_norm": 0.0}
        counts = torch.tensor([r["n"], r["acc"] * r["n"], r["acc_norm"] * r["n"]], dtype=torch.float64, device=rt.device)
        if dist.enabled:
            torch.distributed.all_reduce(counts)
        n, acc, acc_norm = counts.tolist()
        if dist.is_main:
            log.info("iter %d: HellaSwag acc_norm %.4f (acc %.4f, %d examples, %.1fs)", it, acc_norm / n, acc / n,
                     n, time.perf_counter() - start)
            metrics.log({"kind": "hellaswag", "iter": it, "tokens": tokens, "acc": acc / n, "acc_norm": acc_norm / n,
                         "n": int(n)})
