"""Every bad data and checkpoint file is a clear error (issue 16, section 3): a dataset is
opened and checked once (files, sizes, dtype, meta schema, the vocabulary against the tokenizer,
every token id against the vocabulary), a checkpoint once (schema, tensor shapes against its
model_args), and broken model directories, garbled run files too. Each: one `error:` line that
says what to do, exit 2 (a malformed metrics line: a warning)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import QUICK, REPO, launch, write_char_dataset
from nanogpt.checkpoint import single as checkpoint
from nanogpt.training import resume
from nanogpt.data.batches import TokenDataset
from nanogpt.errors import UserError



def meta_of(d: Path) -> dict:
    return json.loads((d / "meta.json").read_text())


def set_meta(d: Path, **changes) -> None:
    (d / "meta.json").write_text(json.dumps({**meta_of(d), **changes}))


@pytest.fixture
def data(tmp_path) -> Path:
    return write_char_dataset(tmp_path / "data")


def refused(d: Path, *needles: str) -> str:
    with pytest.raises(UserError) as e:
        TokenDataset(d)
    msg = str(e.value)
    for n in needles:
        assert n in msg, msg
    assert "prepare" in msg, msg  # and it says what to do
    return msg


def test_a_bin_of_odd_byte_length(data):
    with open(data / "train.bin", "ab") as f:
        f.write(b"\0")
    refused(data, "train.bin", "not a multiple of 2", "uint16")


@pytest.mark.parametrize("dtype", ["float32", "int8", "nonsense", 16])
def test_a_meta_dtype_that_is_not_a_token_dtype(data, dtype):
    set_meta(data, dtype=dtype)
    refused(data, "dtype", "uint16 or uint32")


def test_a_meta_dtype_that_does_not_match_the_file(data):
    set_meta(data, dtype="uint32")  # the file is uint16: pairs of ids read as one huge id
    refused(data, "uint32")


def test_token_ids_beyond_the_vocabulary(data):
    ids = np.fromfile(data / "val.bin", dtype=np.uint16)
    ids[len(ids) // 2] = meta_of(data)["vocab_size"] + 5
    ids.tofile(data / "val.bin")
    refused(data, "val.bin", f"token id {meta_of(data)['vocab_size'] + 5}", "vocab_size")


def lengthen_train(d: Path, tokens: int) -> np.ndarray:
    """train.bin repeated to `tokens` tokens, meta.json's count with it."""
    ids = np.resize(np.fromfile(d / "train.bin", dtype=np.uint16), tokens)
    ids.tofile(d / "train.bin")
    set_meta(d, tokens={**meta_of(d)["tokens"], "train": tokens})
    return ids


def test_a_token_id_beyond_the_vocabulary_anywhere_in_a_split(data):
    """Every id is checked, not a sample: one bad id between the places a sample of a few MB
    reads made training fail with an IndexError when a batch drew it."""
    ids = lengthen_train(data, 4_000_000)
    ids[90_000] = meta_of(data)["vocab_size"]  # past the first 64k-token chunk, before the next
    ids.tofile(data / "train.bin")
    refused(data, "train.bin", f"token id {meta_of(data)['vocab_size']}", "vocab_size")


def test_the_whole_file_check_is_remembered_beside_a_large_file(data, monkeypatch):
    """A large split is read once for its largest id (about a second per GB); the result is kept
    in a small file beside it, keyed by its size, modification time and inode, so opening it
    again reads nothing. A file changed since is read again; a garbled record is not trusted."""
    import os
    import time

    from nanogpt.data import batches as data_module

    monkeypatch.setattr(data_module, "MAX_ID_CACHE_MIN_BYTES", 0)  # every file counts as large
    scans = []
    scan = data_module._scan_max_id
    monkeypatch.setattr(data_module, "_scan_max_id", lambda *a: scans.append(a[0].name) or scan(*a))

    def settled(name: str, ids=None, age=60):  # a split written (if given) and dated `age` s ago
        if ids is not None:
            ids.tofile(data / name)
        os.utime(data / name, (time.time() - age, time.time() - age))

    settled("train.bin")
    settled("val.bin")
    TokenDataset(data)
    assert sorted(scans) == ["train.bin", "val.bin"]
    assert (data / ".train.bin.max_id.json").is_file() and not list(data.glob("*.tmp*"))
    TokenDataset(data)
    assert len(scans) == 2  # remembered

    ids = np.fromfile(data / "val.bin", dtype=np.uint16)
    ids[-1] = meta_of(data)["vocab_size"] + 1
    settled("val.bin", ids, age=30)  # the same size, another modification time
    refused(data, "val.bin", f"token id {meta_of(data)['vocab_size'] + 1}")
    refused(data, "val.bin", f"token id {meta_of(data)['vocab_size'] + 1}")  # remembered too
    assert scans[2:] == ["val.bin"]

    ids[-1] = 0
    settled("val.bin", ids, age=0)  # just written: read, but not remembered (it may still change in this tick)
    (data / ".train.bin.max_id.json").write_text("{garbled")
    TokenDataset(data)
    TokenDataset(data)
    assert scans[3:] == ["train.bin", "val.bin", "val.bin"]


@pytest.mark.parametrize("meta, needle", [
    ([1, 2], "JSON list, not an object"),
    ({"tokenizer": {"kind": "char", "chars": ["a"]}, "dtype": "uint16"}, "vocab_size"),
    ({"vocab_size": "65", "tokenizer": {"kind": "char"}, "dtype": "uint16"}, "vocab_size"),
    ({"vocab_size": 0, "tokenizer": {"kind": "char"}, "dtype": "uint16"}, "vocab_size"),
    ({"vocab_size": 65, "dtype": "uint16"}, "tokenizer"),
    ({"vocab_size": 65, "tokenizer": "gpt2", "dtype": "uint16"}, "tokenizer"),
])
def test_a_meta_json_of_the_wrong_shape(data, meta, needle):
    (data / "meta.json").write_text(json.dumps(meta))
    refused(data, "meta.json", needle)


@pytest.mark.parametrize("tokenizer, vocab_size, needle", [
    ({"kind": "char", "chars": 5}, None, "tokenizer.chars"),
    ({"kind": "char", "chars": ["a", "b", "c"]}, None, "3 characters but vocab_size"),
    ({"kind": "char", "chars": ["b", "a"]}, 2, "tokenizer.chars"),
    (None, 10_000_000, "characters but vocab_size 10000000"),
    ({"kind": "gpt2"}, 10_000_000, "gpt2 tokenizer but vocab_size 10000000"),
], ids=["chars 5", "chars short", "chars unsorted", "char vocab_size 10M", "gpt2 vocab_size 10M"])
def test_a_meta_json_whose_vocabulary_disagrees_with_its_tokenizer(data, tokenizer, vocab_size, needle):
    """Before: chars 5 or a list shorter than vocab_size failed after training (sampling), and
    vocab_size 10000000 built a 30 GB model; now meta.json is refused when the data is opened."""
    meta = meta_of(data)
    set_meta(data, tokenizer=tokenizer or meta["tokenizer"], vocab_size=vocab_size or meta["vocab_size"])
    refused(data, str(data / "meta.json"), needle)


def test_a_train_bin_that_is_a_directory(data):
    (data / "train.bin").unlink()
    (data / "train.bin").mkdir()
    refused(data, "train.bin", "not a file")


def test_a_bin_whose_length_disagrees_with_meta(data):
    ids = np.fromfile(data / "train.bin", dtype=np.uint16)
    ids[: len(ids) // 2].tofile(data / "train.bin")
    refused(data, "train.bin", "meta.json says")


def add_a_byte(d: Path) -> None:
    with open(d / "train.bin", "ab") as f:
        f.write(b"\0")


@pytest.mark.parametrize("damage, needle", [
    (add_a_byte, "not a multiple of 2"),
    (lambda d: set_meta(d, vocab_size=10_000_000), "vocab_size 10000000"),
    (lambda d: set_meta(d, tokenizer={"kind": "char", "chars": ["a", "b"]}), "2 characters but vocab_size"),
], ids=["odd length", "vocab_size 10M", "chars short"])
def test_a_bad_dataset_through_launch_is_one_line(tmp_path, data, damage, needle):
    damage(data)
    proc = launch([*QUICK, f"data.root={data.parent}", "task.max_iters=2", "task.num_samples=1"], cwd=tmp_path,
                  env={"HYDRA_FULL_ERROR": "0"}, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.startswith("error:") and needle in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert "prepare" in proc.stderr
    assert not (tmp_path / "runs").exists()


# ---- checkpoints: schema and tensor shapes

def tiny_ckpt(path: Path, **changes) -> Path:
    """A resumable checkpoint of a 1-layer model (AdamW's state after one step), with `changes`."""
    from nanogpt.model import GPT, GPTConfig

    model = GPT(GPTConfig(block_size=16, vocab_size=32, n_layer=1, n_head=2, n_embd=16))
    state = {"model": model.state_dict(), "model_args": dict(vars(model.config)), "iter": 3,
             "optimizer": adamw_state(model), "best_val_loss": 3.0}
    state.update(changes)
    checkpoint.atomic_save(state, path)
    return path


def adamw_state(model) -> dict:
    """The optimizer state training saves: nanogpt's AdamW (two groups) after one step."""
    from nanogpt.training.optim import AdamWConfig
    from nanogpt.training.optim import make_adamw

    optimizer = make_adamw(model, AdamWConfig())
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    return optimizer.state_dict()


def spoil(state: dict, case: str) -> dict:
    """A training checkpoint with one thing wrong that used to fail only once training ran."""
    if case == "negative iter":
        state["iter"] = -5
    elif case == "rng not a list":
        state["rng"] = state["rng"][0] if isinstance(state.get("rng"), list) else "abc"
    elif case == "optimizer of another layout":  # a parameter group one parameter short
        state["optimizer"]["param_groups"][0]["params"].pop()
    elif case == "moments of another shape":
        moments = next(iter(state["optimizer"]["state"].values()))
        moments["exp_avg"] = moments["exp_avg"].reshape(-1)[1:]
    return state


SPOILED = {"negative iter": "its iter is -5, not an integer >= 0",
           "rng not a list": "its rng is a",
           "optimizer of another layout": "its optimizer state does not fit its model (ValueError: loaded state dict "
                                          "contains a parameter group that doesn't match the size",
           "moments of another shape": "its optimizer state does not fit its model (exp_avg of a"}


def test_a_checkpoint_whose_tensors_disagree_with_its_model_args(tmp_path):
    path = tiny_ckpt(tmp_path / "last.pt")
    state = torch.load(path, weights_only=True)
    state["model_args"]["n_embd"] = 32  # the tensors are 16 wide
    torch.save(state, path)
    with pytest.raises(checkpoint.BadCheckpoint, match=r"do not match its model_args.*transformer.wte.weight"):
        checkpoint.load(path)


@pytest.mark.parametrize("changes, needle", [
    ({"model": [1, 2]}, "model"),
    ({"model_args": {"n_layer": "two"}}, "model_args"),
    ({"iter": "3"}, "iter"),
    ({"iter": -5}, r"its iter is -5, not an integer >= 0"),
    ({"rng": "abc"}, r"its rng is a str, not a list of RNG states \(one per rank\)"),
    ({"rng": [{"torch": torch.zeros(3, dtype=torch.uint8), "numpy": {}, "python": []}]},
     r"its rng\[0\] does not restore \(RuntimeError"),
])
def test_a_checkpoint_of_the_wrong_schema(tmp_path, changes, needle):
    path = tiny_ckpt(tmp_path / "last.pt", **changes)
    with pytest.raises(checkpoint.BadCheckpoint, match=needle):
        checkpoint.load(path)


@pytest.mark.parametrize("case", sorted(SPOILED))
def test_a_bad_training_state_falls_back_to_the_other_file(tmp_path, caplog, case):
    """Before, each of these was resumed (the newer file) and failed late: a negative iteration
    trained from -5, an rng dict raised a KeyError, and a state of another layout or shape a
    ValueError or a RuntimeError at the first step; or, for iter=-5, was passed over silently."""
    import logging

    tiny_ckpt(tmp_path / "ckpt" / "best.pt")
    path = tiny_ckpt(tmp_path / "ckpt" / "last.pt", iter=5)
    torch.save(spoil(torch.load(path, weights_only=True), case), path)
    with caplog.at_level(logging.WARNING, "nanogpt"):
        got, state = resume.load_latest(tmp_path)
    assert got.name == "best.pt" and state["iter"] == 3
    assert f"{path}" in caplog.text and SPOILED[case] in caplog.text and "resuming from" in caplog.text


@pytest.mark.parametrize("case", sorted(SPOILED))
def test_a_bad_training_state_in_the_only_checkpoint_is_a_clear_error(tmp_path, data_root, case):
    """A real run's checkpoint, spoiled: resuming it says which file and what, before training."""
    from inprocess import train_tiny

    run = tmp_path / "run"
    train_tiny(run, "task.max_iters=2", "task.eval_interval=2")
    (run / "ckpt" / "best.pt").unlink()
    last = run / "ckpt" / "last.pt"
    torch.save(spoil(torch.load(last, weights_only=True), case), last)
    with pytest.raises(UserError) as e:
        train_tiny(run, "task.max_iters=4", "task.eval_interval=2", "init_from=resume")
    assert str(e.value).startswith(f"no checkpoint of {run} loads: ") and SPOILED[case] in str(e.value)


def test_a_checkpoint_with_the_wrong_shapes_falls_back_to_the_other_file(tmp_path):
    tiny_ckpt(tmp_path / "ckpt" / "best.pt")
    path = tiny_ckpt(tmp_path / "ckpt" / "last.pt", iter=5)
    state = torch.load(path, weights_only=True)
    state["model"]["transformer.wte.weight"] = torch.zeros(7, 16)
    torch.save(state, path)
    got, state = resume.load_latest(tmp_path)
    assert got.name == "best.pt" and state["iter"] == 3


# ---- sharded (FSDP) checkpoints: the index and the train state of a save

@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory) -> tuple[Path, dict]:
    """A one-process hardware.strategy=fsdp run (the format torchrun of any size writes)."""
    from test_security import train_sharded

    root = tmp_path_factory.mktemp("sharded")
    env = {"NANOGPT_DATA_ROOT": str(write_char_dataset(root / "data").parent), "HYDRA_FULL_ERROR": "0"}
    proc = train_sharded(root / "run", env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "run", env


def copy_run(sharded_run, tmp_path) -> tuple[Path, Path]:
    """A copy of the sharded run, and the save its last.dcp points to."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(sharded_run[0], run, symlinks=True)
    return run, (run / "ckpt" / "last.dcp").resolve()


GARBLED = b"\x80\x04not an index" + bytes(range(256)) * 4


@pytest.mark.parametrize("command", ["resume", "consolidate"])
def test_a_garbled_sharded_index_is_one_error_line(sharded_run, tmp_path, command):
    """Before: an AssertionError traceback from inside DCP (and DCP's own logged traceback)."""
    import os
    import subprocess
    import sys

    from test_security import train_sharded

    run, save = copy_run(sharded_run, tmp_path)
    (save / ".metadata").write_bytes(GARBLED)
    if command == "resume":
        proc = train_sharded(run, sharded_run[1], "task.max_iters=8", "init_from=resume")
        opening = f"error: no sharded checkpoint of {run} loads: "
    else:
        (run / "ckpt" / "last.pt").unlink()
        proc = subprocess.run([sys.executable, "-m", "nanogpt.checkpoint", "consolidate", str(run)], cwd=REPO,
                              capture_output=True, text=True, env={**os.environ, **sharded_run[1]})
        opening = f"error: {run} has no sharded checkpoint to consolidate (ckpt/last.dcp or ckpt/best.dcp): "
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(opening) and f"{save / '.metadata'} is corrupt or incomplete, not the index of a " \
        "sharded checkpoint (UnpicklingError" in line, line


def test_a_shard_file_cut_short_is_one_error_line(sharded_run, tmp_path):
    """Tensors DCP cannot read (a shard file truncated after the index was checked): before, a
    CheckpointException, which is not even an Exception, with every rank's traceback."""
    from test_security import train_sharded

    run, save = copy_run(sharded_run, tmp_path)
    shard = save / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    proc = train_sharded(run, sharded_run[1], "task.max_iters=8", "init_from=resume")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith(f"error: the sharded checkpoint {save} does not load (") and \
        "its shard files are damaged or incomplete" in line, line


def test_a_garbled_sharded_index_falls_back_to_the_other_save(sharded_run, tmp_path, caplog):
    import logging
    import os
    import shutil

    from nanogpt.checkpoint import sharded as dcp

    run, save = copy_run(sharded_run, tmp_path)
    other = save.with_name("iter-00000004-abcdef.dcp")
    shutil.copytree(save, other)
    os.unlink(run / "ckpt" / "best.dcp")
    os.symlink(other.name, run / "ckpt" / "best.dcp")
    (save / ".metadata").write_bytes(GARBLED)
    with caplog.at_level(logging.WARNING, "nanogpt"):
        found = dcp.latest(run)
    assert found.path == other and found.iter == 4
    assert f"{save / '.metadata'} is corrupt or incomplete" in caplog.text and "resuming from" in caplog.text


SHARDED_SPOILED = {"negative iter": "its iter is -5, not an integer >= 0",
                   "rng not a list": "its rng is a dict, not a list of RNG states",
                   "moments of another shape": "its tensors do not match its model_args: "
                                               "optim.state.transformer.wte.weight.exp_avg: (3, 32) vs the "
                                               "parameter's"}


@pytest.mark.parametrize("case", sorted(SHARDED_SPOILED))
def test_a_bad_sharded_save_is_a_clear_error_before_any_tensor_is_read(sharded_run, tmp_path, case):
    """Before: iter=-5 resumed at -5, an rng dict was a KeyError once the model was built, and a
    moment of another shape an error from inside DCP's load."""
    import dataclasses
    import pickle

    from nanogpt.checkpoint import sharded as dcp

    run, save = copy_run(sharded_run, tmp_path)
    if case == "moments of another shape":
        meta = pickle.loads((save / ".metadata").read_bytes())  # our own file: trusted
        key = "optim.state.transformer.wte.weight.exp_avg"
        meta.state_dict_metadata[key] = dataclasses.replace(meta.state_dict_metadata[key], size=torch.Size([3, 32]))
        (save / ".metadata").write_bytes(pickle.dumps(meta))
    else:
        state = spoil(torch.load(save / "train_state.pt", weights_only=True), case)
        torch.save(state, save / "train_state.pt")
    with pytest.raises(UserError) as e:
        dcp.latest(run)
    assert str(e.value).startswith(f"no sharded checkpoint of {run} loads: the sharded checkpoint {save} is not "
                                   f"usable: {SHARDED_SPOILED[case]}"), str(e.value)


# ---- a run's own files

def test_a_garbled_summary_in_an_existing_run(tmp_path, data_root):
    from inprocess import train_tiny

    run = tmp_path / "run"
    train_tiny(run, "task.max_iters=2", "task.eval_interval=2")
    (run / "summary.json").write_text("{not json")
    with pytest.raises(UserError, match=r"summary.json is not a valid summary.*Move it aside"):
        train_tiny(run, "task.max_iters=2", "task.eval_interval=2")


@pytest.mark.parametrize("line", ["[1]", '{"iter": "ten"}', '"text"', "{not json"])
def test_a_malformed_metrics_line_does_not_stop_a_resume(tmp_path, data_root, caplog, line):
    """Before, a metrics.jsonl line that is JSON but no record ([1], {"iter": "ten"}) made every
    resume of the run fail with a traceback; now it is left out with a warning naming the line."""
    import logging

    from inprocess import train_tiny

    run = tmp_path / "run"
    train_tiny(run, "task.max_iters=2", "task.eval_interval=2")
    metrics = run / "metrics.jsonl"
    good = metrics.read_text().splitlines()
    metrics.write_text("\n".join([good[0], line, *good[1:]]) + "\n")
    with caplog.at_level(logging.WARNING, "nanogpt"):
        train_tiny(run, "task.max_iters=4", "task.eval_interval=2", "init_from=resume")
    assert f"{metrics} line 2 is not a metrics record" in caplog.text and "left out" in caplog.text
    kept = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert all(isinstance(r, dict) for r in kept) and kept[:len(good)] == [json.loads(x) for x in good]
    assert max(r["iter"] for r in kept) == 4


# ---- model.path directories

def hf_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hf"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 16,
                                               "n_positions": 16, "vocab_size": 32}))
    return d


@pytest.mark.parametrize("case", ["garbled config", "config a list", "garbage safetensors",
                                  "garbage bin", "bin of a list", "garbled index"])
def test_broken_model_directories(tmp_path, case):
    from nanogpt.hf.weights import load_pretrained

    d = hf_dir(tmp_path)
    if case == "garbled config":
        (d / "config.json").write_text("{oops")
        (d / "model.safetensors").write_bytes(b"x" * 100)
    elif case == "config a list":
        (d / "config.json").write_text("[]")
        (d / "model.safetensors").write_bytes(b"x" * 100)
    elif case == "garbage safetensors":
        (d / "model.safetensors").write_bytes(b"\x08\0\0\0\0\0\0\0{garbage" + b"x" * 100)
    elif case == "garbage bin":
        (d / "pytorch_model.bin").write_bytes(b"not a pickle at all" * 10)
    elif case == "bin of a list":
        torch.save([torch.zeros(2)], d / "pytorch_model.bin")
    else:
        (d / "model.safetensors.index.json").write_text('{"weight_map": 3}')
    with pytest.raises(UserError, match="download the model again|fix the file"):
        load_pretrained(path=d)


@pytest.mark.parametrize("key, value, needle", [
    ("n_layer", -1, "n_layer is -1, not a positive whole number"),
    ("vocab_size", 0, "vocab_size is 0, not a positive whole number"),
    ("n_layer", 1.5, "n_layer is 1.5, not a positive whole number"),
    ("n_positions", 0, "n_positions is 0, not a positive whole number"),
    ("n_inner", -4, "n_inner is -4, not a positive whole number"),
    ("n_layer", True, "n_layer is True, not a positive whole number"),
    ("n_head", 5, "n_head 5 does not divide n_embd 16"),
    ("n_head", None, "the GPT-2 shape field n_head is missing"),
])
def test_a_model_config_json_with_a_nonsense_shape(tmp_path, key, value, needle):
    """Before, these ended in a ValueError or TypeError traceback while the model was built."""
    from nanogpt.hf.weights import load_pretrained

    d = hf_dir(tmp_path)
    (d / "model.safetensors").write_bytes(b"x" * 100)  # the shape is checked before any weight is read
    config = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**config, key: value}))
    with pytest.raises(UserError) as e:
        load_pretrained(path=d)
    assert str(e.value).startswith(f"{d / 'config.json'}: {needle}"), str(e.value)
    assert "download the model again" in str(e.value)
