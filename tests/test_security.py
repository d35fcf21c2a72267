"""No code runs from a file (issue 16, section 1): a checkpoint whose pickle carries a payload is
refused, with a clear message, by every path that loads one; names that become paths stay
where they belong; a training launch prepares no corpus but the embedded one."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import QUICK, REPO, launch
from nanogpt.checkpoint import single as checkpoint
from nanogpt.errors import UserError



class Payload:
    """Unpickling this touches `marker`: what a hostile checkpoint would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_malicious(path: Path, marker: Path, like: Path | None = None) -> None:
    """A checkpoint that looks right (model, model_args, iter, optimizer...) with a payload."""
    state = torch.load(like, weights_only=True) if like else {"model": {}, "model_args": {}}
    state["payload"] = Payload(marker)
    path.unlink(missing_ok=True)
    torch.save(state, path)


@pytest.fixture
def hostile_run(trained_run, tmp_path) -> tuple[Path, Path]:
    """A copy of a trained run whose two checkpoints carry a payload, and the payload's marker."""
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(trained_run, run)
    for name in ("last.pt", "best.pt"):
        write_malicious(run / "ckpt" / name, marker, like=trained_run / "ckpt" / name)
    return run, marker


def assert_refused(proc: subprocess.CompletedProcess, run: Path, marker: Path) -> None:
    assert not marker.exists(), "the checkpoint's payload ran"
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "refused" in proc.stderr and "could run code" in proc.stderr and "posix.system" in proc.stderr
    # and it sends no one to `upgrade`, which refuses such a file too
    assert "not a checkpoint that nanogpt wrote" in proc.stderr and "upgrade" not in proc.stderr


def module(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=300)


def test_resume_refuses_a_checkpoint_that_carries_code(hostile_run, tmp_path, env):
    run, marker = hostile_run
    proc = launch([*QUICK, "task.max_iters=8", "task.eval_interval=2", "init_from=resume", f"run={run}"],
                  cwd=tmp_path, env=env, check=False)
    assert_refused(proc, run, marker)


def test_the_same_command_refuses_it_too(hostile_run, tmp_path, env):
    run, marker = hostile_run
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    proc = launch([*QUICK, "task.max_iters=4", "task.eval_interval=2", f"run={run}"], cwd=tmp_path, env=env,
                  check=False)
    assert_refused(proc, run, marker)


@pytest.mark.parametrize("task", ["sample", "eval"])
def test_sample_and_eval_refuse_it(hostile_run, tmp_path, env, task):
    run, marker = hostile_run
    proc = launch([f"task={task}", f"run={run}", "hardware=cpu", "hardware.num_threads=1"], cwd=tmp_path, env=env,
                  check=False)
    assert_refused(proc, run, marker)


def test_export_refuses_it(hostile_run, tmp_path, env):
    run, marker = hostile_run
    assert_refused(module(["-m", "nanogpt.export", str(run), str(tmp_path / "hf")], REPO, env), run, marker)
    assert not (tmp_path / "hf").exists()


def test_perplexity_refuses_it(hostile_run, tmp_path, env):
    run, marker = hostile_run
    (tmp_path / "t.txt").write_text("the cat sat on a mat\n" * 20)
    proc = module(["-m", "nanogpt.perplexity", "--run", str(run), "--file", str(tmp_path / "t.txt"),
                   "--device", "cpu"], REPO, env)
    assert_refused(proc, run, marker)


def test_a_payload_in_a_file_that_is_not_a_checkpoint_never_runs(tmp_path):
    """Before, the payload ran and then the file was rejected as not a nanogpt checkpoint."""
    marker = tmp_path / "PWNED"
    torch.save([Payload(marker)], tmp_path / "x.pt")
    with pytest.raises(checkpoint.UnsafeCheckpoint, match="posix.system"):
        checkpoint.load(tmp_path / "x.pt")
    assert not marker.exists()


def test_a_hugging_face_pytorch_model_bin_with_a_payload_is_refused(tmp_path):
    """model.path directories load pytorch_model.bin with weights_only=True too."""
    from nanogpt.hf.weights import load_pretrained

    d, marker = tmp_path / "hf", tmp_path / "PWNED"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 16,
                                               "n_positions": 16, "vocab_size": 32}))
    torch.save({"wte.weight": torch.zeros(32, 16), "x": Payload(marker)}, d / "pytorch_model.bin")
    with pytest.raises(UserError, match="refused.*could run code"):
        load_pretrained(path=d)
    assert not marker.exists()


# ---- what checkpoints hold, and checkpoints of the previous format

def test_a_training_checkpoint_loads_with_weights_only(trained_run):
    for name in ("last.pt", "best.pt"):
        state = torch.load(trained_run / "ckpt" / name, weights_only=True)  # plain data only
        assert isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)
        assert torch.serialization.get_unsafe_globals_in_checkpoint(trained_run / "ckpt" / name) == []


def previous_format(path: Path, out: Path) -> None:
    """The checkpoint as the previous version wrote it: numpy's RNG state as numpy's tuple."""
    import numpy as np

    state = torch.load(path, weights_only=True)
    for rng in state["rng"]:
        n = rng["numpy"]
        rng["numpy"] = ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                        n["cached_gaussian"])
    torch.save(state, out)


def test_a_checkpoint_of_the_previous_format_still_resumes(trained_run, tmp_path):
    previous_format(trained_run / "ckpt" / "last.pt", tmp_path / "old.pt")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "old.pt")  # numpy's
    state = checkpoint.load(tmp_path / "old.pt")
    checkpoint.set_rng_state(state["rng"][0])  # numpy's tuple is still understood


def test_upgrade_rewrites_an_old_checkpoint_as_plain_data(trained_run, tmp_path):
    previous_format(trained_run / "ckpt" / "last.pt", tmp_path / "old.pt")
    proc = module(["-m", "nanogpt.checkpoint", "upgrade", str(tmp_path / "old.pt")], REPO, {})
    assert proc.returncode == 0, proc.stderr
    assert "upgraded" in proc.stdout
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "old.pt") == []
    new, ref = torch.load(tmp_path / "old.pt", weights_only=True), torch.load(trained_run / "ckpt" / "last.pt",
                                                                               weights_only=True)
    assert torch.equal(new["rng"][0]["numpy"]["keys"], ref["rng"][0]["numpy"]["keys"])
    assert all(torch.equal(new["model"][k], v) for k, v in ref["model"].items())


def test_upgrade_reads_a_previous_format_file_written_under_numpy_1(trained_run, tmp_path):
    """numpy 1.x names its array reconstructor numpy.core.multiarray._reconstruct (numpy 2:
    numpy._core): upgrade, which no longer unpickles arbitrary objects, still reads it."""
    import zipfile

    previous_format(trained_run / "ckpt" / "last.pt", tmp_path / "np2.pt")
    with zipfile.ZipFile(tmp_path / "np2.pt") as zin, zipfile.ZipFile(tmp_path / "old.pt", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(info, data)
    assert "numpy.core.multiarray._reconstruct" in torch.serialization.get_unsafe_globals_in_checkpoint(
        tmp_path / "old.pt")
    proc = module(["-m", "nanogpt.checkpoint", "upgrade", str(tmp_path / "old.pt")], REPO, {})
    assert proc.returncode == 0 and "upgraded" in proc.stdout, proc.stderr
    assert torch.serialization.get_unsafe_globals_in_checkpoint(tmp_path / "old.pt") == []


def test_upgrade_refuses_a_file_that_carries_code_and_leaves_it_unchanged(trained_run, tmp_path):
    """Before, upgrade loaded the file with weights_only=False: the payload ran, then `upgraded`."""
    marker = tmp_path / "PWNED"
    write_malicious(tmp_path / "x.pt", marker, like=trained_run / "ckpt" / "last.pt")
    before = (tmp_path / "x.pt").read_bytes()
    proc = module(["-m", "nanogpt.checkpoint", "upgrade", str(tmp_path / "x.pt")], REPO, {})
    assert not marker.exists(), "the file's payload ran"
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"error: {tmp_path / 'x.pt'} refused: it holds Python objects that no "
                                  "checkpoint needs (posix.system), and loading them could run code")
    assert f"{tmp_path / 'x.pt'} was left unchanged" in proc.stderr and "upgraded" not in proc.stdout
    assert (tmp_path / "x.pt").read_bytes() == before


def test_upgrade_of_a_missing_file_is_a_clear_error(tmp_path):
    proc = module(["-m", "nanogpt.checkpoint", "upgrade", str(tmp_path / "nope.pt")], REPO, {})
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "nope.pt" in proc.stderr


# ---- names that become paths, and what a training launch may prepare

def test_a_data_name_that_leaves_the_data_root_is_refused(tmp_path, env):
    proc = launch([*QUICK, "data.name=../../x"], cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "data.name='../../x' is not a dataset name" in proc.stderr and "data.root" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_mistyped_data_name_with_auto_prepare_is_a_clear_error(tmp_path, env):
    proc = launch([*[a for a in QUICK if not a.startswith("data.name")], "data.name=shakespeare_chr"],
                  cwd=tmp_path, env=env, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "no prepare script is named 'shakespeare_chr'" in proc.stderr and "shakespeare_char" in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_a_training_launch_never_prepares_a_downloaded_corpus(tmp_path, env, monkeypatch):
    """data.name=owt under the default data group (auto_prepare: true) must not start preparing
    OpenWebText: only the embedded corpus is prepared on first use."""
    from nanogpt.data.catalog import open_dataset

    called = []
    import prepare.owt

    monkeypatch.setattr(prepare.owt, "prepare", lambda *a, **k: called.append(a), raising=False)
    with pytest.raises(UserError, match=r"python prepare/owt.py"):
        open_dataset("owt", str(tmp_path / "data"), auto_prepare=True)
    assert called == []


# ---- sharded (FSDP) checkpoints: DCP's index and the values in its shard files

def train_sharded(run: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    """A run of hardware.strategy=fsdp in one process (the sharded checkpoint format that a
    torchrun of any size writes and reads): ckpt/last.dcp and best.dcp."""
    return launch([*QUICK, "hardware.strategy=fsdp", "task.max_iters=4", "task.eval_interval=2", f"run={run}",
                   *extra], cwd=run.parent, env=env, check=False)


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory, env) -> Path:
    run = tmp_path_factory.mktemp("sharded") / "run"
    proc = train_sharded(run, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


def write_hostile_index(save: Path, marker: Path) -> None:
    """DCP's .metadata replaced by a pickle whose payload touches `marker`."""
    import pickle

    (save / ".metadata").write_bytes(pickle.dumps(Payload(marker)))


def write_hostile_value(save: Path, marker: Path) -> None:
    """A payload among the values DCP stores as pickles in a shard file (the optimizer's lr),
    with an index that holds only the types DCP writes: the index points the value at it."""
    import dataclasses
    import io
    import pickle

    meta = pickle.loads((save / ".metadata").read_bytes())  # our own file: trusted
    blob = io.BytesIO()
    torch.save(Payload(marker), blob)
    shard = save / "__0_0.distcp"
    offset = shard.stat().st_size
    with open(shard, "ab") as f:
        f.write(blob.getvalue())
    [index] = [i for i in meta.storage_data if i.fqn == "optim.param_groups.0.lr"]
    meta.storage_data[index] = dataclasses.replace(meta.storage_data[index], offset=offset,
                                                   length=len(blob.getvalue()))
    (save / ".metadata").write_bytes(pickle.dumps(meta))


def write_hostile_train_state(save: Path, marker: Path) -> None:
    write_malicious(save / "train_state.pt", marker, like=save / "train_state.pt")


HOSTILE = {"index": (write_hostile_index, ".metadata"), "shard value": (write_hostile_value, "__0_0.distcp"),
           "train state": (write_hostile_train_state, "train_state.pt")}


@pytest.fixture(params=sorted(HOSTILE))
def hostile_sharded(request, sharded_run, tmp_path) -> tuple[Path, Path, str]:
    """A copy of a sharded run whose save carries a payload; the marker; the file that holds it."""
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(sharded_run, run, symlinks=True)
    write, file = HOSTILE[request.param]
    write((run / "ckpt" / "last.dcp").resolve(), marker)
    return run, marker, file


def assert_sharded_refused(proc: subprocess.CompletedProcess, marker: Path, file: str) -> None:
    assert not marker.exists(), "the sharded checkpoint's payload ran"
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("error: "), proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert f"/{file} refused:" in line and "(posix.system), and loading them could run code" in line, line
    assert "that nanogpt wrote" in line and "resuming from" not in proc.stderr + proc.stdout


def test_resume_refuses_a_sharded_checkpoint_that_carries_code(hostile_sharded, env):
    """Before: DCP's pickle.load ran the index's payload (then an AssertionError traceback), and
    torch.load(weights_only=False) the shard value's (then training went on, exit 0); a train
    state's was refused but passed over as a corrupt save, as a single-file one never is."""
    run, marker, file = hostile_sharded
    proc = train_sharded(run, env, "task.max_iters=8", "init_from=resume")
    assert_sharded_refused(proc, marker, file)


def test_the_same_command_refuses_a_sharded_one_too(hostile_sharded, env):
    run, marker, file = hostile_sharded
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    assert_sharded_refused(train_sharded(run, env), marker, file)


def test_consolidate_refuses_a_sharded_index_that_carries_code(sharded_run, tmp_path, env):
    run, marker = tmp_path / "run", tmp_path / "PWNED"
    shutil.copytree(sharded_run, run, symlinks=True)
    write_hostile_index((run / "ckpt" / "last.dcp").resolve(), marker)
    (run / "ckpt" / "last.pt").unlink()  # consolidation has work to do
    proc = module(["-m", "nanogpt.checkpoint", "consolidate", str(run)], REPO, env)
    assert_sharded_refused(proc, marker, ".metadata")
    assert not (run / "ckpt" / "last.pt").exists()


@pytest.mark.slow
def test_two_ranks_refuse_a_sharded_checkpoint_that_carries_code(hostile_sharded, tmp_path, env):
    """torchrun, 2 gloo ranks resharding a 1-process save: the index is refused by rank 0 before
    any rank reads a tensor; a shard value by the ranks that read it, the refusal gathered by
    DCP from every rank. No rank runs the payload."""
    from test_distributed import torchrun

    run, marker, file = hostile_sharded
    proc = torchrun([*QUICK, "hardware.strategy=fsdp", "task.max_iters=8", "task.eval_interval=2",
                     "init_from=resume", f"run={run}"], cwd=tmp_path, env=env, check=False)
    assert not marker.exists(), "the sharded checkpoint's payload ran"
    assert proc.returncode != 0
    assert f"/{file} refused:" in proc.stderr and "could run code" in proc.stderr, proc.stderr[-3000:]
