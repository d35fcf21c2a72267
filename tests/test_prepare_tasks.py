"""prepare/fineweb.py --tasks N: the tokenizing spread over array tasks (in this process, submitit's
local executor, a real SLURM job array), each a range of the source's files, then merged into the
shards one machine writes, byte for byte; a task stopped mid-way redoes only its missing files; the
merge refuses missing or changed task output before writing anything."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import needs_slurm
from prepare import fineweb, tasks
from prepare.common import PrepareError
from test_fineweb import comparable_meta, files_of, spec_for
from test_prepare import RANK_FILE, REPO, needs_ranks
from test_prepare_hf import make_docs, write_parquet_layout

pytestmark = needs_ranks
SHARD, VAL = 2000, 3000
ENV = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """Five parquet files in the hub's layout (FineWeb's sample/10BT/), 1,500 documents."""
    root = tmp_path_factory.mktemp("src")
    write_parquet_layout(root, make_docs(1500, seed=1), n_files=5, folder="sample/10BT")
    return root / "sample" / "10BT"


def one_machine(out: Path, folder: Path, val: int = VAL, streaming: bool = True) -> Path:
    fineweb.prepare(out, spec=spec_for(folder, streaming), shard_tokens=SHARD, val_tokens=val, num_proc=1,
                    rank_file=RANK_FILE, batch_size=64)
    return out


def in_tasks(out: Path, folder: Path, val: int = VAL, streaming: bool = True, **options):
    return fineweb.prepare_in_tasks(out, spec=spec_for(folder, streaming), options=fineweb.TaskOptions(**options),
                                    shard_tokens=SHARD, val_tokens=val, num_proc=1, rank_file=RANK_FILE,
                                    batch_size=37)


@pytest.fixture(scope="module")
def reference(source, tmp_path_factory) -> Path:
    return one_machine(tmp_path_factory.mktemp("ref") / "fw", source)


def same_dataset(a: Path, b: Path) -> bool:
    return files_of(a) == files_of(b) and comparable_meta(a) == comparable_meta(b)


def cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "prepare/fineweb.py", *map(str, args)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, check=False, **kw)


def tree(out: Path) -> dict[str, bytes]:
    """Every file under out (the tasks' parts included), for 'nothing changed' checks."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- byte-identity

@pytest.mark.parametrize("n_tasks", [1, 3, 5])
def test_tasks_in_process_write_the_one_machine_shards(source, reference, tmp_path, n_tasks):
    meta = in_tasks(tmp_path / "fw", source, tasks=n_tasks)
    assert files_of(tmp_path / "fw").keys() == files_of(reference).keys()  # same shard names
    assert same_dataset(tmp_path / "fw", reference)
    assert meta["tokens"] == json.loads((reference / "meta.json").read_text())["tokens"]
    assert sorted(p.name for p in (tmp_path / "fw").iterdir() if not p.name.endswith(".bin")) == ["meta.json"]


def test_the_val_cut_falls_where_one_machine_puts_it(source, tmp_path):
    """The val split ending exactly at a document's end, inside a document, and in the third file:
    the same cut (the document cut there dropped) as one machine's."""
    tok = fineweb.gpt2_tokenizer(RANK_FILE)
    docs = [t for f in sorted(source.glob("*.parquet")) for t in pq.read_table(f)["text"].to_pylist()]
    ends = np.cumsum([len(d) + 1 for d in tok.encode_batch(docs[:1000], 1)])
    for val in (int(ends[40]), int(ends[40]) + 1, int(ends[700]) - 2):
        ref, got = one_machine(tmp_path / f"r{val}", source, val), tmp_path / f"t{val}"
        in_tasks(got, source, val, tasks=4)
        assert same_dataset(got, ref), val


def test_jsonl_files_read_through_datasets_give_the_same_bytes(tmp_path):
    docs = make_docs(300, seed=5)
    (tmp_path / "src").mkdir()
    for i in range(3):
        lines = [json.dumps({"text": d, "id": j}) for j, d in enumerate(docs[i * 100:(i + 1) * 100])]
        (tmp_path / "src" / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n")
    spec = fineweb.hf.HFSpec(dataset=None, data_files=[str(tmp_path / "src" / "*.jsonl")])
    ref, got = tmp_path / "ref" / "corpus", tmp_path / "tasks" / "corpus"
    fineweb.prepare(ref, spec=spec, shard_tokens=500, val_tokens=700, num_proc=1, rank_file=RANK_FILE)
    fineweb.prepare_in_tasks(got, spec=spec, options=fineweb.TaskOptions(tasks=3), shard_tokens=500, val_tokens=700,
                             num_proc=1, rank_file=RANK_FILE)
    assert files_of(got) == files_of(ref) and len(files_of(ref)) > 5


def test_a_dataset_in_the_hubs_layout_by_config_name(source, tmp_path):
    """--dataset ID --name CONFIG, as for FineWeb on the hub (here a local folder in the hub's
    layout, with the configs its README declares): the files datasets resolves, in its order."""
    root = source.parent.parent
    (root / "README.md").write_text("---\nconfigs:\n- config_name: sample-10BT\n  data_files:\n"
                                    "  - split: train\n    path: sample/10BT/*.parquet\n---\n")
    spec = fineweb.hf.HFSpec(dataset=str(root), name="sample-10BT", streaming=True)
    ref, got = tmp_path / "ref" / "fw", tmp_path / "tasks" / "fw"
    fineweb.prepare(ref, spec=spec, shard_tokens=SHARD, val_tokens=VAL, num_proc=1, rank_file=RANK_FILE)
    meta = fineweb.prepare_in_tasks(got, spec=spec, options=fineweb.TaskOptions(tasks=2), shard_tokens=SHARD,
                                    val_tokens=VAL, num_proc=1, rank_file=RANK_FILE)
    assert same_dataset(got, ref) and meta["source"]["config"] == "sample-10BT" and len(meta["source"]["files"]) == 5


def test_submitit_local_tasks_and_an_arrow_source_give_the_same_bytes(source, reference, tmp_path):
    meta = in_tasks(tmp_path / "fw", source, streaming=False, tasks=3, launcher="local", timeout_min=5)
    assert files_of(tmp_path / "fw") == files_of(reference)
    assert meta["source"]["streaming"] is False and meta["source"]["files"] == sorted(map(str, source.glob("*.parquet")))


# ---------------------------------------------------------------- resume

def test_a_stopped_task_redoes_only_its_missing_files(source, reference, tmp_path, monkeypatch):
    """Task 1 (files 1 and 2 of 5 under 3 tasks) stops after its first file; run again, only file
    2 is tokenized, and a finished part that was changed since is made again, not trusted."""
    real, made, stop = tasks.tokenize_file, [], [True]

    def stop_in_task_1(work, plan, index, *a):
        if index == 2 and stop.pop():
            made.append("stopped")
            raise KeyboardInterrupt  # as a kill: the task ends between two files
        made.append(index)
        return real(work, plan, index, *a)

    monkeypatch.setattr(tasks, "tokenize_file", stop_in_task_1)
    with pytest.raises(KeyboardInterrupt):
        in_tasks(tmp_path / "fw", source, tasks=3)
    assert made == [0, 1, "stopped"] and not (tmp_path / "fw" / "meta.json").exists()
    with pytest.raises(Exception, match="did not finish"):  # not a dataset until merged
        from nanogpt.data.batches import TokenDataset
        TokenDataset(tmp_path / "fw")
    part0 = tmp_path / "fw" / ".tasks" / "part-00000.tokens"
    raw = bytearray(part0.read_bytes())
    raw[10] ^= 1  # same size, one bit changed
    part0.write_bytes(bytes(raw))
    made.clear()
    stop.append(False)
    in_tasks(tmp_path / "fw", source, tasks=3)
    assert made == [0, 2, 3, 4]  # file 1 kept: its part matched its manifest
    assert same_dataset(tmp_path / "fw", reference)


def test_a_stopped_merge_starts_over_to_the_same_bytes(source, reference, tmp_path, monkeypatch):
    real, closes = fineweb.ShardSink.finish_shard, []

    def stop_at_the_third_shard(self, *a, **kw):
        closes.append(1)
        if len(closes) == 3:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(fineweb.ShardSink, "finish_shard", stop_at_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        in_tasks(tmp_path / "fw", source, tasks=3)
    monkeypatch.undo()
    assert len(list((tmp_path / "fw").glob("*.bin"))) == 2 and not (tmp_path / "fw" / "meta.json").exists()
    in_tasks(tmp_path / "fw", source, tasks=3)
    assert same_dataset(tmp_path / "fw", reference)


# ---------------------------------------------------------------- bad input

def run_tasks_alone(out: Path, folder: Path, which: list[int], n: int = 3) -> None:
    for k in which:
        assert in_tasks(out, folder, tasks=n, task=k) is None


def test_the_merge_refuses_missing_task_output_before_writing(source, tmp_path):
    out = tmp_path / "fw"
    run_tasks_alone(out, source, [0, 2])
    before = tree(out)
    proc = cli("--data-files", source / "*.parquet", "--out-dir", out, "--shard-tokens", SHARD, "--val-tokens", VAL,
               "--rank-file", RANK_FILE, "--tasks", 3, "--merge")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"error: cannot merge {out}: 1 task(s) have missing or changed output (task 1: "
                                  "part 1 (train-00001-of-00005.parquet): not written (its task has not finished it)")
    assert "nothing was written. Run those tasks again" in proc.stderr
    assert tree(out) == before  # no shard, no meta.json, the parts as they were


def test_the_merge_refuses_a_changed_or_truncated_part(source, tmp_path):
    out = tmp_path / "fw"
    run_tasks_alone(out, source, [0, 1, 2])
    part = out / ".tasks" / "part-00003.tokens"
    good = part.read_bytes()
    part.write_bytes(good[:2] + bytes([good[2] ^ 1]) + good[3:])
    before = tree(out)
    with pytest.raises(PrepareError, match=r"task 2: part 3 \(train-00003-of-00005.parquet\): part-00003.tokens "
                                           r"changed since it was written \(sha256 differs from its manifest\)"):
        in_tasks(out, source, tasks=3, merge_only=True)
    assert tree(out) == before
    part.write_bytes(good[:-2])
    with pytest.raises(PrepareError, match=rf"part-00003.tokens is {len(good) - 2:,} bytes, its manifest says "
                                           rf"{len(good):,}"):
        in_tasks(out, source, tasks=3, merge_only=True)
    assert not list(out.glob("*.bin"))


def test_a_source_file_changed_after_its_part_is_redone_not_merged(source, tmp_path, monkeypatch):
    """A local file replaced (same name) after its task ran: the merge alone refuses; the command
    redoes that file's part only, and the shards are one machine's on the new files."""
    folder = tmp_path / "src"
    shutil.copytree(source, folder)
    out = tmp_path / "fw"
    run_tasks_alone(out, folder, [0, 1, 2])
    changed = folder / "train-00003-of-00005.parquet"
    pq.write_table(pa.table({"text": make_docs(300, seed=11)}), changed)
    before = tree(out)
    with pytest.raises(PrepareError, match=r"task 2: part 3 \(train-00003-of-00005.parquet\): its source file "
                                           r"changed since the part was written"):
        in_tasks(out, folder, tasks=3, merge_only=True)
    assert tree(out) == before
    made, real = [], tasks.tokenize_file
    monkeypatch.setattr(tasks, "tokenize_file", lambda work, plan, i, *a: made.append(i) or real(work, plan, i, *a))
    in_tasks(out, folder, tasks=3)
    assert made == [3]
    assert same_dataset(out, one_machine(tmp_path / "ref" / "fw", folder))


def test_a_finished_dataset_is_never_overwritten(source, reference, tmp_path):
    out = tmp_path / "fw"
    in_tasks(out, source, tasks=2)
    before = tree(out)
    with pytest.raises(PrepareError, match="already holds a finished dataset made otherwise"):
        in_tasks(out, source, val=VAL + 1, tasks=2)
    in_tasks(out, source, tasks=3)  # the same settings: nothing to do
    assert tree(out) == before


def test_bad_task_flags_are_refused_before_any_work(source, tmp_path):
    out = tmp_path / "fw"
    with pytest.raises(PrepareError, match="--tasks 6 is more than the source's 5 file"):
        in_tasks(out, source, tasks=6)
    with pytest.raises(PrepareError, match=r"--task 3: tasks are numbered 0 to 2 \(--tasks 3\)"):
        in_tasks(out, source, tasks=3, task=3)
    assert not out.exists()
    run_tasks_alone(out, source, [0])
    with pytest.raises(PrepareError, match="holds the tasks of another plan .*run that command again"):
        in_tasks(out, source, tasks=2)
    proc = cli("--data-files", source / "*.parquet", "--out-dir", out, "--launcher", "slurm")
    assert proc.returncode == 2 and "--launcher, --task and --merge go with --tasks N" in proc.stderr
    proc = cli("--pretokenized", "--tasks", 2, "--out-dir", out)
    assert proc.returncode == 2 and "--tasks tokenizes; --pretokenized downloads shards" in proc.stderr


def test_unfinished_tasks_are_not_taken_over_by_one_machine(source, tmp_path, monkeypatch):
    out = tmp_path / "fw"
    monkeypatch.setattr(tasks, "merge", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        in_tasks(out, source, tasks=3)
    monkeypatch.undo()
    before = tree(out)
    with pytest.raises(PrepareError, match="holds the unfinished work of `--tasks 3`: run that command again"):
        one_machine(out, source)
    assert tree(out) == before


def test_an_unfinished_one_machine_prepare_is_not_taken_over(source, tmp_path, monkeypatch):
    out = tmp_path / "fw"
    monkeypatch.setattr(fineweb.ShardSink, "finish", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        one_machine(out, source)
    monkeypatch.undo()
    before = tree(out)
    with pytest.raises(PrepareError, match="holds an unfinished one-machine prepare of these settings: run it again "
                                           "without --tasks"):
        in_tasks(out, source, tasks=3)
    assert tree(out) == before


# ---------------------------------------------------------------- a real SLURM job array

def first_of_task(plan: dict, k: int) -> int:
    return plan["tasks"][k][0]


@pytest.mark.slow
@pytest.mark.slurm
@needs_slurm
def test_a_slurm_array_with_a_cancelled_task_resumes_and_merges_the_same_bytes(tmp_path):
    """3 array tasks over 12 files; task 1's process is killed (SIGKILL, as the OOM killer or a
    lost node would) once its first file is done; the same command then submits task 1 alone,
    which keeps that file and makes the other three. (A plain scancel is no kill: submitit holds
    off its SIGTERM until SLURM's KillWait, and the task finishes its work meanwhile.) Task 1's
    last three files are long, so the kill lands while it works on them."""
    pool = make_docs(3000, seed=3)
    rng = np.random.default_rng(3)
    long_docs = [" ".join(rng.choice(pool, 25)) for _ in range(2400)]
    folder = tmp_path / "src" / "data"
    folder.mkdir(parents=True)
    for i in range(12):
        docs = long_docs[(i - 5) * 800:(i - 4) * 800] if i in (5, 6, 7) else pool[i * 250:(i + 1) * 250]
        pq.write_table(pa.table({"text": docs}), folder / f"train-{i:05d}-of-00012.parquet")
    shard = 100_000
    started = time.time()
    fineweb.prepare(tmp_path / "ref", spec=spec_for(folder), shard_tokens=shard, val_tokens=VAL, num_proc=1,
                    rank_file=RANK_FILE)
    one_machine_s = time.time() - started
    out = tmp_path / "fw"
    args = [sys.executable, "prepare/fineweb.py", "--data-files", str(folder / "*.parquet"), "--out-dir", str(out),
            "--shard-tokens", str(shard), "--val-tokens", str(VAL), "--rank-file", str(RANK_FILE),
            "--tasks", "3", "--launcher", "slurm", "--slurm-partition", "debug", "--timeout-min", "10"]
    started = time.time()
    proc = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    work = out / ".tasks"
    deadline, first = time.time() + 180, None
    while time.time() < deadline and proc.poll() is None and first is None:
        try:
            plan = json.loads((work / "plan.json").read_text())
            first = json.loads(tasks.part_paths(work, first_of_task(plan, 1))["manifest"].read_text())
        except (OSError, ValueError, KeyError):
            time.sleep(0.005)
    assert first, "task 1 never finished its first file"
    job = first["job"]
    assert first["host"] == socket.gethostname()  # the single-node test cluster
    os.kill(first["pid"], signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=180)
    last = plan["tasks"][1][-1]
    assert not tasks.part_paths(work, last)["manifest"].exists(), "task 1 finished before it could be killed"
    assert proc.returncode == 2, stdout + stderr
    assert f"error: task 1 of 3 (job {job}) did not finish (" in stderr
    assert "run the same command again to resume" in stderr and not (out / "meta.json").exists()
    again = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    wall_s = time.time() - started
    assert again.returncode == 0, again.stderr
    assert "submitted 1 task(s) (slurm)" in again.stdout  # tasks 0 and 2 were not run again
    assert "task 1 of 3: 3 file(s) tokenized, 1 already done (kept)" in again.stdout
    print(stderr.strip())
    assert files_of(out) == files_of(tmp_path / "ref") and comparable_meta(out) == comparable_meta(tmp_path / "ref")
    meta = json.loads((out / "meta.json").read_text())
    print(f"slurm: 12 files, {meta['source']['documents']:,} documents, {sum(meta['tokens'].values()):,} tokens, "
          f"3 tasks, task 1 ({job}) killed after file {first['index']} and resumed; byte-identical; "
          f"one machine {one_machine_s:.1f} s, tasks + kill + resume + merge {wall_s:.1f} s")


@pytest.mark.slow
@pytest.mark.slurm
@needs_slurm
def test_a_scancelled_slurm_task_is_named_and_its_rerun_completes_the_merge(source, reference, tmp_path):
    """A plain scancel of task 2 while it waits in the queue (one task at a time): the command
    names it and keeps tasks 0 and 1; the same command runs task 2 alone and merges."""
    out = tmp_path / "fw"
    args = [sys.executable, "prepare/fineweb.py", "--data-files", str(source / "*.parquet"), "--out-dir", str(out),
            "--shard-tokens", str(SHARD), "--val-tokens", str(VAL), "--rank-file", str(RANK_FILE), "--tasks", "3",
            "--launcher", "slurm", "--array-parallelism", "1", "--timeout-min", "10"]
    proc = subprocess.Popen(args, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    submitted = proc.stdout.readline()
    jobs = submitted.split("job(s) ")[1].split(";")[0].split(", ")
    subprocess.run(["scancel", jobs[2]], check=True)
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 2, submitted + stdout + stderr
    assert stderr.startswith(f"error: task 2 of 3 (job {jobs[2]}) did not finish (CANCELLED"), stderr
    assert "task 0 of 3: 1 file(s) tokenized" in stdout and "task 1 of 3: 2 file(s) tokenized" in stdout
    again = subprocess.run(args, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert "submitted 1 task(s) (slurm)" in again.stdout and "task 2 of 3: 2 file(s) tokenized" in again.stdout
    assert same_dataset(out, reference)
