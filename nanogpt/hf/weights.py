"""OpenAI's GPT-2 weights into our GPT, and our GPT out to the Hugging Face layout.

Weights come from a local Hugging Face GPT-2 directory (config.json + model.safetensors, sharded
safetensors, or pytorch_model.bin) or from the hub (cached by huggingface_hub). Two layout
differences separate HF's GPT-2 from ours:
  * HF stores the four matmul weights as `Conv1D` (in, out) matrices; nn.Linear wants (out, in),
    so attn.c_attn, attn.c_proj, mlp.c_fc and mlp.c_proj weights are transposed;
  * HF's files may or may not prefix names with "transformer.", may carry the causal-mask buffers
    (attn.bias, attn.masked_bias) of old versions, and leave out the LM head (tied to wte).

Loading builds the model on the meta device and fills it tensor by tensor, so the peak memory is
about one copy of the weights in the target dtype, not two.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Callable, Iterator

import torch

from nanogpt import parametrization
from nanogpt.errors import UserError
from nanogpt.io import UnsafeCheckpoint, clean_state_dict, error_reason, torch_load
from nanogpt.model import GPT, GPTConfig
from nanogpt.paths import REPO_ROOT

GPT2_VOCAB_SIZE = 50257  # never padded for pretrained weights: the file has exactly these rows
GPT2_BLOCK_SIZE = 1024
# OpenAI's four GPT-2s: GPTConfig's defaults (GPT-2's block, vocabulary, biases) at four sizes
GPT2_SIZES = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 350M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
}
HUB_ORG = "openai-community"

# The Conv1D weights, stored (in, out) by HF and (out, in) by nn.Linear.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-parameter buffers of old HF GPT-2 files (the causal mask, a constant): nothing to load.
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def _is_conv1d(name: str) -> bool:
    return name.endswith(CONV1D_SUFFIXES)


def _is_buffer(name: str) -> bool:
    return ("." + name).endswith(BUFFER_SUFFIXES)


def _short(names, limit: int = 12) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ----------------------------------------------------------------------------------------------
# where the files are

def _size_key(name: str) -> str | None:
    """'gpt2-medium', 'gpt2_medium' and 'openai-community/gpt2-medium' all mean gpt2-medium."""
    short = name.split("/", 1)[1] if name.startswith(HUB_ORG + "/") else name
    short = short.replace("_", "-")
    return short if short in GPT2_SIZES else None


def _weight_files(directory: Path) -> list[Path]:
    """The weight files of a local HF model directory, safetensors first."""
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():  # save_pretrained shards big models: the index maps tensors to shards
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise UserError(f"{index} has no weight_map of tensor names to files: download the "
                            "model again")
        return [directory / f for f in sorted(set(weight_map.values()))]
    legacy = directory / "pytorch_model.bin"
    if legacy.is_file():
        return [legacy]
    present = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
    raise UserError(f"no GPT-2 weights in {directory}: expected model.safetensors (or a sharded "
                    f"model.safetensors.index.json, or pytorch_model.bin); it holds {present}")


def _download(repo_id: str, revision: str | None = None) -> tuple[list[Path], Path | None]:
    """model.safetensors (and config.json, if the repo has one) from the hub, via its cache, at
    `revision` (a branch, tag or commit; None: main)."""
    from huggingface_hub import (
        hf_hub_download,  # only needed online: keep imports light
    )

    try:
        weights = Path(hf_hub_download(repo_id=repo_id, filename="model.safetensors", revision=revision))
    except Exception as e:  # offline, unknown repo, gated repo, no safetensors...
        raise UserError(
            f"could not get {repo_id}/model.safetensors from the Hugging Face hub "
            f"({type(e).__name__}: {e}). On a machine without internet, download it elsewhere "
            f"(`hf download {repo_id} --local-dir DIR`), copy DIR here and set model.path=DIR "
            "(--path DIR for python -m nanogpt.perplexity)"
        ) from e
    try:
        config = Path(hf_hub_download(repo_id=repo_id, filename="config.json", revision=revision))
    except Exception:  # the shape is then taken from GPT2_SIZES
        config = None
    return [weights], config


def hub_repo(name: str) -> str:
    """The hub repository of a model name: OpenAI's four under openai-community/, else as given."""
    key = _size_key(name)
    return f"{HUB_ORG}/{key}" if key else name


def preset_revision(name: str | None) -> str | None:
    """The hub commit conf/model/pretrained/<size>.yaml pins for OpenAI's weights `name` (the one
    place the pins live), for the command lines outside Hydra; None for any other name."""
    key = _size_key(name) if name else None
    preset = REPO_ROOT / "conf" / "model" / "pretrained" / f"{(key or '').replace('-', '_')}.yaml"
    if not key or not preset.is_file():
        return None
    import yaml

    return (yaml.safe_load(preset.read_text()) or {}).get("revision")


def snapshot_commit(file: Path) -> str | None:
    """The commit a hub download resolved to: huggingface_hub keeps each file under
    snapshots/<commit>/ in its cache (None for a file from elsewhere)."""
    file = Path(file)
    return file.parent.name if file.parent.parent.name == "snapshots" else None


def weights_source(name: str | None, path, files: list[Path], revision: str | None = None) -> dict:
    """Where weights came from, for a run's log and summary: {"path": DIR}, or {"hub": REPO,
    "revision": what was asked (main by default), "commit": the commit it resolved to}."""
    if path is not None:
        return {"path": str(Path(path).expanduser().resolve())}
    return {"hub": hub_repo(name), "revision": revision or "main", "commit": snapshot_commit(files[0])}


def describe_source(source: dict) -> str:
    """One line's worth: `model.path=/abs/dir`, or `openai-community/gpt2 at commit 607a30d... (revision main)`."""
    if "path" in source:
        return f"model.path={source['path']}"
    commit = source.get("commit") or "unknown (not from huggingface_hub's cache)"
    return f"{source['hub']} from the Hugging Face hub at commit {commit} (revision {source['revision']})"


def pretrained_shape(name: str | None, path, revision: str | None = None) -> GPTConfig | None:
    """The architecture of the weights a run will load, from their config.json (no weights read):
    what the run's recorded config must say. None when it cannot be told now (offline, no
    config.json for an unknown name): load_pretrained then says why."""
    try:
        if path is not None:
            config_file = Path(path).expanduser() / "config.json"
            return _gpt_config(config_file if config_file.is_file() else None, name, 0.0)
        from huggingface_hub import hf_hub_download

        try:
            config_file = Path(hf_hub_download(repo_id=hub_repo(name), filename="config.json", revision=revision))
        except Exception:  # noqa: BLE001 (offline: OpenAI's sizes are known)
            config_file = None
        return _gpt_config(config_file, name, 0.0)
    except UserError:
        return None


def _locate(name: str | None, path: str | os.PathLike | None,
            revision: str | None = None) -> tuple[list[Path], Path | None]:
    """(weight files, config.json or None) for a local directory or a hub name."""
    if path is not None:
        directory = Path(path).expanduser()
        if not directory.is_dir():
            raise UserError(f"model path {directory} is not a directory: point model.path at a "
                            "Hugging Face GPT-2 model directory (config.json + model.safetensors)")
        files, config_file = _weight_files(directory), directory / "config.json"
        config_file = config_file if config_file.is_file() else None
    elif name:
        files, config_file = _download(hub_repo(name), revision)
    else:
        raise UserError("load_pretrained needs a model name (gpt2, gpt2-medium, gpt2-large, "
                        "gpt2-xl) or a local directory (model.path=DIR)")
    return files, config_file


def _read_json(path: Path) -> dict:
    """A JSON object from a model directory; anything else is a clear error."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}): download the model again, or fix the file") from e
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a JSON {type(obj).__name__}, not an object: download the model again")
    return obj


# ----------------------------------------------------------------------------------------------
# the model's shape

def _gpt_config(config_file: Path | None, name: str | None, dropout: float) -> GPTConfig:
    """GPTConfig from an HF GPT-2 config.json; without one, from GPT2_SIZES."""
    if config_file is None:
        key = _size_key(name or "")
        if key is None:
            raise UserError(f"no config.json next to the weights and {name!r} is not one of "
                            f"{', '.join(GPT2_SIZES)}: cannot tell the model's shape")
        return replace(GPT2_SIZES[key], block_size=GPT2_BLOCK_SIZE, vocab_size=GPT2_VOCAB_SIZE,
                       dropout=dropout, bias=True)
    c = _read_json(config_file)
    if c.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"config.json has model_type {c['model_type']!r}: only GPT-2 checkpoints load")
    # Settings our GPT hard-codes; a checkpoint that differs would load but compute something else.
    problems = []
    if c.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
        problems.append(f"activation_function {c['activation_function']!r} (ours is the tanh GELU)")
    if abs(c.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon {c['layer_norm_epsilon']} (ours is 1e-5)")
    if not c.get("scale_attn_weights", True) or c.get("scale_attn_by_inverse_layer_idx", False):
        problems.append("non-standard attention scaling")
    if problems:
        raise UserError("this GPT-2 variant is not supported: " + "; ".join(problems))
    _check_shape_fields(c, config_file)
    mlp_ratio = c["n_inner"] / c["n_embd"] if c.get("n_inner") is not None else 4.0
    config = GPTConfig(block_size=c.get("n_positions", c.get("n_ctx")), vocab_size=c["vocab_size"],
                       n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"],
                       dropout=dropout, bias=True, mlp_ratio=mlp_ratio)
    if c.get("n_inner") is not None and config.mlp_hidden != c["n_inner"]:
        raise UserError(f"this GPT-2 variant is not supported: n_inner {c['n_inner']} is no MLP "
                        f"width our GPT can hold with n_embd {c['n_embd']}")
    return config


SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "vocab_size")


def _check_shape_fields(c: dict, config_file: Path) -> None:
    """Each shape field a positive whole number, the heads dividing the width: a config.json with
    n_layer -1 or 1.5 would otherwise fail while the model is built, with a traceback."""
    def bad(why: str) -> UserError:
        return UserError(f"{config_file}: {why}: download the model again, or fix the file")

    positions = "n_ctx" if "n_ctx" in c and "n_positions" not in c else "n_positions"  # old files: n_ctx
    for key in (*SHAPE_FIELDS, positions, "n_inner"):
        value = c.get(key)
        if value is None and key != "n_inner":  # n_inner: null is 4 x n_embd
            raise bad(f"the GPT-2 shape field {key} is missing (it needs n_layer, n_head, n_embd, "
                      "n_positions and vocab_size)")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise bad(f"{key} is {value!r}, not a positive whole number")
    if c["n_embd"] % c["n_head"]:
        raise bad(f"n_head {c['n_head']} does not divide n_embd {c['n_embd']}")


def _reference_shapes(config: GPTConfig) -> dict[str, torch.Size]:
    """Our parameter names and shapes for `config`, at no memory cost (meta tensors)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in GPT(config).state_dict().items()}


# ----------------------------------------------------------------------------------------------
# loading

@contextmanager
def _open_tensors(files: list[Path]) -> Iterator[dict[str, tuple[tuple, Callable[[], torch.Tensor]]]]:
    """Name -> (shape, loader of that one tensor) for every tensor in `files`; nothing read yet."""
    tensors: dict[str, tuple[tuple, Callable[[], torch.Tensor]]] = {}
    with ExitStack() as stack:
        for f in files:
            with _unreadable_weights(f):
                _open_file(f, stack, tensors)
        yield tensors


@contextmanager
def _unreadable_weights(f: Path):
    """A weight file that does not open (garbage, truncated, missing shard) is a clear error; one
    that would run code (a pickle with a payload) is refused by nanogpt.io.torch_load."""
    try:
        yield
    except (UserError, UnsafeCheckpoint):
        raise
    except Exception as e:
        raise UserError(f"cannot read the weights in {f} ({error_reason(e)}): the file is "
                        "missing, truncated or not a model; download the model again") from e


def _open_file(f: Path, stack: ExitStack, tensors: dict) -> None:
    """Add f's tensors to `tensors` (name -> (shape, loader)), reading none of them yet."""
    if f.suffix == ".safetensors":
        from safetensors import safe_open

        try:  # pread: each tensor is read into its own memory, nothing stays mapped
            handle = stack.enter_context(safe_open(str(f), framework="pt", backend="pread"))
            owned = True
        except TypeError:  # safetensors < 0.8 only maps the file; its pages count as RSS
            handle = stack.enter_context(safe_open(str(f), framework="pt"))
            owned = False
        for k in handle.keys():
            load = ((lambda h=handle, k=k: h.get_tensor(k)) if owned else
                    (lambda h=handle, k=k: h.get_tensor(k).clone()))
            tensors[k] = (tuple(handle.get_slice(k).get_shape()), load)
    else:
        try:  # mmap: tensors are paged in as they are copied, not all at once
            sd = torch_load(f, map_location="cpu", mmap=True)
        except RuntimeError:  # files from torch < 1.6 (not zip) cannot be mmapped
            sd = torch_load(f, map_location="cpu")
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise UserError(f"{f} is not a state dict of tensors: download the model again")
        for k, v in sd.items():
            tensors[k] = (tuple(v.shape), lambda v=v: v.clone())


def _match_keys(hf_keys, expected: dict[str, torch.Size]) -> dict[str, str]:
    """Our name -> HF name; raises naming every missing and unexpected tensor."""
    ours_to_hf, unexpected = {}, []
    for k in hf_keys:
        if _is_buffer(k) or k == "lm_head.weight":
            continue
        ours = k if k.startswith("transformer.") else "transformer." + k
        if ours in expected:
            ours_to_hf[ours] = k
        else:
            unexpected.append(k)
    missing = [k for k in expected if k != "lm_head.weight" and k not in ours_to_hf]
    if missing or unexpected:
        msg = ["the checkpoint does not match a GPT-2 of this shape"]
        if missing:
            msg.append(f"missing: {_short(missing)}")
        if unexpected:
            msg.append(f"unexpected: {_short(unexpected)}")
        raise UserError("; ".join(msg) + " (is config.json the one that came with these weights?)")
    return ours_to_hf


def load_pretrained(name: str | None = "gpt2", path: str | os.PathLike | None = None,
                    dropout: float = 0.0, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu", revision: str | None = None) -> GPT:
    """A GPT with GPT-2 weights, in eval mode.

    `path`: a local Hugging Face GPT-2 directory (wins over `name`); else `name` ("gpt2",
    "gpt2-medium", "gpt2-large", "gpt2-xl", with or without "openai-community/", or another hub
    repo holding a GPT-2) is downloaded once into huggingface_hub's cache. The shape comes from
    config.json when there is one, so small or fine-tuned GPT-2s load too.
    """
    files, config_file = _locate(name, path, revision)
    config = _gpt_config(config_file, name, dropout)
    expected = _reference_shapes(config)
    with _open_tensors(files) as tensors:
        ours_to_hf = _match_keys(tensors.keys(), expected)
        # every shape is checked before any tensor is read (HF's Conv1D shapes are transposed)
        bad = []
        for ours, hf in ours_to_hf.items():
            shape = tensors[hf][0][::-1] if _is_conv1d(ours) else tensors[hf][0]
            if shape != tuple(expected[ours]):
                bad.append(f"{hf}: {shape} vs {tuple(expected[ours])} expected")
        if "lm_head.weight" in tensors and tensors["lm_head.weight"][0] != tuple(expected["lm_head.weight"]):
            bad.append(f"lm_head.weight: {tensors['lm_head.weight'][0]} vs "
                       f"{tuple(expected['lm_head.weight'])} expected")
        if bad:
            raise UserError(f"shape mismatch for {len(bad)} tensor(s) (Conv1D weights shown transposed, "
                            f"as our Linear layers hold them): " + "; ".join(bad[:12]))
        state: dict[str, torch.Tensor] = {}
        for ours, hf in ours_to_hf.items():
            t = tensors[hf][1]()
            t = t.t() if _is_conv1d(ours) else t
            # one tensor at a time: its file copy is freed before the next one is read
            state[ours] = t.to(device=device, dtype=dtype).contiguous()
        if "lm_head.weight" in tensors:  # some files carry the tied head: it must be the same matrix
            if not torch.equal(tensors["lm_head.weight"][1]().to(device=device, dtype=dtype),
                               state["transformer.wte.weight"]):
                raise UserError("lm_head.weight differs from the token embedding wte: our GPT ties "
                                "them, so an untied GPT-2 cannot be loaded")
    state["lm_head.weight"] = state["transformer.wte.weight"]
    model = model_from_state_dict(config, state).eval()
    model.weights_source = weights_source(name, path, files, revision)  # what a run records
    return model


def model_from_state_dict(config: GPTConfig, state: dict[str, torch.Tensor]) -> GPT:
    """A GPT that takes over the tensors of `state` (no copy, no wasted random init).
    Raises RuntimeError naming missing/unexpected keys and shape mismatches."""
    with torch.device("meta"):  # no memory: every parameter is replaced by a tensor of `state`
        model = GPT(config)
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_embeddings:  # assign=True gives each module its own Parameter: tie them again
        model.transformer.wte.weight = model.lm_head.weight
    return model


# ----------------------------------------------------------------------------------------------
# our GPT -> Hugging Face layout

# the GPTConfig fields a Hugging Face GPT-2 config.json holds (bias=False is exported as zero
# biases, mlp_ratio as n_inner); every other field must keep its default, GPT-2's choice
HF_GPT2_FIELDS = ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias", "mlp_ratio")
# μP's and CompleteP's multipliers are folded into the weights (fold_parametrization): exportable
FOLDED_FIELDS = ("param", "base_width", "base_depth")


def fold_parametrization(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """Our state dict with μP's / CompleteP's forward multipliers folded into the weights, so a
    standard GPT-2 computes the same logits (up to rounding: each folded tensor is multiplied
    once, in float32). Each fold is exact in real arithmetic, because each multiplier scales
    the output of one linear map (or norm) that nothing else reads:
      attention  q.k x sqrt(d_base) / d_head  -> the query rows of c_attn (weight and bias)
                 x sqrt(d_head), whose scores GPT-2 then divides by sqrt(d_head)
      branches   x 1/d (CompleteP)            -> each block's attn.c_proj and mlp.c_proj
      logits     x 1/m                        -> ln_f's gain and bias (ln_f feeds only the
                 head; the tied embedding itself stays untouched)
    The initialisation and learning-rate rules leave nothing in the weights to fold."""
    if config.param == "sp":
        return state
    out = dict(state)

    def scale(name, factor, rows=None):
        if name not in out or factor == 1.0:
            return
        t = out[name].detach().to(torch.float32).clone()
        if rows is None:
            t.mul_(factor)
        else:
            t[rows].mul_(factor)
        out[name] = t.to(state[name].dtype)

    q_factor = parametrization.attention_scale(config) * (config.n_embd // config.n_head) ** 0.5
    branch = parametrization.branch_multiplier(config)
    for i in range(config.n_layer):
        block = f"transformer.h.{i}."
        for suffix in ("weight", "bias"):
            scale(block + "attn.c_attn." + suffix, q_factor, rows=slice(0, config.n_embd))
            scale(block + "attn.c_proj." + suffix, branch)
            scale(block + "mlp.c_proj." + suffix, branch)
    for suffix in ("weight", "bias"):
        scale("transformer.ln_f." + suffix, parametrization.output_multiplier(config))
    return out


def check_exportable(config: GPTConfig) -> None:
    """Refuse a model option that GPT-2's format cannot hold, naming it."""
    default = GPTConfig()
    other = [f"{f.name}={getattr(config, f.name)!r}" for f in fields(GPTConfig)
             if f.name not in HF_GPT2_FIELDS + FOLDED_FIELDS
             and getattr(config, f.name) != getattr(default, f.name)]
    if other:
        raise UserError(f"the model uses {', '.join(other)}, which a Hugging Face GPT-2 cannot "
                        "hold: only GPT-2 architectures export (the run's checkpoints stay usable "
                        "with task=sample and task=eval)")


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The state dict `transformers.GPT2LMHeadModel` has for this model (strict load works).

    Conv1D weights are transposed (views: call .contiguous() before saving), biases of a
    bias=False model are zeros (HF's GPT-2 always has biases; zero biases compute the same thing),
    and "lm_head.weight" is the very tensor of "transformer.wte.weight", as in HF's own state
    dict. Files cannot hold shared tensors: drop lm_head.weight before saving, as
    save_pretrained does; loading ties it back.
    """
    config = getattr(model, "_orig_mod", model).config  # torch.compile wraps the module
    check_exportable(config)
    ours = fold_parametrization(clean_state_dict(model.state_dict()), config)
    out = {}
    for name, shape in _reference_shapes(replace(config, bias=True)).items():
        if name in ours:
            t = ours[name].detach()
            out[name] = t.t() if _is_conv1d(name) else t
        elif name.endswith(".bias") and not config.bias:
            wte = ours["transformer.wte.weight"]
            out[name] = torch.zeros(shape, dtype=wte.dtype, device=wte.device)
        else:
            raise ValueError(f"model has no {name}: not a nanogpt GPT state dict")
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


# ----------------------------------------------------------------------------------------------
# python -m nanogpt.pretrained: load once and report time and memory

def _peak_rss_bytes() -> int:
    # Linux: VmHWM belongs to this process image. getrusage's ru_maxrss survives fork + exec, so
    # a child of a big process (a test runner) would report its parent's peak.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, Linux: KiB


def main(argv: list[str] | None = None) -> None:
    import psutil

    p = argparse.ArgumentParser(description="Load GPT-2 weights and report load time and peak "
                                "memory (RSS): a check that loading holds one copy of the weights.")
    p.add_argument("--name", default="gpt2", help="hub name (gpt2, gpt2-medium, ...)")
    p.add_argument("--path", default=None, help="local Hugging Face GPT-2 directory (offline)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = p.parse_args(argv)

    before = psutil.Process().memory_info().rss
    t0 = time.perf_counter()
    model = load_pretrained(args.name, path=args.path, dtype=getattr(torch, args.dtype))
    seconds = time.perf_counter() - t0
    weights = sum(t.numel() * t.element_size() for t in model.parameters())
    peak = _peak_rss_bytes()
    mb = 1024 ** 2
    print(f"loaded {model.num_params(non_embedding=False) / 1e6:.1f}M parameters "
          f"({weights / mb:.0f} MB of {args.dtype}) in {seconds:.1f}s")
    print(f"RSS before load {before / mb:.0f} MB | peak RSS {peak / mb:.0f} MB | "
          f"peak - before {(peak - before) / mb:.0f} MB = {(peak - before) / weights:.2f} x the weights")
