"""CORE (nanogpt/evals/core.py): a bundle the test writes in the eval bundle's format (one task of
each kind, with and without shots, prompts longer than the context) scored by task=core on a
random-weight nanogpt model exported to Hugging Face, against a brute-force computation with
transformers on the same examples; centred accuracy by hand; the bundle's download; bad bundles."""
from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import GPT2_RANKS, launch, needs_gpt2_ranks, read_metrics, write_char_dataset
from inprocess import make_config, train_tiny
from nanogpt.errors import UserError
from nanogpt.evals import core

EOT = 50256
BLOCK = 64  # the model's context: the few-shot prompts are longer, so they are cropped
WORDS = ("the a man woman dog cat runs jumps over field ball house river is was green red small big "
         "quickly slowly under near because then and or").split()

# label -> (kind, shots, delimiter, data file, random baseline in percent)
TASKS = {"toy_mc": ("multiple_choice", 3, "\nAnswer: ", "world/toy_mc.jsonl", 25),
         "toy_schema": ("schema", 1, " ", "language/toy_schema.jsonl", 50),
         "toy_lm_fewshot": ("language_modeling", 2, " ", "language/toy_lm.jsonl", 0),
         "toy_lm": ("language_modeling", 0, "\nAnswer:", "language/toy_lm0.jsonl", 0)}


def text(rng, lo: int, hi: int) -> str:
    return " ".join(rng.choice(WORDS, int(rng.integers(lo, hi))))


def toy_examples(kind: str, n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    if kind == "multiple_choice":
        return [{"query": "Question: " + text(rng, 2, 12) + "?", "choices": [text(rng, 1, 5) for _ in range(4)],
                 "gold": int(rng.integers(0, 4))} for _ in range(n)]
    if kind == "schema":
        return [{"context_options": [text(rng, 2, 8).capitalize() for _ in range(2)],
                 "continuation": text(rng, 1, 6) + ".", "gold": int(rng.integers(0, 2))} for _ in range(n)]
    # trailing spaces on some contexts: the prompt's context is trimmed
    return [{"context": text(rng, 3, 15) + (" " if i % 3 == 0 else ""), "continuation": text(rng, 1, 3)}
            for i in range(n)]


def write_bundle(root: Path, examples: dict[str, list[dict]], tasks: dict = TASKS) -> Path:
    """An eval bundle as nanochat's zip unpacks: core.yaml, eval_meta_data.csv, eval_data/."""
    import yaml

    entries = []
    for label, (kind, shots, delim, uri, _) in tasks.items():
        entries.append({"label": label, "dataset_uri": uri, "num_fewshot": [shots], "icl_task_type": kind,
                        "continuation_delimiter": delim})
        path = root / "eval_data" / uri
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(e) + "\n" for e in examples[label]))
    (root / "core.yaml").write_text(yaml.safe_dump({"icl_tasks": entries}))
    meta = "Eval Task,Task Category,Task Type,#shots,#datapoints,Random baseline,Centered Metric?,Description\n"
    meta += "".join(f"{label},toy,{kind},{shots},{len(examples[label])},{b},,\"a toy task, for tests\"\n"
                    for label, (kind, shots, _, _, b) in tasks.items())
    (root / "eval_meta_data.csv").write_text(meta)
    return root


def toy_bundle(root: Path) -> Path:
    examples = {label: toy_examples(kind, 17, seed) for seed, (label, (kind, *_)) in enumerate(TASKS.items())}
    return write_bundle(root, examples)


def run_core(tmp_path: Path, *overrides: str) -> dict:
    cfg = make_config(["task=core", "hardware=cpu", "hardware.dtype=float32", "hardware.num_threads=1", *overrides])
    return core.core(cfg, tmp_path / "out")


# ---------------------------------------------------------------- the brute-force reference

def reference_prompts(kind: str, item: dict, delim: str, shots: list[dict]) -> list[str]:
    """The prompts as DCLM/nanochat write them, spelled out again independently."""
    if kind == "multiple_choice":
        prefix = "".join(s["query"] + delim + s["choices"][s["gold"]] + "\n\n" for s in shots)
        return [prefix + item["query"] + delim + c for c in item["choices"]]
    if kind == "schema":
        prefix = "".join(s["context_options"][s["gold"]] + delim + s["continuation"] + "\n\n" for s in shots)
        return [prefix + c + delim + item["continuation"] for c in item["context_options"]]
    prefix = "".join(s["context"].strip() + delim + s["continuation"] + "\n\n" for s in shots)
    return [(prefix + item["context"].strip() + delim).strip(), prefix + item["context"].strip() + delim + item["continuation"]]


def brute_force(hf, tok, kind: str, shots: int, delim: str, data: list[dict], limit=None) -> list[bool]:
    """Per example, each prompt alone and unpadded through transformers: right or wrong."""
    data = list(data)
    random.Random(1337).shuffle(data)
    data = data[:limit] if limit else data
    out = []
    for idx, item in enumerate(data):
        pool = [i for i in range(len(data)) if i != idx]
        chosen = [data[i] for i in random.Random(1234 + idx).sample(pool, shots)] if shots else []
        seqs = [[EOT] + tok.encode(p) for p in reference_prompts(kind, item, delim, chosen)]
        if kind == "multiple_choice":
            common = 0
            while all(len(s) > common for s in seqs) and len({s[common] for s in seqs}) == 1:
                common += 1
            spans = [(common, len(s)) for s in seqs]
        elif kind == "schema":
            common = 0
            while all(len(s) > common for s in seqs) and len({s[-1 - common] for s in seqs}) == 1:
                common += 1
            spans = [(len(s) - common, len(s)) for s in seqs]
        else:
            spans, seqs = [(len(seqs[0]), len(seqs[1]))], [seqs[1]]
        losses, hits = [], []
        for seq, (start, end) in zip(seqs, spans):
            cut = max(0, len(seq) - BLOCK)  # keep the last BLOCK tokens
            seq, start, end = seq[cut:], start - cut, end - cut
            ids = torch.tensor([seq])
            with torch.no_grad():
                logits = hf(ids).logits[0]
            target = ids[0, start:end]
            losses.append(torch.nn.functional.cross_entropy(logits[start - 1:end - 1], target).item())
            hits.append(bool((logits[start - 1:end - 1].argmax(-1) == target).all()))
        out.append(hits[0] if kind == "language_modeling" else int(np.argmin(losses)) == item["gold"])
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A random-weight nanogpt GPT with GPT-2's vocabulary, exported to a Hugging Face directory."""
    if not GPT2_RANKS.is_file():
        pytest.skip(f"{GPT2_RANKS} not present (../shared)")
    transformers = pytest.importorskip("transformers")
    from nanogpt.hf.export import export_hf
    from nanogpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=BLOCK, vocab_size=50257, n_layer=2, n_head=2, n_embd=32)).eval()
    path = export_hf(model, tmp_path_factory.mktemp("core") / "hf")
    return path, transformers.GPT2LMHeadModel.from_pretrained(path).eval()


def greedy_continuations(hf, tok, contexts: list[str], delim: str) -> list[str]:
    """For half of the contexts, the text of the model's own greedy next 1-2 tokens: examples it gets right."""
    out = []
    for i, ctx in enumerate(contexts):
        ids = [EOT] + tok.encode(ctx.strip() + delim.rstrip())
        for _ in range(1 + i % 2):
            with torch.no_grad():
                ids.append(int(hf(torch.tensor([ids[-BLOCK:]])).logits[0, -1].argmax()))
        out.append(tok.decode(ids[-(1 + i % 2):]))
    return out


@needs_gpt2_ranks
def test_core_equals_a_brute_force_transformers_computation(tmp_path, exported, monkeypatch):
    monkeypatch.setenv("NANOGPT_GPT2_RANKS", str(GPT2_RANKS))
    from nanogpt.tokenizer import GPT2Tokenizer

    path, hf = exported
    tok = GPT2Tokenizer()
    examples = {label: toy_examples(kind, 17, seed) for seed, (label, (kind, *_)) in enumerate(TASKS.items())}
    # the 0-shot language-modelling task: half its continuations are what the model predicts
    contexts = [e["context"] for e in examples["toy_lm"]]
    for e, cont in zip(examples["toy_lm"][::2], greedy_continuations(hf, tok, contexts[::2], "\nAnswer:")):
        e["continuation"] = cont
    bundle = write_bundle(tmp_path / "bundle", examples)
    record = run_core(tmp_path, f"model.path={path}", f"task.bundle={bundle}", "task.batch_tokens=300")
    expected = {label: brute_force(hf, tok, kind, shots, delim, examples[label])
                for label, (kind, shots, delim, _, _) in TASKS.items()}
    worst = 0.0
    for label, (kind, shots, _, _, baseline) in TASKS.items():
        got = record["tasks"][label]
        acc = float(np.mean(expected[label]))
        worst = max(worst, abs(got["accuracy"] - acc))
        assert got["n"] == 17 and got["shots"] == shots and got["kind"] == kind
        assert got["centered"] == pytest.approx((acc - baseline / 100) / (1 - baseline / 100))
    assert worst == 0.0, {label: (record["tasks"][label]["accuracy"], np.mean(expected[label])) for label in TASKS}
    assert record["tasks"]["toy_lm"]["accuracy"] >= 9 / 17  # the planted right answers count
    assert 0 < record["tasks"]["toy_mc"]["accuracy"] < 1
    assert record["core"] == pytest.approx(np.mean([r["centered"] for r in record["tasks"].values()]))
    saved = json.loads((tmp_path / "out" / "core.json").read_text())
    assert saved["core"] == record["core"] and set(saved["tasks"]) == set(TASKS)
    # per example, the batched scoring equals the reference (not only the accuracy)
    from nanogpt.runtime.hardware import make_runtime
    from nanogpt.hf.weights import load_pretrained

    ours, rt = load_pretrained(None, path=str(path)), make_runtime("cpu", "float32")
    for task in core.load_bundle(bundle):
        right = core.correct(ours, task.kind, core.encode_task(task, tok), core.answers(task), rt, 200)
        assert right == expected[task.label], task.label
    # task.limit: nanochat's subsample (shuffle, then the first N) and its shots drawn from those N
    limited = run_core(tmp_path, f"model.path={path}", f"task.bundle={bundle}", "task.limit=6")
    for label, (kind, shots, delim, _, _) in TASKS.items():
        assert limited["tasks"][label]["n"] == 6
        assert limited["tasks"][label]["accuracy"] == np.mean(brute_force(hf, tok, kind, shots, delim,
                                                                          examples[label], limit=6))


def test_centred_accuracy_and_core_by_hand():
    tasks = [core.Task("a", "multiple_choice", 0, " ", 0.25), core.Task("b", "schema", 0, " ", 0.5),
             core.Task("c", "language_modeling", 0, " ", 0.0)]
    result = core.summary(tasks, {"a": 0.6, "b": 0.5, "c": 0.25}, {"a": 10, "b": 4, "c": 4})
    assert result["tasks"]["a"]["centered"] == pytest.approx(0.35 / 0.75)  # 0.4667
    assert result["tasks"]["b"]["centered"] == 0.0  # chance
    assert result["tasks"]["c"]["centered"] == 0.25  # no baseline: the accuracy itself
    assert result["core"] == pytest.approx((0.35 / 0.75 + 0 + 0.25) / 3)  # 0.2389
    assert core.centred(0.1, 0.25) == pytest.approx(-0.2)  # below chance is negative


def test_ties_and_empty_continuations_pick_as_nanochat_does():
    assert core.lowest([2.0, 1.0, 1.0]) == 1  # the first of equals
    assert core.lowest([float("nan"), 0.5]) == 0  # min() keeps a leading NaN
    assert core.lowest([0.5, float("nan"), 0.1]) == 2  # and never picks a later one


def test_the_reference_table_is_printed_beside_openai_weights():
    record = {"tasks": {"hellaswag": {"shots": 10, "n": 10042, "accuracy": 0.51, "centered": 0.3467},
                        "winograd": {"shots": 0, "n": 273, "accuracy": 0.6, "centered": 0.2}},
              "core": 0.27, "bundle": "B", "limit": None, "seconds": 1.0, "device": "cpu", "dtype": "float32",
              "reference": {"model": "gpt2-xl"}}
    text = core.table(record, "gpt2-xl")
    assert "GPT-2 1.5B" in text and "0.512" in text and "0.2565" in text
    assert "reference CORE (nanochat): GPT-2 124M 0.1139, GPT-2 355M 0.1849, GPT-2 774M 0.2146, GPT-2 1.5B 0.2565" in text


# ---------------------------------------------------------------- during training

def test_core_is_logged_during_training_as_task_core_scores_the_checkpoint(tmp_path, monkeypatch):
    """task.core_interval: CORE in metrics.jsonl at each interval, equal to task=core on the same weights
    (a char model on a corpus of the bundle's own text, so that every character encodes)."""
    bundle = toy_bundle(tmp_path / "bundle")
    corpus = "".join(p.read_text() for p in sorted((bundle / "eval_data").rglob("*.jsonl"))) * 3
    write_char_dataset(tmp_path / "data", "bundle_chars", corpus + "\nQuestion: Answer:?.\n")
    monkeypatch.setenv("NANOGPT_DATA_ROOT", str(tmp_path / "data"))
    run = tmp_path / "run"
    train_tiny(run, "data.name=bundle_chars", "task.max_iters=10", "task.eval_interval=5", "task.core_interval=5",
               f"task.core_bundle={bundle}", "task.core_limit=6")
    logged = [m for m in read_metrics(run) if m["kind"] == "core"]
    assert [m["iter"] for m in logged] == [0, 5, 10] and set(logged[-1]["centered"]) == set(TASKS)
    record = run_core(tmp_path, f"run={run}", f"task.bundle={bundle}", "task.limit=6", "task.which=last")
    assert "iteration 10" in record["source"] and record["core"] == pytest.approx(logged[-1]["core"])
    assert {k: v["centered"] for k, v in record["tasks"].items()} == pytest.approx(logged[-1]["centered"])
    assert (run / "core.json").is_file()


@pytest.mark.slow
def test_two_ranks_log_the_core_of_one_process(tmp_path):
    """Under DDP each rank scores every other example (7 per task: 4 and 3) and the counts are summed:
    the same CORE as one process, in float64 at every interval."""
    from test_distributed import STEP, merged, torchrun

    from conftest import REPO

    bundle = toy_bundle(tmp_path / "bundle")
    corpus = "".join(p.read_text() for p in sorted((bundle / "eval_data").rglob("*.jsonl"))) * 3
    write_char_dataset(tmp_path / "data", "bundle_chars", corpus + "\nQuestion: Answer:?.\n")
    args = merged(*STEP, "data.name=bundle_chars", "task.max_iters=6", "task.eval_interval=3", "task.core_interval=3",
                  f"task.core_bundle={bundle}", "task.core_limit=7", "hardware.dtype=float64", "hardware=cpu")
    env = {"NANOGPT_DATA_ROOT": str(tmp_path / "data"), "PYTHONPATH": str(REPO)}
    (tmp_path / "one").mkdir()
    (tmp_path / "ddp").mkdir()
    launch([*args, "run=r"], tmp_path / "one", env=env)
    torchrun([*args, "run=r"], tmp_path / "ddp", env=env)
    one, two = ([m for m in read_metrics(tmp_path / d / "r") if m["kind"] == "core"] for d in ("one", "ddp"))
    assert [m["iter"] for m in one] == [m["iter"] for m in two] == [0, 3, 6]
    assert {m["examples"] for m in one + two} == {4 * 7}  # each example scored once, on one rank
    for a, b in zip(one, two):
        assert a["centered"] == pytest.approx(b["centered"]) and a["core"] == pytest.approx(b["core"])


def test_a_bad_bundle_stops_training_before_it_starts(tmp_path, data_root):
    bundle = broken(tmp_path, lambda b: (b / MC).unlink())
    with pytest.raises(UserError, match="task 'toy_mc': its data file"):
        train_tiny(tmp_path / "run", "task.max_iters=1", "task.core_interval=1", f"task.core_bundle={bundle}")
    assert not (tmp_path / "run" / "ckpt").exists()


# ---------------------------------------------------------------- the download

def test_the_bundle_is_downloaded_once_under_the_data_root(tmp_path, monkeypatch):
    """The real download code, from a file:// URL: the zip's eval_bundle/ lands in DATA/eval_bundle."""
    toy_bundle(tmp_path / "src" / "eval_bundle")
    archive = tmp_path / "eval_bundle.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in (tmp_path / "src").rglob("*"):
            z.write(f, f.relative_to(tmp_path / "src"))
    monkeypatch.setenv("NANOGPT_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setattr(core, "BUNDLE_URL", archive.as_uri())
    got = core.bundle_dir(None)
    assert got == tmp_path / "data" / "eval_bundle" and (got / "core.yaml").is_file()
    assert [t.label for t in core.load_bundle(got)] == list(TASKS)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["eval_bundle"]  # no temporary left
    archive.unlink()
    assert core.bundle_dir(None) == got  # cached: no second download


def test_a_failed_download_names_the_offline_way(tmp_path, monkeypatch):
    monkeypatch.setenv("NANOGPT_DATA_ROOT", str(tmp_path / "data"))
    monkeypatch.setattr(core, "BUNDLE_URL", (tmp_path / "missing.zip").as_uri())
    with pytest.raises(UserError, match="could not download the CORE eval bundle .* pass task.bundle=DIR"):
        core.bundle_dir(None)
    (tmp_path / "not.zip").write_text("not a zip")
    monkeypatch.setattr(core, "BUNDLE_URL", (tmp_path / "not.zip").as_uri())
    with pytest.raises(UserError, match="BadZipFile"):
        core.bundle_dir(None)
    assert not (tmp_path / "data" / "eval_bundle").exists() and list((tmp_path / "data").iterdir()) == []


# ---------------------------------------------------------------- bad bundles

def broken(tmp_path: Path, edit) -> Path:
    bundle = toy_bundle(tmp_path / "bundle")
    edit(bundle)
    return bundle


def replace_line(path: Path, n: int, line: str) -> None:
    lines = path.read_text().splitlines()
    lines[n - 1] = line
    path.write_text("\n".join(lines) + "\n")


MC = "eval_data/world/toy_mc.jsonl"


@pytest.mark.parametrize("edit, message", [
    (lambda b: replace_line(b / MC, 3, "{not json"), "toy_mc.jsonl line 3 is not valid JSON"),
    (lambda b: replace_line(b / MC, 2, json.dumps({"query": "q", "choices": ["a", "b"], "gold": 2})),
     "toy_mc.jsonl line 2: a multiple_choice example needs \"query\" \\(text\\), \"choices\""),
    (lambda b: replace_line(b / "eval_data/language/toy_schema.jsonl", 1, json.dumps({"context_options": ["a"]})),
     "toy_schema.jsonl line 1: a schema example needs"),
    (lambda b: replace_line(b / "eval_data/language/toy_lm.jsonl", 5, json.dumps({"context": "a"})),
     "toy_lm.jsonl line 5: a language_modeling example needs \"context\" \\(text\\) and \"continuation\""),
    (lambda b: (b / MC).unlink(), "task 'toy_mc': its data file .*toy_mc.jsonl does not exist: the bundle is incomplete"),
    (lambda b: (b / "core.yaml").unlink(), "is not a CORE eval bundle: it has no core.yaml"),
    (lambda b: (b / "core.yaml").write_text((b / "core.yaml").read_text().replace("type: schema", "type: cloze")),
     "task 'toy_schema': icl_task_type 'cloze' is not one of multiple_choice, schema, language_modeling"),
    (lambda b: (b / "eval_meta_data.csv").write_text("Eval Task,Random baseline\ntoy_mc,25\n"),
     "task 'toy_schema' has no random baseline in .*eval_meta_data.csv"),
])
def test_a_bad_bundle_is_named_before_any_work(tmp_path, edit, message):
    bundle = broken(tmp_path, edit)
    with pytest.raises(UserError, match=message):
        core.load_bundle(bundle)


@pytest.mark.parametrize("override, message", [
    ("task.limit=0", "task.limit=0 is out of range: it must be >= 1"),
    ("task.batch_tokens=0", "task.batch_tokens=0 is out of range: it must be >= 1"),
    ("task.which=newest", "unknown task.which='newest': use best or last"),
])
def test_bad_values_are_refused_at_composition(override, message):
    from nanogpt.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        make_config(["task=core", override])
    with pytest.raises(ConfigError, match="task.core_limit=0 is out of range"):
        make_config(["task.core_limit=0"])


def test_a_limit_below_the_shots_is_refused(tmp_path):
    bundle = toy_bundle(tmp_path / "bundle")
    with pytest.raises(UserError, match="task 'toy_mc' is 3-shot but has 3 example\\(s\\) to draw from with "
                                        "task.limit=3: use task.limit=4 or more"):
        core.load_bundle(bundle, limit=3)


def test_bad_input_end_to_end(tmp_path):
    """One error line, exit 2, before the model is loaded (model.path names no directory)."""
    bundle = broken(tmp_path, lambda b: replace_line(b / MC, 2, '{"query": "q", "choices": "ab", "gold": 0}'))
    proc = launch(["task=core", "model.path=nowhere", f"task.bundle={bundle}", "hardware=cpu"], tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert "toy_mc.jsonl line 2: a multiple_choice example needs" in proc.stderr
    (bundle / "eval_data/language/toy_lm0.jsonl").unlink()
    replace_line(bundle / MC, 2, '{"query": "q", "choices": ["a", "b"], "gold": 0}')
    proc = launch(["task=core", "model.path=nowhere", f"task.bundle={bundle}", "hardware=cpu"], tmp_path, check=False)
    assert proc.returncode == 2 and proc.stderr.count("error: ") == 1 and "Traceback" not in proc.stderr
    assert "task 'toy_lm': its data file" in proc.stderr and "does not exist" in proc.stderr
    proc = launch(["task=core", "model.path=nowhere", f"task.bundle={tmp_path / 'none'}", "hardware=cpu"], tmp_path,
                  check=False)
    assert proc.returncode == 2 and "task.bundle=" in proc.stderr and "no such folder" in proc.stderr
    assert not (tmp_path / "runs").exists()
