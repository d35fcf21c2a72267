"""prepare/fineweb.py spread over array tasks (SLURM through submitit, submitit's local executor, or
one after the other in this process), then merged into the shards one machine would have written.

  python prepare/fineweb.py --launcher slurm --tasks 64 [--slurm-partition P] [--cpus-per-task 8]

The plan. The source's files (parquet files in the hub's layout, or any --data-files), in the
order one machine reads them, are dealt out in contiguous ranges: task k gets files
[k*F/N, (k+1)*F/N). The plan (settings, files, ranges) is written to <out-dir>/.tasks/plan.json.

A task. For each of its files: the documents, tokenized as one machine does it (GPT-2 BPE,
<|endoftext|> before each document), go to part-NNNNN.tokens (uint16) and each document's
token count to part-NNNNN.lengths (int64), under temporary names; then a manifest
part-NNNNN.json (sizes and sha256 of both) is renamed into place last. A file whose manifest is
there and whose parts still match it is skipped: a task killed mid-way and run again redoes only
its unfinished files (a part that no longer matches its manifest is made again).

The merge. Once every task is done, every part is checked against its manifest (missing or
changed: an error naming the task, before anything is written), then the parts are read in
file order and cut by the one-machine rule (shard 0: the first val_tokens tokens, the document
cut there dropped; then train shards of shard_tokens): the shards are byte-identical to
`python prepare/fineweb.py` without --tasks. meta.json is written last; the parts are then removed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

from nanogpt.data import shards
from nanogpt.tokenizer import sha256_file
from prepare import hf
from prepare.bpe import encode_batches
from prepare.common import PrepareError, gpt2_tokenizer, storage_error

LAUNCHERS = ("inprocess", "local", "slurm")
WORK = ".tasks"  # inside --out-dir: the plan, the parts, submitit's logs
LENGTH_DTYPE = np.dtype("<i8")
COPY_TOKENS = 1 << 24  # tokens copied at a time by the merge: memory stays flat
REPO = Path(__file__).resolve().parents[1]


def work_dir(out_dir: Path) -> Path:
    return Path(out_dir) / WORK


# ----------------------------------------------------------------------------------------------
# the plan

def file_ranges(n_files: int, n_tasks: int) -> list[list[int]]:
    """Contiguous, disjoint ranges of file indices, one per task, covering every file."""
    return [list(range(k * n_files // n_tasks, (k + 1) * n_files // n_tasks)) for k in range(n_tasks)]


def make_plan(corpus: hf.Corpus, settings: dict, n_tasks: int, rank_file, batch_size: int, num_proc: int) -> dict:
    files = corpus.provenance["files"]
    if n_tasks < 1:
        raise PrepareError(f"--tasks must be at least 1, got {n_tasks}")
    if n_tasks > len(files):
        raise PrepareError(f"--tasks {n_tasks} is more than the source's {len(files)} file(s): a task "
                           f"tokenizes whole files, so use --tasks {len(files)} or fewer")
    kind = "parquet" if isinstance(corpus.dataset, hf.ParquetStream) else hf.builder_for(files)
    spec = corpus.spec
    plan = {"settings": settings, "files": files, "reader": kind, "tasks": file_ranges(len(files), n_tasks),
            "column": spec.column, "sample_by": spec.sample_by,
            "source": {**corpus.provenance, "streaming": spec.streaming},
            "rank_file": str(Path(rank_file).resolve()) if rank_file else None, "batch_size": batch_size, "num_proc": num_proc}
    plan["id"] = plan_id(plan)
    return plan


def plan_id(plan: dict) -> str:
    """What decides the parts' bytes (not how they are computed)."""
    keep = {k: plan[k] for k in ("settings", "files", "reader", "tasks", "column", "sample_by")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()[:16]


def write_or_check_plan(out_dir: Path, plan: dict, write: bool = True) -> None:
    """The first run writes the plan; a later one must bring the same files, ranges and settings
    (then it resumes), and writes what it found of the files (their sha256) and how to run (tokenizer
    processes, rank file) for its tasks. `write` off: a merge writes nothing before its checks."""
    path = work_dir(out_dir) / "plan.json"
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise PrepareError(f"{path} is unreadable ({e}): remove {work_dir(out_dir)} and run again") from None
        if old.get("id") != plan["id"]:
            raise PrepareError(
                f"{out_dir} holds the tasks of another plan ({len(old.get('tasks', []))} tasks over "
                f"{len(old.get('files', []))} files, settings {old.get('settings')}): run that command again to "
                f"finish it, or remove {out_dir} (or choose another --out-dir) to start this one")
    if not write or (path.exists() and old == plan):
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, plan)
    except OSError as e:
        raise storage_error(e, path) from e


def load_plan(work: Path) -> dict:
    return json.loads((Path(work) / "plan.json").read_text())


def write_json(path: Path, content: dict) -> None:
    """Atomically, flushed to disk: a manifest that exists describes finished files."""
    tmp = path.with_name(f"{path.name}.tmp.{socket.gethostname()}.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(content, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# a task: its files into parts

def part_paths(work: Path, index: int) -> dict[str, Path]:
    stem = Path(work) / f"part-{index:05d}"
    return {"tokens": stem.with_suffix(".tokens"), "lengths": stem.with_suffix(".lengths"),
            "manifest": stem.with_suffix(".json")}


def part_problem(work: Path, plan: dict, index: int, hashes: bool = True) -> str | None:
    """Why part `index` cannot be used as it is (missing, unfinished, changed), or None."""
    paths = part_paths(work, index)
    if not paths["manifest"].exists():
        return "not written (its task has not finished it)"
    try:
        manifest = json.loads(paths["manifest"].read_text())
    except (OSError, ValueError) as e:
        return f"its manifest {paths['manifest'].name} is unreadable ({e})"
    if manifest.get("plan") != plan["id"] or manifest.get("file") != plan["files"][index]:
        return f"{paths['manifest'].name} was written for another plan or file"
    if manifest.get("source_sha256") != source_sha256(plan, index):
        return "its source file changed since the part was written (sha256 differs)"
    for what in ("tokens", "lengths"):
        path, want = paths[what], manifest[what]
        if not path.exists():
            return f"{path.name} is missing"
        if path.stat().st_size != want["bytes"]:
            return f"{path.name} is {path.stat().st_size:,} bytes, its manifest says {want['bytes']:,}"
        if hashes and sha256_file(path) != want["sha256"]:
            return f"{path.name} changed since it was written (sha256 differs from its manifest)"
    return None


def source_sha256(plan: dict, index: int) -> str | None:
    """A local source file's sha256 as this run's plan found it (None for the hub's files: their
    paths name the commit)."""
    return (plan["source"].get("sha256") or {}).get(plan["files"][index])


def file_texts(plan: dict, file: str, batch_size: int):
    """The documents of one source file, in order, in lists of up to batch_size texts (a missing
    text is an empty document, as one machine reads it)."""
    column = plan["column"]
    spec = hf.HFSpec(dataset=None, data_files=[file], column=column, split="train", streaming=True,
                     allow_partial=True, sample_by=plan["sample_by"], builder=plan["reader"])
    if plan["reader"] == "parquet":
        batches = (b[column] for b in hf.ParquetStream([file], column, spec).iter(batch_size))
    else:
        corpus = hf.open_corpus(spec)
        batches = (b[column] for b in corpus.dataset.iter(batch_size=batch_size))
    for texts in batches:
        yield [t or "" for t in texts]


def tokenize_file(work: Path, plan: dict, index: int, tokenizer, num_proc: int, job: str | None) -> dict:
    """One source file into its part: tokens and lengths under temporary names, renamed into place,
    then the manifest (the proof the part is whole)."""
    paths = part_paths(work, index)
    paths["manifest"].unlink(missing_ok=True)  # an old part's: until the new one is whole, none
    tag = f".tmp.{socket.gethostname()}.{os.getpid()}"
    tmp = {k: p.with_name(p.name + tag) for k, p in paths.items() if k != "manifest"}
    hashes = {k: hashlib.sha256() for k in tmp}
    counts = {"documents": 0, "tokens": 0}
    files = {}
    try:
        files = {k: open(p, "wb") for k, p in tmp.items()}
        batches = ((None, texts) for texts in file_texts(plan, plan["files"][index], plan["batch_size"]))
        for _, tokens, lengths in encode_batches(batches, tokenizer, num_proc, eot="before"):
            for k, array in (("tokens", tokens.astype(shards.TOKEN_DTYPE, copy=False)),
                             ("lengths", lengths.astype(LENGTH_DTYPE, copy=False))):
                raw = array.tobytes()
                files[k].write(raw)
                hashes[k].update(raw)
            counts["documents"] += len(lengths)
            counts["tokens"] += len(tokens)
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
            f.close()
        for k in tmp:
            os.replace(tmp[k], paths[k])
    except OSError as e:
        raise storage_error(e, paths["tokens"]) from e
    finally:
        for f in files.values():
            f.close()
        for p in tmp.values():
            p.unlink(missing_ok=True)
    manifest = {"plan": plan["id"], "file": plan["files"][index], "index": index, "job": job,
                "host": socket.gethostname(), "pid": os.getpid(), "source_sha256": source_sha256(plan, index),
                "documents": counts["documents"], "token_count": counts["tokens"],
                "tokens": {"bytes": counts["tokens"] * shards.TOKEN_DTYPE.itemsize,
                           "sha256": hashes["tokens"].hexdigest()},
                "lengths": {"bytes": counts["documents"] * LENGTH_DTYPE.itemsize,
                            "sha256": hashes["lengths"].hexdigest()}}
    write_json(paths["manifest"], manifest)
    return manifest


def task_of(plan: dict, index: int) -> int:
    return next(k for k, files in enumerate(plan["tasks"]) if index in files)


def job_name() -> str | None:
    """This SLURM array task's id (12_1), or a plain job's (12), or None outside SLURM."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID')}"
    return env.get("SLURM_JOB_ID")


def run_task(work: str, task: int) -> dict:
    """Task `task` of the plan in `work`: each of its files not yet in a good part is tokenized.
    What submitit runs (a module-level function: it is pickled by name)."""
    work = Path(work)
    plan = load_plan(work)
    tokenizer = gpt2_tokenizer(plan["rank_file"])
    done, made = [], []
    for index in plan["tasks"][task]:
        if part_problem(work, plan, index) is None:
            done.append(index)
            continue
        tokenize_file(work, plan, index, tokenizer, plan["num_proc"], job_name())
        made.append(index)
    return {"task": task, "kept": done, "made": made}


def unfinished_tasks(work: Path, plan: dict) -> list[int]:
    """Tasks with a part not yet written, or changed since (hashes checked: a changed part is made
    again by its task rather than refused by the merge at every run)."""
    return [k for k, files in enumerate(plan["tasks"]) if any(part_problem(work, plan, i) for i in files)]


# ----------------------------------------------------------------------------------------------
# running the tasks

def run_tasks(work: Path, plan: dict, todo: list[int], launcher: str, slurm: dict) -> None:
    """Runs the tasks `todo` and waits for them; a task that did not finish is an error naming it
    (its finished parts are kept: the same command resumes it)."""
    n = len(plan["tasks"])
    if launcher == "inprocess":
        for k in todo:
            print(task_line(n, run_task(str(work), k)), flush=True)
        return
    import submitit

    # the tasks unpickle prepare.tasks.run_task: they need this checkout on their path
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    executor = submitit.AutoExecutor(folder=work / "submitit", cluster=launcher)
    params = {"timeout_min": slurm["timeout_min"], "cpus_per_task": slurm["cpus_per_task"], "nodes": 1,
              "tasks_per_node": 1, "name": "prepare-tokenize"}
    if launcher == "slurm":
        params.update({f"slurm_{k}": v for k, v in (("partition", slurm.get("partition")),
                                                     ("array_parallelism", slurm.get("array_parallelism")))
                       if v is not None})
        if slurm.get("mem_gb"):
            params["mem_gb"] = slurm["mem_gb"]
    executor.update_parameters(**params)
    jobs = executor.map_array(run_task, [str(work)] * len(todo), todo)
    print(f"submitted {len(jobs)} task(s) ({launcher}): job(s) {', '.join(j.job_id for j in jobs)}; "
          f"logs in {work / 'submitit'}", flush=True)
    failed = []
    for k, job, done, error in ended_tasks(launcher, todo, jobs):
        if done is not None:
            print(task_line(n, done), flush=True)
        else:
            failed.append((k, job, error))
    if failed:
        raise PrepareError("; ".join(task_failure(k, n, job, e) for k, job, e in failed)
                           + ". The finished parts are kept: run the same command again to resume (only the "
                           "unfinished tasks are run again, and each redoes only its unfinished files)")


POLL_S = 2.0


def ended_tasks(launcher: str, todo: list[int], jobs: list, poll_s: float = POLL_S):
    """(task, job, its result or None, its error or None) for each job, as it ends. A SLURM job
    that left the queue without a result has ended too: submitit would wait for it forever when
    SLURM's accounting never lists it (an array task cancelled while it was pending)."""
    pending, gone = dict(zip(todo, jobs)), set()
    while pending:
        for k, job in list(pending.items()):
            if job.done():
                try:
                    yield k, job, job.result(), None
                except Exception as e:  # noqa: BLE001 - cancelled, killed, or the task raised: said by the caller
                    yield k, job, None, e
            elif launcher == "slurm" and not in_slurm_queue(job.job_id):
                if k not in gone:  # seen gone once: its result may still be on its way through the filesystem
                    gone.add(k)
                    continue
                yield k, job, None, None
            else:
                continue
            del pending[k]
        if pending:
            time.sleep(poll_s)


def in_slurm_queue(job_id: str) -> bool:
    """Is the job still queued or running? True when squeue cannot say (the controller away)."""
    try:
        r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=60,
                           check=False)
    except (OSError, subprocess.TimeoutExpired):
        return True
    if r.returncode == 0:
        return bool(r.stdout.strip())
    return "Invalid job id" not in r.stderr


def task_line(n: int, done: dict) -> str:
    return (f"task {done['task']} of {n}: {len(done['made'])} file(s) tokenized, {len(done['kept'])} already done "
            "(kept)")


def task_failure(k: int, n: int, job, e: Exception | None) -> str:
    """One clause: which task, its job, its state in SLURM's accounting, why, and its log. `e`
    None: the job left the queue with no result (cancelled before it started: no log)."""
    state = "UNKNOWN"
    try:
        state = job.watcher.get_state(job.job_id, mode="force") if hasattr(job, "watcher") else job.state
    except Exception:  # noqa: BLE001, S110 - sacct unreachable: say what is known
        pass
    log = getattr(getattr(job, "paths", None), "stderr", None)
    if e is None:
        if state in ("UNKNOWN", "PENDING", "RUNNING"):
            state = "CANCELLED"  # gone from the queue, and from accounting: cancelled while pending
        text = Path(log).read_text(errors="replace") if log and Path(log).exists() else "it left the queue with no result"
    else:
        text = str(e)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    why = next((ln for ln in reversed(lines) if "Error:" in ln or "srun:" in ln), lines[-1] if lines else "no result")
    return (f"task {k} of {n} (job {job.job_id}) did not finish ({state}: {why[:300]})"
            + (f", its log: {log}" if log and Path(log).exists() else ""))


# ----------------------------------------------------------------------------------------------
# the merge

def check_parts(work: Path, plan: dict) -> list[dict]:
    """Every part, checked against its manifest (sizes and sha256); a missing or changed one is
    an error naming its task, before anything is written."""
    problems = {}
    for index in range(len(plan["files"])):
        why = part_problem(work, plan, index)
        if why:
            problems.setdefault(task_of(plan, index), []).append(f"part {index} ({Path(plan['files'][index]).name}): {why}")
    if problems:
        said = "; ".join(f"task {k}: {', '.join(items)}" for k, items in sorted(problems.items()))
        raise PrepareError(f"cannot merge {work.parent}: {len(problems)} task(s) have missing or changed output "
                           f"({said}); nothing was written. Run those tasks again (the same command without "
                           "--merge, or --task K for each): they redo only the missing or changed parts")
    return [json.loads(part_paths(work, i)["manifest"].read_text()) for i in range(len(plan["files"]))]


def val_cut(work: Path, plan: dict, val_tokens: int) -> int:
    """Where train starts in the whole token stream: val_tokens, or the end of the document cut
    there (as one machine does it: that document does not go on into train)."""
    start = 0
    for index in range(len(plan["files"])):
        lengths = np.fromfile(part_paths(work, index)["lengths"], dtype=LENGTH_DTYPE)
        ends = start + np.cumsum(lengths)
        k = int(np.searchsorted(ends, val_tokens, side="left"))
        if k < len(ends):
            return int(ends[k])
        start = int(ends[-1]) if len(ends) else start
    return start


def token_stream(work: Path, plan: dict, begin: int, end: int):
    """Tokens [begin, end) of the concatenated parts, in pieces of at most COPY_TOKENS."""
    offset = 0
    for index in range(len(plan["files"])):
        path = part_paths(work, index)["tokens"]
        n = path.stat().st_size // shards.TOKEN_DTYPE.itemsize
        lo, hi = max(begin, offset) - offset, min(end, offset + n) - offset
        if lo < hi:
            data = np.memmap(path, dtype=shards.TOKEN_DTYPE, mode="r")
            for a in range(lo, hi, COPY_TOKENS):
                yield np.array(data[a:min(hi, a + COPY_TOKENS)])
            del data
        offset += n


def merge(out_dir: Path, plan: dict, manifests: list[dict], sink_factory, progress: dict) -> dict:
    """The parts (checked by check_parts) into llm.c shards through the one-machine writer
    (fineweb.ShardSink), cut by its rule; returns the totals."""
    work = work_dir(out_dir)
    settings = plan["settings"]
    total = sum(m["token_count"] for m in manifests)
    train_start = val_cut(work, plan, settings["val_tokens"])
    if total <= settings["val_tokens"] or train_start >= total:
        raise PrepareError(f"the corpus has {total:,} tokens, not more than --val-tokens {settings['val_tokens']:,}: "
                           "nothing is left for training; lower --val-tokens")
    documents = sum(m["documents"] for m in manifests)
    sink = sink_factory(progress)
    restart = {"batch_start": documents - 1, "merged_from": plan["id"]}  # no resume: a merge starts over
    try:
        for piece in token_stream(work, plan, 0, settings["val_tokens"]):
            sink.add(piece, restart, 0, 0)
        for piece in token_stream(work, plan, train_start, total):
            sink.add(piece, restart, 0, 0)
        sink.documents = documents
        sink.finish()
    finally:
        sink.abort()
    return {"documents": documents, "tokens": total}


def remove_work(out_dir: Path) -> None:
    shutil.rmtree(work_dir(out_dir), ignore_errors=True)

