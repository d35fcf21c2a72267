"""Export a run's checkpoint as a Hugging Face GPT-2 model directory.

    python -m nanogpt.export RUN_DIR OUT_DIR [--which best|last] [--force] [--rank-file PATH]

OUT_DIR gets config.json + model.safetensors, which `transformers.GPT2LMHeadModel.from_pretrained`
loads as is, and, when the run's data used GPT-2 BPE, the tokenizer files (vocab.json, merges.txt,
tokenizer.json, tokenizer_config.json, special_tokens_map.json) rebuilt from the local tiktoken rank
file, so no download is needed. A char-level run keeps its alphabet in nanogpt_tokenizer.json:
Hugging Face has no GPT-2 tokenizer for it. The marker file .nanogpt-export says that nanogpt
wrote the directory: --force replaces an earlier export, and refuses any other directory.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from nanogpt.errors import UserError
from nanogpt.hf.weights import check_exportable, hf_state_dict
from nanogpt.model import GPT, GPTConfig
from nanogpt.tokenizer import EOT, EOT_ID

# ----------------------------------------------------------------------------------------------
# GPT-2 tokenizer files from tiktoken's mergeable ranks

def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map: vocab.json and merges.txt spell tokens with it
    (printable bytes map to themselves, the rest to characters from U+0100 on; space is 'Ġ')."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _merge_parts(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The two tokens merged into `token`: run BPE on its bytes with the merges ranked below it,
    which stops exactly one merge short (how tiktoken's ranks encode the merge list)."""
    parts = [bytes([b]) for b in token]
    limit = ranks[token]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not a merge of two lower-ranked tokens")
    return parts[0], parts[1]


def gpt2_tokenizer_files(ranks: dict[bytes, int], model_max_length: int) -> dict[str, str]:
    """File name -> content of a Hugging Face GPT-2 tokenizer, from tiktoken's mergeable ranks."""
    if sorted(ranks.values()) != list(range(EOT_ID)):
        raise ValueError(f"expected GPT-2's {EOT_ID} ranks 0..{EOT_ID - 1}, got {len(ranks)}")
    to_unicode = bytes_to_unicode()
    spell = lambda b: "".join(to_unicode[x] for x in b)  # noqa: E731
    by_rank = sorted(ranks.items(), key=lambda kv: kv[1])
    vocab = {spell(b): r for b, r in by_rank} | {EOT: EOT_ID}
    # rank order is merge order: the first 256 ranks are the single bytes, every later one a merge
    merges = [" ".join(map(spell, _merge_parts(ranks, b))) for b, _ in by_rank if len(b) > 1]
    tokenizer_json = {  # the fast tokenizer: the same BPE, byte-level pre-tokenizer and decoder
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": EOT_ID, "content": EOT, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}],
        "normalizer": None,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                           "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "vocab": vocab, "merges": merges},
    }
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    tokenizer_config = {"tokenizer_class": "GPT2Tokenizer", "model_max_length": model_max_length,
                        "add_prefix_space": False, "add_bos_token": False, "errors": "replace",
                        "clean_up_tokenization_spaces": False, **special}
    dump = lambda obj: json.dumps(obj, ensure_ascii=False, indent=2) + "\n"  # noqa: E731
    return {
        "vocab.json": json.dumps(vocab, ensure_ascii=False),
        # the header line is part of the format: readers skip the first line
        "merges.txt": "#version: 0.2\n" + "\n".join(merges) + "\n",
        "tokenizer.json": json.dumps(tokenizer_json, ensure_ascii=False),
        "tokenizer_config.json": dump(tokenizer_config),
        "special_tokens_map.json": dump(special),
    }


def _tokenizer_files(tokenizer_meta: dict | None, rank_file, block_size: int) -> dict[str, str]:
    """The tokenizer files to write for this tokenizer meta; warns when none can be made for it."""
    if tokenizer_meta is None:  # the model alone was asked for
        return {}
    kind = tokenizer_meta.get("kind")
    if kind == "char":
        warnings.warn("char-level tokenizer: Hugging Face has no GPT-2 tokenizer for it; its "
                      "alphabet is in nanogpt_tokenizer.json", stacklevel=3)
        return {"nanogpt_tokenizer.json": json.dumps(tokenizer_meta, ensure_ascii=False) + "\n"}
    if kind != "gpt2":
        warnings.warn(f"no known tokenizer ({tokenizer_meta!r}): exporting the model without "
                      "tokenizer files", stacklevel=3)
        return {}
    from nanogpt.tokenizer import GPT2Tokenizer, TokenizerError

    try:  # the rank file: argument, $NANOGPT_GPT2_RANKS, tiktoken's cache, the shared data folder
        ranks = GPT2Tokenizer(rank_file).enc._mergeable_ranks
    except TokenizerError as e:
        if rank_file is not None:  # asked for explicitly: a bad file is an error, not a warning
            raise UserError(str(e)) from e
        warnings.warn(f"exporting the model without tokenizer files: {e}", stacklevel=3)
        return {}
    return gpt2_tokenizer_files(ranks, model_max_length=block_size)


# ----------------------------------------------------------------------------------------------
# the model directory

def hf_config(config: GPTConfig, dtype: torch.dtype, eos_token_id: int | None) -> dict:
    """config.json of a transformers GPT2LMHeadModel with our model's shape."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,  # a padded vocabulary is exported padded: rows are weights
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None if config.mlp_hidden == 4 * config.n_embd else config.mlp_hidden,  # None: 4 * n_embd
        "activation_function": "gelu_new",  # the tanh GELU, as ours
        "layer_norm_epsilon": 1e-5,
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


# written into every export: --force replaces a directory only when it holds this
MARKER = ".nanogpt-export"
# what an export holds (exports written before MARKER existed are recognised by these alone)
EXPORT_FILES = {"config.json", "model.safetensors", "nanogpt_tokenizer.json", "vocab.json", "merges.txt",
                "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", MARKER}


def check_target(out_dir: Path, force: bool, run_dir: Path | None = None) -> None:
    _refuse_run_dirs(Path(out_dir), run_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not force:
            raise UserError(f"{out_dir} is not empty: choose a new directory, or pass --force "
                            "(force=True) to replace an earlier export there")
        if not _is_export(out_dir):
            raise UserError(f"{out_dir} is not an earlier export (no {MARKER} in it): --force only "
                            "replaces a directory that python -m nanogpt.export wrote, never data, "
                            "runs or other files; choose a new or empty OUT_DIR, e.g. exports/NAME")


def _is_export(d: Path) -> bool:
    """A directory an export wrote: its marker, or (an export older than the marker) only export
    files, with nanogpt's record in config.json."""
    if (d / MARKER).is_file():
        return True
    entries = list(d.iterdir())
    if not all(p.is_file() and p.name in EXPORT_FILES for p in entries):
        return False
    try:
        config = json.loads((d / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "nanogpt" in config


def _is_run_dir(d: Path) -> bool:
    """A training run's directory: what training writes into it."""
    return (d / "ckpt").is_dir() or (d / "summary.json").is_file() or (d / "metrics.jsonl").is_file()


def _refuse_run_dirs(out_dir: Path, run_dir: Path | None) -> None:
    """An export never goes into, onto or above a training run: --force replaces the target
    directory, which would delete the run (or its checkpoints)."""
    out = out_dir.resolve()
    source = Path(run_dir).resolve() if run_dir is not None else None
    advice = (": an export goes outside every run (replacing its target would delete checkpoints): "
              "choose another OUT_DIR, e.g. exports/NAME")
    for d in (out, *out.parents):
        if d == source or _is_run_dir(d):
            where = "is the training run directory" if d == out else "is inside the training run directory"
            raise UserError(f"{out_dir} {where} {d}{advice}")
    if out.is_dir():
        inside = ([source] if source is not None and out in source.parents else []) or \
            [p.parent for p in out.rglob("*") if p.name in ("ckpt", "summary.json")][:1]
        if inside:
            raise UserError(f"{out_dir} holds the training run directory {inside[0]}{advice}")


def _default_permissions(directory: Path) -> None:
    """mkdtemp and safetensors create owner-only files; give the export the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
    for f in directory.iterdir():
        f.chmod(0o666 & ~umask)


def export_hf(model: GPT, out_dir, tokenizer_meta: dict | None = None, rank_file=None,
              force: bool = False, source: dict | None = None) -> Path:
    """Write `model` as a Hugging Face GPT-2 directory (see the module docstring); returns it.

    The files are written to a temporary directory next to `out_dir`, then renamed into place,
    so a failed export leaves no half-written model. `source` (e.g. checkpoint, iter, dataset)
    is recorded under "nanogpt" in config.json.
    """
    out_dir = Path(out_dir)
    check_target(out_dir, force)
    config = getattr(model, "_orig_mod", model).config
    check_exportable(config)
    tokenizer_files = _tokenizer_files(tokenizer_meta, rank_file, config.block_size)
    from safetensors.torch import save_file

    state = hf_state_dict(model)
    # safetensors refuses shared tensors: leave out the tied head, as save_pretrained does
    del state["lm_head.weight"]
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    # <|endoftext|> is GPT-2 BPE's end of text; a char vocabulary has none
    eos = EOT_ID if (tokenizer_meta or {}).get("kind") != "char" and config.vocab_size > EOT_ID else None
    cfg = hf_config(config, state["transformer.wte.weight"].dtype, eos_token_id=eos)
    if source:
        cfg["nanogpt"] = source

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        (tmp / MARKER).write_text("written by python -m nanogpt.export: --force may replace this directory\n")
        for name, text in tokenizer_files.items():
            (tmp / name).write_text(text, encoding="utf-8")
        _default_permissions(tmp)
        if out_dir.exists():  # empty, or force: swap the old directory out, then delete it
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(old / "x")
            try:
                tmp.rename(out_dir)
            except BaseException:
                (old / "x").rename(out_dir)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# ----------------------------------------------------------------------------------------------
# training runs
