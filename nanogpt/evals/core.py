"""CORE: DCLM's yardstick of 22 in-context tasks, scored as nanochat's base_eval does.

The eval bundle (nanochat's eval_bundle.zip) holds core.yaml (the tasks: label, kind, shots,
delimiter, data file), eval_meta_data.csv (each task's random baseline, in percent) and
eval_data/*.jsonl (the examples). A task's examples are shuffled with a fixed seed (1337), cut to
task.limit, and each is prompted with `num_fewshot` others drawn with the seed 1234 + its index.
Three kinds, each prompt starting with the BOS token (GPT-2's <|endoftext|>):

- multiple_choice {query, choices, gold}: the query, the delimiter and each choice; the choice
  whose own tokens (after the prompts' common token prefix) have the lowest mean loss is picked.
- schema {context_options, continuation, gold}: each context, the delimiter and the continuation;
  the lowest mean loss of the continuation's tokens (the prompts' common token suffix) is picked.
- language_modeling {context, continuation}: right iff greedy decoding yields every token of the
  continuation.

Accuracy is centred on the random baseline b: (acc - b) / (1 - b); CORE is the mean over the
tasks. A prompt longer than the model's context keeps its last block_size tokens.

    python launch.py task=core run=RUN
    python launch.py task=core model=pretrained/gpt2_xl       # or model.path=DIR
    python launch.py task=core run=RUN task.limit=100         # a quick look
    python launch.py task=core run=RUN task.bundle=DIR        # offline: an unzipped eval_bundle
"""
from __future__ import annotations

import csv
import json
import logging
import math
import random
import shutil
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from nanogpt.config import TaskConfig, at_least, one_of
from nanogpt.errors import UserError
from nanogpt.evals.scoring import continuation_logprobs
from nanogpt.paths import data_root
from nanogpt.runtime.distributed import broadcast_object
from nanogpt.tokenizer import load_tokenizer

log = logging.getLogger("nanogpt")

BUNDLE_URL = "https://karpathy-public.s3.us-west-2.amazonaws.com/eval_bundle.zip"  # nanochat scripts/base_eval.py
BUNDLE_NAME = "eval_bundle"  # the folder under the data root, as the zip unpacks
KINDS = ("multiple_choice", "schema", "language_modeling")
FIELDS = {"multiple_choice": "\"query\" (text), \"choices\" (texts) and \"gold\" (an index into choices)",
          "schema": "\"context_options\" (texts), \"continuation\" (text) and \"gold\" (an index into "
                    "context_options)",
          "language_modeling": "\"context\" (text) and \"continuation\" (text)"}
SHUFFLE_SEED, FEWSHOT_SEED = 1337, 1234  # nanochat's: the same subsample and the same shots

# OpenAI's GPT-2 as nanochat measured it (karpathy/nanochat dev/estimate_gpt3_core.ipynb, "Part 3:
# Calibration Data (GPT-2 Family)"; README: "The GPT-2 CORE score is 0.256525"): CORE, and the
# accuracy of the six tasks that notebook lists (rounded there to 0.1%).
REFERENCE_CORE = {"gpt2": 0.1139, "gpt2-medium": 0.1849, "gpt2-large": 0.2146, "gpt2-xl": 0.2565}
REFERENCE_NAMES = {"gpt2": "GPT-2 124M", "gpt2-medium": "GPT-2 355M", "gpt2-large": "GPT-2 774M",
                   "gpt2-xl": "GPT-2 1.5B"}
REFERENCE_ACC = {
    "hellaswag_zeroshot": {"gpt2": 0.309, "gpt2-medium": 0.390, "gpt2-large": 0.440, "gpt2-xl": 0.502},
    "lambada_openai": {"gpt2": 0.323, "gpt2-medium": 0.426, "gpt2-large": 0.488, "gpt2-xl": 0.523},
    "hellaswag": {"gpt2": 0.308, "gpt2-medium": 0.395, "gpt2-large": 0.444, "gpt2-xl": 0.512},
    "piqa": {"gpt2": 0.623, "gpt2-medium": 0.670, "gpt2-large": 0.698, "gpt2-xl": 0.725},
    "arc_easy": {"gpt2": 0.412, "gpt2-medium": 0.480, "gpt2-large": 0.535, "gpt2-xl": 0.595},
    "arc_challenge": {"gpt2": 0.222, "gpt2-medium": 0.262, "gpt2-large": 0.264, "gpt2-xl": 0.299},
}


@dataclass
class CoreTask(TaskConfig):
    name: str = "core"
    bundle: Optional[str] = None  # an unzipped eval bundle (core.yaml beside eval_data/); None: DATA/eval_bundle, downloaded once
    limit: Optional[int] = None  # score N examples per task (nanochat's --max-per-task; a quick look)
    batch_tokens: int = 8192  # rows x padded length per forward pass
    which: str = "best"  # best | last checkpoint of run=
    out: Optional[str] = None  # JSON output; None: <run>/core.json, or the Hydra output dir

    def __post_init__(self):
        super().__post_init__()
        at_least("task.limit", self.limit, 1)
        at_least("task.batch_tokens", self.batch_tokens, 1)
        one_of("task.which", self.which, ("best", "last"))


@dataclass
class Task:
    label: str
    kind: str
    shots: int
    delimiter: str
    baseline: float  # the random baseline as a fraction
    examples: list = field(default_factory=list)  # shuffled and cut to the limit


# ----------------------------------------------------------------------------------------------
# the bundle: where it is, downloading it, reading and checking it

def bundle_dir(bundle: str | None) -> Path:
    """The bundle's folder: task.bundle as given, or DATA/eval_bundle (downloaded the first time)."""
    if bundle:
        path = Path(bundle).expanduser()
        if not path.is_dir():
            raise UserError(f"task.bundle={bundle}: no such folder; pass the unzipped eval bundle (the folder "
                            f"holding core.yaml, eval_meta_data.csv and eval_data/), from {BUNDLE_URL}")
        return path
    path = data_root() / BUNDLE_NAME
    if not path.is_dir():
        download_bundle(path)
    return path


def download_bundle(dest: Path, url: str | None = None) -> None:
    """Fetches and unpacks the zip beside `dest`, then moves its eval_bundle/ into place: a failed
    or killed download leaves no half bundle behind."""
    url = url or BUNDLE_URL
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading the CORE eval bundle from %s to %s", url, dest)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".eval_bundle.") as tmp:
        archive = Path(tmp) / "eval_bundle.zip"
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as f:
                shutil.copyfileobj(response, f)
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
        except (OSError, zipfile.BadZipFile) as e:
            raise UserError(f"could not download the CORE eval bundle from {url} ({type(e).__name__}: {e}). "
                            "Offline: download it elsewhere, unzip it, and pass task.bundle=DIR (the folder "
                            "holding core.yaml)") from None
        unpacked = Path(tmp) / BUNDLE_NAME
        if not (unpacked / "core.yaml").is_file():
            raise UserError(f"{url} holds no {BUNDLE_NAME}/core.yaml: not a CORE eval bundle")
        try:
            unpacked.rename(dest)
        except OSError:  # another process placed it first
            if not (dest / "core.yaml").is_file():
                raise


def _read_yaml_tasks(root: Path) -> list:
    import yaml

    path = root / "core.yaml"
    if not path.is_file():
        raise UserError(f"{root} is not a CORE eval bundle: it has no core.yaml. Pass task.bundle=DIR, the "
                        f"unzipped {BUNDLE_URL} (the folder holding core.yaml, eval_meta_data.csv, eval_data/)")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML ({str(e).splitlines()[0]}); download the bundle again") from None
    tasks = config.get("icl_tasks") if isinstance(config, dict) else None
    if not isinstance(tasks, list) or not tasks:
        raise UserError(f"{path} lists no tasks: it needs \"icl_tasks\", a list of tasks with label, "
                        "dataset_uri, num_fewshot and icl_task_type")
    return tasks


def _read_baselines(root: Path) -> dict[str, float]:
    path = root / "eval_meta_data.csv"
    if not path.is_file():
        raise UserError(f"{root} has no eval_meta_data.csv (each task's random baseline): the bundle is "
                        f"incomplete; download it again ({BUNDLE_URL})")
    baselines = {}
    with open(path, encoding="utf-8", newline="") as f:
        for n, row in enumerate(csv.DictReader(f), start=2):
            try:
                baselines[row["Eval Task"]] = float(row["Random baseline"])
            except (KeyError, TypeError, ValueError):
                raise UserError(f"{path} line {n}: no number under \"Random baseline\" for \"Eval Task\" "
                                f"{row.get('Eval Task')!r}") from None
    return baselines


def _task_spec(entry, n: int, path: Path) -> tuple[str, str, int, str, str]:
    """(label, kind, shots, delimiter, data file) of core.yaml's n-th task."""
    where = f"{path} task {n}"
    if not isinstance(entry, dict) or not isinstance(entry.get("label"), str):
        raise UserError(f"{where}: not a task with a \"label\"")
    label, kind, uri = entry["label"], entry.get("icl_task_type"), entry.get("dataset_uri")
    where = f"{path} task {label!r}"
    if kind not in KINDS:
        raise UserError(f"{where}: icl_task_type {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(uri, str):
        raise UserError(f"{where}: \"dataset_uri\" is missing (the data file under eval_data/)")
    shots = entry.get("num_fewshot", 0)
    shots = shots[0] if isinstance(shots, list) and shots else shots  # nanochat takes the first
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
        raise UserError(f"{where}: num_fewshot {entry.get('num_fewshot')!r} is not a count >= 0")
    delimiter = entry.get("continuation_delimiter", " ")
    if not isinstance(delimiter, str):
        raise UserError(f"{where}: continuation_delimiter {delimiter!r} is not text")
    return label, kind, shots, delimiter, uri


def _is_texts(value, at_least_one: bool = True) -> bool:
    return isinstance(value, list) and (value or not at_least_one) and all(isinstance(v, str) for v in value)


def check_example(kind: str, record, where: str) -> dict:
    """The record, if it has its kind's fields; else a UserError naming what is wrong."""
    hint = f"a {kind} example needs {FIELDS[kind]}"
    if not isinstance(record, dict):
        raise UserError(f"{where}: not a JSON object; {hint}")
    if kind == "language_modeling":
        ok = isinstance(record.get("context"), str) and isinstance(record.get("continuation"), str)
    else:
        options = record.get("choices" if kind == "multiple_choice" else "context_options")
        gold = record.get("gold")
        ok = (_is_texts(options) and isinstance(gold, int) and not isinstance(gold, bool)
              and 0 <= gold < len(options) and (kind == "multiple_choice" or isinstance(record.get("continuation"), str))
              and (kind == "schema" or isinstance(record.get("query"), str)))
    if not ok:
        raise UserError(f"{where}: {hint}")
    return record


def read_examples(path: Path, kind: str, label: str) -> list[dict]:
    if not path.is_file():
        raise UserError(f"task {label!r}: its data file {path} does not exist: the bundle is incomplete; "
                        f"download it again ({BUNDLE_URL}) or pass task.bundle=DIR")
    examples = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {n} is not valid JSON ({e.msg}); each line is one "
                                f"{kind} example with {FIELDS[kind]}") from None
            examples.append(check_example(kind, record, f"{path} line {n}"))
    if not examples:
        raise UserError(f"{path} (task {label!r}) holds no examples")
    return examples


def load_bundle(root: Path, limit: int | None = None) -> list[Task]:
    """Every task of the bundle, read and checked in full before any model is loaded."""
    path = root / "core.yaml"
    entries = _read_yaml_tasks(root)
    baselines = _read_baselines(root)
    tasks = []
    for n, entry in enumerate(entries, start=1):
        label, kind, shots, delimiter, uri = _task_spec(entry, n, path)
        if label not in baselines:
            raise UserError(f"task {label!r} has no random baseline in {root / 'eval_meta_data.csv'}: the "
                            "bundle is inconsistent; download it again")
        examples = read_examples(root / "eval_data" / uri, kind, label)
        random.Random(SHUFFLE_SEED).shuffle(examples)  # nanochat's subsample, and the index the shots follow
        examples = examples[:limit] if limit else examples
        if shots >= len(examples):
            raise UserError(f"task {label!r} is {shots}-shot but has {len(examples)} example(s) to draw from"
                            + (f" with task.limit={limit}: use task.limit={shots + 1} or more" if limit else ""))
        tasks.append(Task(label, kind, shots, delimiter, baselines[label] / 100, examples))
    return tasks


# ----------------------------------------------------------------------------------------------
# prompts and rows

def fewshot(examples: list[dict], idx: int, shots: int) -> list[dict]:
    """The shots of example idx: drawn from the others with nanochat's seed, in its order."""
    if shots == 0:
        return []
    # drawing positions among the n - 1 others picks what sampling the list of their indices
    # would pick (the same draws), without building that list for each of 20k examples
    picks = random.Random(FEWSHOT_SEED + idx).sample(range(len(examples) - 1), shots)
    return [examples[j + (j >= idx)] for j in picks]


def prompts(kind: str, item: dict, delimiter: str, shots: list[dict]) -> list[str]:
    """multiple_choice: one per choice; schema: one per context; language_modeling: (without, with)
    the continuation. Each shot is its prompt with the right answer, then a blank line."""
    if kind == "multiple_choice":
        head = "".join(f"{s['query']}{delimiter}{s['choices'][s['gold']]}\n\n" for s in shots)
        return [f"{head}{item['query']}{delimiter}{choice}" for choice in item["choices"]]
    if kind == "schema":
        head = "".join(f"{s['context_options'][s['gold']]}{delimiter}{s['continuation']}\n\n" for s in shots)
        return [f"{head}{context}{delimiter}{item['continuation']}" for context in item["context_options"]]
    # the contexts are trimmed (some carry trailing spaces); the prompt without the continuation is
    # stripped, so that its tokens are a prefix of the prompt's with it
    head = "".join(f"{s['context'].strip()}{delimiter}{s['continuation']}\n\n" for s in shots)
    stem = f"{head}{item['context'].strip()}{delimiter}"
    return [stem.strip(), stem + item["continuation"]]


def _common_prefix(seqs: list[list[int]]) -> int:
    n = 0
    for column in zip(*seqs):
        if any(t != column[0] for t in column):
            break
        n += 1
    return n


def rows(kind: str, texts: list[str], tokenizer, bos: list[int]) -> list[tuple[list[int], int]]:
    """(tokens, number of scored tokens at the end) per row; the scored tokens follow the prompts'
    common token prefix (multiple_choice), are their common token suffix (schema), or follow the
    prompt without the continuation (language_modeling: one row)."""
    tokens = [bos + tokenizer.encode(t) for t in texts]
    if kind == "multiple_choice":
        start = _common_prefix(tokens)
        spans = [len(t) - start for t in tokens]
    elif kind == "schema":
        suffix = _common_prefix([t[::-1] for t in tokens])
        spans = [suffix] * len(tokens)
    else:
        tokens, spans = tokens[1:], [max(len(tokens[1]) - len(tokens[0]), 0)]
    return [(np.array(t, dtype=np.int32), n) for t, n in zip(tokens, spans)]  # 4 bytes a token, not 36


def encode_task(task: Task, tokenizer, indices=None) -> list[list[tuple[list[int], int]]]:
    """Per example (all, or those at `indices`), its rows, cropped to their last block tokens later."""
    bos = [tokenizer.eot_token] if getattr(tokenizer, "eot_token", None) is not None else []
    indices = range(len(task.examples)) if indices is None else indices
    try:
        return [rows(task.kind, prompts(task.kind, task.examples[i], task.delimiter,
                                        fewshot(task.examples, i, task.shots)), tokenizer, bos)
                for i in indices]
    except ValueError as e:  # a char vocabulary without some of the tasks' characters
        raise UserError(f"the CORE task {task.label!r} cannot be encoded with this model's tokenizer ({e}); "
                        "CORE needs a GPT-2 BPE model (data prepared with GPT-2's tokenizer)") from None


# ----------------------------------------------------------------------------------------------
# scoring

def lowest(values: list[float]) -> int:
    """The first index of the lowest value, as min() then index() pick it (a NaN, the mean of no
    tokens, is never lower; first, nothing is lower than it)."""
    best = 0
    for i, v in enumerate(values):
        if v < values[best]:
            best = i
    return best


def _batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Row indices in batches of similar length, each at most batch_tokens of padded rows (or one row)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    return batches + ([current] if current else [])


def score_rows(model, flat: list[tuple[list[int], int]], rt, batch_tokens: int):
    """(summed log-probability, tokens scored, greedy?) of every row, rows cropped to the model's
    context (their last block_size tokens, as nanochat crops them)."""
    block = model.config.block_size
    flat = [(toks[-block:], min(n, len(toks[-block:]) - 1)) for toks, n in flat]
    sums = torch.zeros(len(flat), dtype=torch.float64)
    counts = torch.zeros(len(flat), dtype=torch.long)
    greedy = torch.zeros(len(flat), dtype=torch.bool)
    for idx in _batches([len(t) for t, _ in flat], batch_tokens):
        s, n, g = continuation_logprobs(model, [flat[i] for i in idx], rt)
        sums[idx], counts[idx], greedy[idx] = s, n, g
    return sums, counts, greedy


def correct(model, kind: str, encoded, answers: list, rt, batch_tokens: int) -> list[bool]:
    """Per example: was it answered right? answers: gold index (or None for language modelling)."""
    was_training = model.training
    model.eval()
    flat = [row for example in encoded for row in example]
    sums, counts, greedy = score_rows(model, flat, rt, batch_tokens)
    model.train(was_training)
    out, at = [], 0
    for example, gold in zip(encoded, answers):
        k = len(example)
        if kind == "language_modeling":
            out.append(bool(greedy[at]))
        else:
            means = [(-sums[at + j] / counts[at + j]).item() if counts[at + j] else math.nan for j in range(k)]
            out.append(lowest(means) == gold)
        at += k
    return out


def answers(task: Task, indices=None) -> list:
    indices = range(len(task.examples)) if indices is None else indices
    return [task.examples[i].get("gold") if task.kind != "language_modeling" else None for i in indices]


def centred(accuracy: float, baseline: float) -> float:
    """Accuracy above chance as a share of the room above chance (baseline as a fraction)."""
    return (accuracy - baseline) / (1 - baseline)


def summary(tasks: list[Task], accuracies: dict[str, float], counts: dict[str, int]) -> dict:
    per_task = {t.label: {"kind": t.kind, "shots": t.shots, "n": counts[t.label], "accuracy": accuracies[t.label],
                          "random_baseline": t.baseline, "centered": centred(accuracies[t.label], t.baseline)}
                for t in tasks}
    return {"tasks": per_task, "core": sum(r["centered"] for r in per_task.values()) / len(per_task)}


# ----------------------------------------------------------------------------------------------
# task=core

def core(cfg, out_dir: Path) -> dict:
    from nanogpt.checkpoint.load import load_model_and_tokenizer
    from nanogpt.run.metrics import progress, write_task_record
    from nanogpt.runtime.hardware import runtime

    t = cfg.task
    root = bundle_dir(t.bundle)
    tasks = load_bundle(root, t.limit)  # a bad bundle fails before any model is loaded
    rt = runtime(cfg.hardware)
    model, tokenizer, source = load_model_and_tokenizer(cfg.run, t.which, cfg.model.pretrained, cfg.model.path,
                                                        rt.device, revision=cfg.model.revision)
    start = time.perf_counter()
    accuracies, counts, seconds = {}, {}, {}
    for task in progress(tasks, desc="CORE", unit="task"):
        began = time.perf_counter()
        right = correct(model, task.kind, encode_task(task, tokenizer), answers(task), rt, t.batch_tokens)
        accuracies[task.label], counts[task.label] = sum(right) / len(right), len(right)
        seconds[task.label] = time.perf_counter() - began
        log.info("%s (%d-shot %s): accuracy %.4f, centred %.4f, %.1fs", task.label, task.shots, task.kind,
                 accuracies[task.label], centred(accuracies[task.label], task.baseline), seconds[task.label])
    record = {"source": source, "bundle": str(root), "limit": t.limit, **summary(tasks, accuracies, counts),
              "seconds": time.perf_counter() - start, "device": str(rt.device),
              "dtype": str(rt.dtype).replace("torch.", "")}
    for label, s in seconds.items():
        record["tasks"][label]["seconds"] = s
    reference = cfg.model.pretrained if not cfg.run and not cfg.model.path else None
    record["reference"] = {"by": "karpathy/nanochat dev/estimate_gpt3_core.ipynb", "core": REFERENCE_CORE,
                           "accuracy": REFERENCE_ACC, "model": reference if reference in REFERENCE_CORE else None}
    print(table(record, source))
    write_task_record(record, "core.json", t.out, cfg.run, out_dir)
    return record


def run(cfg, run_dir: Path, dist) -> float:
    """task=core: the CORE score (what a sweep would compare)."""
    return core(cfg, Path(run_dir))["core"]


def table(record: dict, source: str) -> str:
    """Per task: accuracy, centred accuracy (and the reference model's accuracy where nanochat gives
    it); then CORE beside OpenAI's four GPT-2s."""
    ref = record.get("reference") or {}
    model = ref.get("model")
    limited = f", {record['limit']} per task" if record.get("limit") else ""
    lines = [f"\nCORE: {source} on {len(record['tasks'])} tasks of {record['bundle']}{limited} "
             f"({record['seconds']:,.0f}s on {record['device']}, {record['dtype']})",
             f"{'task':<34}{'shots':>6}{'n':>7}{'accuracy':>10}{'centred':>9}"
             + (f"{REFERENCE_NAMES[model]:>13}" if model else "")]
    for label, r in record["tasks"].items():
        known = REFERENCE_ACC.get(label, {}).get(model) if model else None
        lines.append(f"{label:<34}{r['shots']:>6}{r['n']:>7}{r['accuracy']:>10.4f}{r['centered']:>9.4f}"
                     + (f"{known:>13.3f}" if known is not None else ""))
    lines.append(f"{'CORE':<57}{record['core']:>9.4f}" + (f"{REFERENCE_CORE[model]:>13.4f}" if model else ""))
    lines.append("reference CORE (nanochat): " + ", ".join(f"{REFERENCE_NAMES[k]} {v:.4f}"
                                                          for k, v in REFERENCE_CORE.items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# during training: task.core_interval=N

class DuringTraining:
    """Scores CORE every `interval` iterations; each rank takes every world_size-th example of each
    task (nanochat's split), and the counts are summed over the ranks."""

    def __init__(self, interval: int, tasks: list[Task], encoded: list, answers_: list, batch_tokens: int):
        self.interval, self.tasks, self.encoded, self.answers, self.batch_tokens = (
            interval, tasks, encoded, answers_, batch_tokens)

    @classmethod
    def setup(cls, tcfg, tokenizer_meta: dict, dist) -> DuringTraining | None:
        interval = getattr(tcfg, "core_interval", 0) or 0
        if interval <= 0:
            return None
        # rank 0 downloads the bundle (once), then every rank reads it
        root = Path(broadcast_object(str(bundle_dir(getattr(tcfg, "core_bundle", None))) if dist.is_main else None))
        tasks = load_bundle(root, getattr(tcfg, "core_limit", None))
        tokenizer = load_tokenizer(tokenizer_meta)
        mine = [range(dist.rank, len(t.examples), dist.world_size) for t in tasks]
        return cls(interval, tasks, [encode_task(t, tokenizer, m) for t, m in zip(tasks, mine)],
                   [answers(t, m) for t, m in zip(tasks, mine)], 8192)

    def maybe_log(self, it: int, model, rt, dist, metrics, tokens: int) -> None:
        """At every interval-th iteration: score, sum over ranks, log CORE and each task's centred
        accuracy (console, metrics.jsonl, wandb)."""
        if it % self.interval:
            return
        start = time.perf_counter()
        counts = torch.zeros(len(self.tasks), 2, dtype=torch.float64, device=rt.device)  # right, examples
        for i, (task, encoded, gold) in enumerate(zip(self.tasks, self.encoded, self.answers)):
            right = correct(model, task.kind, encoded, gold, rt, self.batch_tokens) if encoded else []
            counts[i, 0], counts[i, 1] = sum(right), len(right)
        if dist.enabled:
            torch.distributed.all_reduce(counts)
        if not dist.is_main:
            return
        counts = counts.cpu().tolist()
        result = summary(self.tasks, {t.label: r / n for t, (r, n) in zip(self.tasks, counts)},
                         {t.label: int(n) for t, (_, n) in zip(self.tasks, counts)})
        log.info("iter %d: CORE %.4f (%d tasks, %.1fs)", it, result["core"], len(self.tasks),
                 time.perf_counter() - start)
        metrics.log({"kind": "core", "iter": it, "tokens": tokens, "core": result["core"],
                     "examples": int(sum(n for _, n in counts)),
                     "centered": {label: r["centered"] for label, r in result["tasks"].items()}})
