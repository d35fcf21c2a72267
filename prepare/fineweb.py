"""FineWeb / FineWeb-Edu with GPT-2's BPE into llm.c shards, streamed and resumable; or the published
pre-tokenized FineWeb-10B shards.

  python prepare/fineweb.py                                  # FineWeb-Edu sample-10BT -> data/fineweb_edu10B
  python prepare/fineweb.py --dataset HuggingFaceFW/fineweb  # FineWeb sample-10BT     -> data/fineweb10B
  python prepare/fineweb.py --name sample-100BT              # FineWeb-Edu 100B        -> data/fineweb_edu100B
  python prepare/fineweb.py --pretokenized [--shards 8]      # kjj0/fineweb10B-gpt2    -> data/fineweb10B
  python prepare/fineweb.py --tasks 64 --launcher slurm      # tokenized by a SLURM job array, then merged
                                                             # into the same shards (prepare/tasks.py)

As llm.c's dev/data/fineweb.py does it: <|endoftext|> before each document, documents in the
dataset's order, shards of 100M tokens (--shard-tokens) in llm.c's format (nanogpt/data/shards.py), so
llm.c and modded-nanogpt read them too. Tokenized in N processes (--num-proc) and written shard by
shard with ordinary file writes: memory stays flat whatever the corpus size.

Validation: shard 0 holds the first --val-tokens tokens of the stream (default: one shard, llm.c's
val shard, so val losses compare with llm.c's). The one document cut at that point does not go on
into training (llm.c lets its tail start the first train shard): no text is in both splits.
Training shards follow, 1, 2, ...; a document that crosses a train shard boundary continues in the
next shard (the loader reads across shards).

A 10B-token prepare takes hours. Finished shards are recorded in .prepare-in-progress.json; a
killed or failed prepare leaves no meta.json (so nothing that looks like a finished dataset), and
running the same command again resumes after the last finished shard, with output byte-identical
to an uninterrupted run. meta.json, written last, records the source, the shards and the split rule.
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import re
import sys
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

if not __package__:  # run as `python prepare/fineweb.py`: make `prepare` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from nanogpt.data import shards
from nanogpt.paths import dataset_dir
from nanogpt.run.metrics import progress  # a bar on a terminal, periodic lines in a log
from prepare import hf, tasks
from prepare.bpe import encode_batches
from prepare.common import (PrepareError, check_free_space, gpt2_tokenizer, human_bytes,
                            run_cli, storage_error)

FINEWEB = "HuggingFaceFW/fineweb"
FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
SHORT_NAMES = {FINEWEB: "fineweb", FINEWEB_EDU: "fineweb_edu"}
SHARD_PREFIXES = {FINEWEB: "fineweb", FINEWEB_EDU: "edu_fineweb"}  # llm.c's file names
SHARD_TOKENS = 10**8
PRETOKENIZED_REPO = "kjj0/fineweb10B-gpt2"  # llm.c's FineWeb-10B shards, as modded-nanogpt downloads them
PRETOKENIZED_TRAIN_SHARDS = 103


@dataclass(frozen=True)
class Settings:
    """Everything that decides the output's bytes: a resumed run must have the same."""
    dataset: str | None
    name: str | None
    revision: str | None
    data_files: list | None
    column: str
    split: str
    shard_tokens: int
    val_tokens: int


def dataset_name(dataset: str | None, config: str | None) -> str:
    """data/<this>: fineweb10B, fineweb_edu10B, fineweb_edu100B, ..."""
    base = SHORT_NAMES.get(dataset or "", (dataset or "corpus").replace("/", "_"))
    size = re.fullmatch(r"sample-(\d+B)T", config or "")
    return base + (size.group(1) if size else f"_{config}" if config else "")


# ----------------------------------------------------------------------------------------------
# the progress record: which shards are finished, and where the stream goes on

def marker(out_dir: Path) -> Path:
    return out_dir / shards.PREPARE_MARKER


def load_progress(out_dir: Path, settings: Settings) -> dict:
    """The record of an unfinished prepare of the same settings, or a fresh one."""
    path = marker(out_dir)
    if not path.exists():
        return {"settings": asdict(settings), "shards": [], "resume": None}
    try:
        progress = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PrepareError(f"{path} is unreadable ({e}): remove {out_dir} and prepare again") from None
    if progress.get("settings") != asdict(settings):
        raise PrepareError(
            f"{out_dir} holds an unfinished prepare of other settings ({progress.get('settings')}): run that "
            "command again to resume it, or remove the folder (or choose another --out-dir) to start this one")
    return progress


def save_progress(out_dir: Path, progress: dict) -> None:
    tmp = marker(out_dir).with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump(progress, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, marker(out_dir))


def remove_unrecorded_shards(out_dir: Path, progress: dict) -> None:
    """Shards written after the last record (a kill between rename and record) are redone."""
    recorded = {s["file"] for s in progress["shards"]}
    for p in out_dir.iterdir():
        if (shards.SHARD_NAME.match(p.name) and p.name not in recorded) or p.name.endswith(".bin.tmp"):
            p.unlink()


# ----------------------------------------------------------------------------------------------
# the documents, in order, with what it takes to start again at any of them

def document_batches(corpus: hf.Corpus, resume: dict | None, batch_size: int):
    """(restart, skip, offset, texts) per batch of documents, in the corpus's order.

    restart {"batch_start", "stream_state", "first_digest"} is how to read the batch again: a
    stream reloads its state (datasets' IterableDataset.state_dict), a Dataset skips to
    batch_start, and the first document's digest proves it is the same document as before. When
    resuming, the first batch leaves out the `skip` documents already written, and the `offset`
    tokens already written of the next one."""
    ds, column, streaming = corpus.dataset, corpus.spec.column, corpus.spec.streaming
    index = resume["batch_start"] if resume else 0
    if resume and streaming and resume["stream_state"] is not None:
        ds.load_state_dict(resume["stream_state"])
    elif index:
        ds = ds.skip(index)
    rows, pending = iter(ds), resume
    while True:
        state = ds.state_dict() if streaming else None
        texts = [row[column] or "" for _, row in zip(range(batch_size), rows)]
        if not texts:
            return
        restart = {"batch_start": index, "stream_state": state, "first_digest": text_digest(texts[0])}
        skip = offset = 0
        if pending:
            if restart["first_digest"] != pending["first_digest"]:
                raise PrepareError(f"the source changed since this prepare started (document {index:,} "
                                   "differs): remove the output folder and prepare again")
            skip, offset, pending = pending["skip"], pending["offset"], None
        yield restart, skip, offset, texts[skip:]
        index += len(texts)


def text_digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


# ----------------------------------------------------------------------------------------------
# writing shards

class ShardSink:
    """Fills shard 0 (val) to val_tokens, then train shards of shard_tokens each; records each
    finished shard and the restart point after it."""

    def __init__(self, out_dir: Path, prefix: str, settings: Settings, progress: dict):
        self.out_dir, self.prefix, self.settings, self.progress = out_dir, prefix, settings, progress
        self.index = len(progress["shards"])
        self.documents = progress.get("documents", 0)
        self.file: shards.ShardFile | None = None

    def capacity(self) -> int:
        return self.settings.val_tokens if self.index == 0 else self.settings.shard_tokens

    def split(self) -> str:
        return "val" if self.index == 0 else "train"

    def _open(self) -> shards.ShardFile:
        if self.file is None:
            need = self.capacity() * shards.TOKEN_DTYPE.itemsize + shards.HEADER_BYTES
            done = len(self.progress["shards"])
            check_free_space(self.out_dir, need, f"shard {self.index} of {self.out_dir.name} ({done} finished "
                             "shard(s) are kept, and the same command resumes after them)")
            name = f"{self.prefix}_{self.split()}_{self.index:06d}.bin"
            try:
                self.file = shards.ShardFile(self.out_dir / (name + ".tmp"))
            except OSError as e:
                raise storage_error(e, self.out_dir / name, "starting") from e
        return self.file

    def add(self, tokens, restart: dict, position: int, already: int) -> None:
        """One document's tokens (less the `already` written before a resume); `position` is its
        place in the batch that `restart` reads again."""
        pos = 0
        self.documents = restart["batch_start"] + position + 1
        while pos < len(tokens):
            f = self._open()
            take = min(self.capacity() - f.count, len(tokens) - pos)
            try:
                f.write(tokens[pos:pos + take])
            except OSError as e:
                raise storage_error(e, f.path) from e
            pos += take
            if f.count < self.capacity():
                continue
            was_val = self.index == 0
            if pos < len(tokens) and not was_val:  # a train shard's last document goes on in the next
                self.finish_shard({**restart, "skip": position, "offset": already + pos})
            else:
                self.finish_shard({**restart, "skip": position + 1, "offset": 0})
            if was_val:
                return  # the rest of the document cut at the val boundary is dropped: no overlap

    def finish_shard(self, resume: dict | None, done: bool = False) -> None:
        f, self.file = self.file, None
        final = f.path.with_name(f.path.name.removesuffix(".tmp"))
        try:
            f.close()
            os.replace(f.path, final)
        except OSError as e:
            f.abort()
            raise storage_error(e, final) from e
        self.progress["shards"].append({"file": final.name, "split": self.split(), "tokens": f.count})
        self.progress.update(resume=resume, documents=self.documents, done=done)
        save_progress(self.out_dir, self.progress)  # one atomic record: the shard and where to go on
        self.index += 1

    def finish(self) -> None:
        """The stream ended: the last, partly filled shard is finished too."""
        if self.file is not None and self.file.count > 0:
            self.finish_shard(None, done=True)
            return
        self.abort()
        self.progress.update(resume=None, documents=self.documents, done=True)
        save_progress(self.out_dir, self.progress)

    def abort(self) -> None:
        if self.file is not None:
            self.file.abort()
            self.file = None


def tokenize_into_shards(corpus: hf.Corpus, sink: ShardSink, tokenizer, num_proc: int, batch_size: int) -> None:
    resume = sink.progress.get("resume")
    batches = ((key[:3], key[3]) for key in document_batches(corpus, resume, batch_size))
    bar = progress(total=corpus.num_documents, initial=sink.documents, unit="doc", desc="tokenizing")
    try:
        for (restart, skip, offset), tokens, lengths in encode_batches(batches, tokenizer, num_proc, eot="before"):
            end = 0
            for p, n in enumerate(lengths.tolist()):
                already = offset if p == 0 else 0
                sink.add(tokens[end + already:end + n], restart, skip + p, already)
                end += n
            bar.update(len(lengths))
        sink.finish()
    finally:
        sink.abort()
        bar.close()


# ----------------------------------------------------------------------------------------------
# the whole prepare

def prepare(out_dir: str | Path, *, spec: hf.HFSpec, shard_tokens: int = SHARD_TOKENS, val_tokens: int | None = None,
            num_proc: int | None = None, rank_file: str | Path | None = None, batch_size: int = 512,
            prefix: str | None = None) -> dict:
    """Tokenizes `spec` into llm.c shards in out_dir (resuming an unfinished prepare of the same
    settings); returns the meta."""
    out_dir = Path(out_dir)
    settings = make_settings(spec, shard_tokens, val_tokens)
    val_tokens = settings.val_tokens
    if (out_dir / "meta.json").exists():
        return already_prepared(out_dir, settings)
    load_tokenizer = functools.cache(lambda: gpt2_tokenizer(rank_file))
    progress = load_progress(out_dir, settings)  # another command's unfinished prepare is refused here
    if "tasks" in progress:
        raise PrepareError(f"{out_dir} holds the unfinished work of `--tasks {len(tasks.load_plan(tasks.work_dir(out_dir))['tasks'])}`: "
                           "run that command again to finish it (its finished parts are kept), or remove the folder "
                           "(or choose another --out-dir) to prepare on one machine")
    created = not out_dir.exists()
    if not progress.get("done"):
        num_proc = num_proc or max(1, (os.cpu_count() or 2) - 1)
        with hf.open_corpus(spec, num_proc=num_proc, scratch_parent=out_dir.parent,
                            before_download=load_tokenizer) as corpus:  # a bad input is named first
            tokenizer = load_tokenizer()
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                remove_unrecorded_shards(out_dir, progress)
                progress["source"] = corpus.provenance
                save_progress(out_dir, progress)  # from here on the folder is marked unfinished
            except OSError as e:
                raise storage_error(e, out_dir) from e
            sink = ShardSink(out_dir, prefix or SHARD_PREFIXES.get(spec.dataset, out_dir.name), settings, progress)
            tokenize_into_shards(corpus, sink, tokenizer, num_proc, batch_size)
    if not any(s["split"] == "train" for s in progress["shards"]):
        discard(out_dir, progress, created)
        total = sum(s["tokens"] for s in progress["shards"])
        raise PrepareError(f"the corpus has {total:,} tokens, not more than --val-tokens {val_tokens:,}: "
                           "nothing is left for training; lower --val-tokens")
    return write_meta(out_dir, progress, load_tokenizer())


def make_settings(spec: hf.HFSpec, shard_tokens: int, val_tokens: int | None) -> Settings:
    val_tokens = val_tokens or shard_tokens
    for flag, n in (("--shard-tokens", shard_tokens), ("--val-tokens", val_tokens)):
        if not 0 < n <= shards.MAX_TOKENS:
            raise PrepareError(f"{flag} must be between 1 and {shards.MAX_TOKENS:,}, got {n:,}")
    return Settings(spec.dataset, spec.name, spec.revision, spec.data_files, spec.column, spec.split,
                    shard_tokens, val_tokens)


def already_prepared(out_dir: Path, settings: Settings) -> dict:
    meta = json.loads((out_dir / "meta.json").read_text())
    if meta.get("settings") != asdict(settings):
        raise PrepareError(f"{out_dir} already holds a finished dataset made otherwise ({meta.get('source', {}).get('kind')}, "
                           f"settings {meta.get('settings')}): choose another --out-dir, or remove it to prepare again")
    print(f"{out_dir} is already prepared with these settings: nothing to do")
    return meta


def discard(out_dir: Path, progress: dict, created: bool) -> None:
    for s in progress["shards"]:
        (out_dir / s["file"]).unlink(missing_ok=True)
    marker(out_dir).unlink(missing_ok=True)
    if created:
        try:
            out_dir.rmdir()
        except OSError:
            pass


def write_meta(out_dir: Path, progress: dict, tokenizer) -> dict:
    """meta.json last (its presence marks a finished dataset), then the in-progress record goes."""
    by_split = {split: [s for s in progress["shards"] if s["split"] == split] for split in ("train", "val")}
    settings = progress["settings"]
    meta = {
        "dataset": out_dir.name,
        "format": shards.FORMAT,
        "tokenizer": tokenizer.to_meta(),
        "vocab_size": tokenizer.vocab_size,
        "dtype": shards.TOKEN_DTYPE.name,
        "tokens": {split: sum(s["tokens"] for s in items) for split, items in by_split.items()},
        "shards": {split: [s["file"] for s in items] for split, items in by_split.items()},
        "split": {"rule": "val: shard 0, the first val_tokens tokens of the document stream (llm.c's val "
                          "shard); the document cut there does not continue into train: no text is in both",
                  "val_tokens": settings["val_tokens"], "shard_tokens": settings["shard_tokens"],
                  "eot": "before each document (llm.c)"},
        "settings": settings,
        "source": {**progress["source"], "documents": progress["documents"]},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    tmp = out_dir / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, out_dir / "meta.json")
    marker(out_dir).unlink(missing_ok=True)
    return meta


# ----------------------------------------------------------------------------------------------
# --tasks N: the same shards, tokenized by array tasks (prepare/tasks.py) and merged

@dataclass
class TaskOptions:
    """How the tasks run: `launcher` inprocess | local | slurm; `task` runs only that task here
    (an array script's own); `merge_only` merges what the tasks wrote, running none."""
    tasks: int
    launcher: str = "inprocess"
    task: int | None = None
    merge_only: bool = False
    partition: str | None = None
    cpus_per_task: int = 1
    timeout_min: int = 24 * 60
    mem_gb: int | None = None
    array_parallelism: int | None = None


def prepare_in_tasks(out_dir: str | Path, *, spec: hf.HFSpec, options: TaskOptions, shard_tokens: int = SHARD_TOKENS,
                     val_tokens: int | None = None, num_proc: int | None = None, rank_file: str | Path | None = None,
                     batch_size: int = 512, prefix: str | None = None) -> dict | None:
    """prepare() spread over options.tasks tasks, each a contiguous range of the source's files,
    then merged into the shards prepare() writes, byte for byte. Returns the meta (None after a
    lone --task)."""
    out_dir = Path(out_dir)
    settings = make_settings(spec, shard_tokens, val_tokens)
    if options.launcher not in tasks.LAUNCHERS:
        raise PrepareError(f"--launcher {options.launcher}: use one of {', '.join(tasks.LAUNCHERS)}")
    if options.task is not None and not 0 <= options.task < options.tasks:
        raise PrepareError(f"--task {options.task}: tasks are numbered 0 to {options.tasks - 1} (--tasks {options.tasks})")
    if (out_dir / "meta.json").exists():
        return already_prepared(out_dir, settings)
    load_tokenizer = functools.cache(lambda: gpt2_tokenizer(rank_file))
    progress = load_progress(out_dir, settings)  # another command's unfinished prepare is refused here
    if marker(out_dir).exists() and "tasks" not in progress:
        raise PrepareError(f"{out_dir} holds an unfinished one-machine prepare of these settings: run it again "
                           "without --tasks to resume it, or remove the folder (or choose another --out-dir)")
    num_proc = num_proc or (options.cpus_per_task if options.launcher != "inprocess"
                            else max(1, (os.cpu_count() or 2) - 1))
    # the files and their order, read from the metadata alone (a hub dataset is not downloaded here)
    with hf.open_corpus(replace(spec, streaming=True), scratch_parent=out_dir.parent,
                        before_download=load_tokenizer) as corpus:
        plan = tasks.make_plan(corpus, asdict(settings), options.tasks, rank_file, batch_size, num_proc)
    plan["source"]["streaming"] = spec.streaming
    load_tokenizer()
    tasks.write_or_check_plan(out_dir, plan, write=not options.merge_only)
    work = tasks.work_dir(out_dir)
    if options.task is not None:  # one task of the user's own array: no marker (tasks run at once)
        print(tasks.task_line(options.tasks, tasks.run_task(str(work), options.task))
              + "; merge with --merge once every task has run")
        return None
    if options.merge_only:
        manifests = tasks.check_parts(work, plan)  # a missing or changed part: refused before any write
    progress.update(tasks=plan["id"], source=plan["source"])
    save_progress(out_dir, progress)  # the folder is marked unfinished until meta.json
    if not options.merge_only:
        todo = tasks.unfinished_tasks(work, plan)
        if todo:
            tasks.run_tasks(work, plan, todo, options.launcher,
                            {"partition": options.partition, "cpus_per_task": options.cpus_per_task,
                             "timeout_min": options.timeout_min, "mem_gb": options.mem_gb,
                             "array_parallelism": options.array_parallelism})
        manifests = tasks.check_parts(work, plan)  # changed since its task ended: refused before the merge writes
    discard_merged_shards(out_dir, progress)
    sink = functools.partial(ShardSink, out_dir, prefix or SHARD_PREFIXES.get(spec.dataset, out_dir.name), settings)
    totals = tasks.merge(out_dir, plan, manifests, sink, progress)
    progress["documents"] = totals["documents"]
    meta = write_meta(out_dir, progress, load_tokenizer())
    tasks.remove_work(out_dir)
    return meta


def discard_merged_shards(out_dir: Path, progress: dict) -> None:
    """The shards of a merge that was stopped: a merge only copies, so it starts over."""
    for s in progress["shards"]:
        (out_dir / s["file"]).unlink(missing_ok=True)
    progress.update(shards=[], resume=None, done=False)
    remove_unrecorded_shards(out_dir, progress)


# ----------------------------------------------------------------------------------------------
# --pretokenized: llm.c's shards from the hub, as they are

def hub_commit(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import HfApi

    return HfApi().dataset_info(repo_id, revision=revision).sha


def hub_download(repo_id: str, filename: str, revision: str, local_dir: Path) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", revision=revision,
                                local_dir=local_dir))


def pretokenized_files(n_train: int) -> list[tuple[str, str]]:
    return [("val", "fineweb_val_000000.bin")] + [("train", f"fineweb_train_{i:06d}.bin") for i in range(1, n_train + 1)]


def fetch_pretokenized(out_dir: str | Path, *, shards_wanted: int = PRETOKENIZED_TRAIN_SHARDS,
                       repo_id: str = PRETOKENIZED_REPO, revision: str | None = None) -> dict:
    """The first `shards_wanted` train shards (100M GPT-2 tokens each) and the val shard of
    kjj0/fineweb10B-gpt2, downloaded through huggingface_hub (a file already there is kept)."""
    out_dir = Path(out_dir)
    if not 1 <= shards_wanted <= PRETOKENIZED_TRAIN_SHARDS:
        raise PrepareError(f"--shards must be between 1 and {PRETOKENIZED_TRAIN_SHARDS}, got {shards_wanted}")
    settings = {"repo": repo_id, "revision": revision, "shards": shards_wanted}
    if (out_dir / "meta.json").exists():
        meta = json.loads((out_dir / "meta.json").read_text())
        if meta.get("settings") == settings:
            print(f"{out_dir} is already prepared with these settings: nothing to do")
            return meta
        if meta.get("source", {}).get("kind") != "hf_pretokenized":
            raise PrepareError(f"{out_dir} already holds another dataset: choose another --out-dir, or remove it")
    try:
        commit = hub_commit(repo_id, revision)
    except Exception as e:
        raise PrepareError(f"could not reach {repo_id} on the Hugging Face hub ({type(e).__name__}: {e}). On a "
                           f"machine without internet, download the files elsewhere (`hf download {repo_id} "
                           f"--repo-type dataset --local-dir DIR`) and serve DIR as it is: data.root=PARENT "
                           "data.name=NAME reads llm.c shards directly") from None
    files = pretokenized_files(shards_wanted)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "meta.json").unlink(missing_ok=True)  # more or fewer shards: finished again below
        save_progress(out_dir, {"settings": settings, "shards": []})
        missing = [f for _, f in files if not (out_dir / f).is_file()]
        check_free_space(out_dir, len(missing) * (SHARD_TOKENS * 2 + shards.HEADER_BYTES),
                         f"{len(missing)} shard(s) of {repo_id}")
        for _, name in progress(files, desc="downloading", unit="shard"):
            try:
                hub_download(repo_id, name, commit, out_dir)
            except OSError as e:
                raise storage_error(e, out_dir / name, "downloading") from e
            except Exception as e:
                raise PrepareError(f"could not download {name} from {repo_id} ({type(e).__name__}: {e}); "
                                   "the shards already downloaded are kept: run the same command again") from None
    except OSError as e:
        raise storage_error(e, out_dir) from e
    counts = {name: read_shard_header(out_dir / name) for _, name in files}
    by_split = {split: [f for s, f in files if s == split] for split in ("train", "val")}
    meta = {"dataset": out_dir.name, "format": shards.FORMAT, "tokenizer": {"kind": "gpt2"}, "vocab_size": 50257,
            "dtype": shards.TOKEN_DTYPE.name,
            "tokens": {split: sum(counts[f] for f in names) for split, names in by_split.items()},
            "shards": by_split, "settings": settings,
            "source": {"kind": "hf_pretokenized", "dataset": repo_id, "revision": revision, "commit": commit,
                       "files": [f for _, f in files], "made_by": "llm.c dev/data/fineweb.py (FineWeb sample-10BT)"},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    (out_dir / "meta.json.tmp").write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(out_dir / "meta.json.tmp", out_dir / "meta.json")
    marker(out_dir).unlink(missing_ok=True)
    return meta


def read_shard_header(path: Path) -> int:
    from nanogpt.errors import UserError

    try:
        return shards.read_header(path)
    except UserError as e:
        path.unlink(missing_ok=True)  # a bad download: fetched again next time
        raise PrepareError(f"{e} (the file was removed: run the same command again to download it anew)") from None


# ----------------------------------------------------------------------------------------------
# command line

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, help="default: data/fineweb_edu10B, data/fineweb10B, ... "
                        "(from --dataset and --name)")
    hf.add_hf_arguments(parser, dataset=FINEWEB_EDU, name="sample-10BT", streaming=True)
    parser.add_argument("--shard-tokens", type=int, default=SHARD_TOKENS, help="tokens per shard (default: %(default)s)")
    parser.add_argument("--val-tokens", type=int, help="tokens of shard 0, the val split (default: one shard)")
    parser.add_argument("--num-proc", type=int, help="tokenizer processes (default: CPU cores - 1)")
    parser.add_argument("--rank-file", help="local GPT-2 rank file (r50k_base.tiktoken) for offline use")
    parser.add_argument("--pretokenized", action="store_true", help=f"download llm.c's GPT-2 shards of FineWeb-10B "
                        f"({PRETOKENIZED_REPO}) instead of tokenizing")
    parser.add_argument("--shards", type=int, default=PRETOKENIZED_TRAIN_SHARDS, help="with --pretokenized: how "
                        "many 100M-token train shards (default: all %(default)s)")
    add_task_arguments(parser)
    args = parser.parse_args(argv)
    if args.tasks is None and (args.launcher or args.task is not None or args.merge):
        parser.error("--launcher, --task and --merge go with --tasks N")
    if args.pretokenized and args.tasks is not None:
        parser.error("--tasks tokenizes; --pretokenized downloads shards already tokenized: choose one")
    if args.pretokenized:
        out_dir = args.out_dir or dataset_dir("fineweb10B")
        meta = fetch_pretokenized(out_dir, shards_wanted=args.shards, revision=args.revision)
    else:
        if args.shards != PRETOKENIZED_TRAIN_SHARDS:
            parser.error("--shards only applies to --pretokenized (use --shard-tokens for the shard size)")
        label = dataset_name(args.dataset, args.name)
        if args.data_files:  # local or hf:// files have no config: --name then only names the output
            args.name = None
        spec = hf.spec_from_args(args)
        out_dir = args.out_dir or dataset_dir(label)
        kwargs = {"spec": spec, "shard_tokens": args.shard_tokens, "val_tokens": args.val_tokens,
                  "num_proc": args.num_proc, "rank_file": args.rank_file}
        if args.tasks is None:
            meta = prepare(out_dir, **kwargs)
        else:
            meta = prepare_in_tasks(out_dir, options=task_options(args), **kwargs)
            if meta is None:
                return
    print(summary(meta, out_dir))


def add_task_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("tokenizing in array tasks (docs/data.md, 'Tokenizing across SLURM nodes')")
    g.add_argument("--tasks", type=int, metavar="N", help="spread the tokenizing over N tasks, each a contiguous "
                   "range of the source's files, then merge: the same shards as without --tasks")
    g.add_argument("--launcher", choices=tasks.LAUNCHERS, help="with --tasks: run them one after the other here "
                   "(inprocess, the default), as submitit local jobs (local), or as a SLURM job array (slurm)")
    g.add_argument("--task", type=int, metavar="K", help="with --tasks: run only task K here (for your own "
                   "array script: --task $SLURM_ARRAY_TASK_ID), no merge")
    g.add_argument("--merge", action="store_true", help="with --tasks: only merge what the tasks wrote")
    g.add_argument("--slurm-partition", help="with --launcher slurm: the partition (default: the cluster's)")
    g.add_argument("--cpus-per-task", type=int, default=1, help="CPUs of each local/SLURM task; also its "
                   "tokenizer processes unless --num-proc (default: %(default)s)")
    g.add_argument("--timeout-min", type=int, default=24 * 60, help="each task's time limit (default: %(default)s)")
    g.add_argument("--mem-gb", type=int, help="each SLURM task's memory (default: the partition's)")
    g.add_argument("--array-parallelism", type=int, help="at most this many SLURM tasks at once")


def task_options(args: argparse.Namespace) -> TaskOptions:
    return TaskOptions(tasks=args.tasks, launcher=args.launcher or "inprocess", task=args.task,
                       merge_only=args.merge, partition=args.slurm_partition, cpus_per_task=args.cpus_per_task,
                       timeout_min=args.timeout_min, mem_gb=args.mem_gb, array_parallelism=args.array_parallelism)


def summary(meta: dict, out_dir: Path) -> str:
    tokens = ", ".join(f"{split} {n:,}" for split, n in meta["tokens"].items())
    n_shards = sum(len(v) for v in meta["shards"].values())
    size = human_bytes(sum(meta["tokens"].values()) * shards.TOKEN_DTYPE.itemsize)
    src = meta["source"]
    docs = f"{src['documents']:,} documents of " if src.get("documents") is not None else ""
    return (f"wrote {out_dir}: {tokens} tokens in {n_shards} llm.c shard(s), {size}\n"
            f"from {docs}{src.get('dataset') or 'local files'}"
            + (f" (config {src['config']})" if src.get("config") else "")
            + (f", revision {src.get('revision') or 'main'} (commit {src['commit']})" if src.get("commit") else "")
            + f", {len(src.get('files', []))} file(s)")


if __name__ == "__main__":
    run_cli(main)
