"""Zero-shot perplexity of a fixed-context model on a long text, with a sliding window.

A model sees at most block_size tokens. Cutting the text into disjoint blocks leaves the first
tokens of every block with little context and overstates the perplexity. Sliding the window by
`stride` < block_size tokens, and scoring in each window only the tokens the previous one did not
score, gives every token at least block_size - stride tokens of context (all it has near the start),
for block_size / stride times the compute. This is the recipe of Hugging Face's "Perplexity of
fixed-length models" guide; here a window holds block_size inputs and their block_size next-token
targets, so every token after the first is scored exactly once, none is skipped at window edges.

    python -m nanogpt.perplexity --model gpt2 --dataset Salesforce/wikitext --config wikitext-2-raw-v1
    python -m nanogpt.perplexity --run runs/RUN --file some.txt --stride 128
"""
from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

import torch

from nanogpt.errors import UserError
from nanogpt.runtime.hardware import make_runtime


def _windows(n: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first) for each window over n tokens: inputs ids[begin:end], targets
    ids[begin + 1:end + 1], of which those from position `first` on are scored."""
    windows, scored, begin = [], 0, 0  # targets ids[1..scored] are already scored
    while scored < n - 1:
        end = min(begin + block_size, n - 1)
        windows.append((begin, end, scored - begin))
        scored, begin = end, begin + stride
    return windows


@torch.no_grad()
def sliding_window_loss(model, ids, block_size: int | None = None, stride: int | None = None,
                        batch_size: int = 4, device=None, progress: bool = False,
                        autocast=contextlib.nullcontext) -> dict:
    """Token-weighted mean next-token NLL of `ids` (1-D token ids) under `model`.

    block_size: window length (default: the model's context); stride: how far the window moves
    (default: block_size, i.e. disjoint windows); batch_size: windows per forward pass (the
    logits take batch_size * block_size * vocab_size floats); device: default the model's;
    autocast: the context each forward pass runs in (a Runtime's autocast).
    Returns {"loss": mean NLL in nats, "perplexity": exp(loss), "tokens": tokens scored}.
    """
    ids = torch.as_tensor(ids, dtype=torch.long).cpu()
    if ids.dim() != 1 or ids.numel() < 2:
        raise ValueError(f"ids must be a 1-D sequence of at least 2 tokens, got shape {tuple(ids.shape)}")
    config = getattr(model, "_orig_mod", model).config
    block_size = config.block_size if block_size is None else block_size
    stride = block_size if stride is None else stride
    if not 1 <= block_size <= config.block_size:
        raise ValueError(f"block_size {block_size} must be in [1, {config.block_size}] (the model's context)")
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride {stride} must be in [1, block_size={block_size}]")
    if int(ids.max()) >= config.vocab_size or int(ids.min()) < 0:
        raise ValueError(f"token ids span [{int(ids.min())}, {int(ids.max())}] but the model's vocabulary "
                         f"has {config.vocab_size}: was the text encoded with the model's tokenizer?")
    device = torch.device(device) if device is not None else next(model.parameters()).device

    windows = _windows(ids.numel(), block_size, stride)
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc=f"{len(windows)} windows", unit="batch")
    total_nll, total_tokens = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            # a shorter last window is padded: padding comes after every real position (causal
            # attention never looks ahead) and its targets are -1, so it changes nothing
            length = max(end - begin for begin, end, _ in batch)
            x = torch.zeros(len(batch), length, dtype=torch.long)
            y = torch.full((len(batch), length), -1, dtype=torch.long)
            for row, (begin, end, first) in enumerate(batch):
                x[row, :end - begin] = ids[begin:end]
                y[row, first:end - begin] = ids[begin + 1 + first:end + 1]  # the rest stay -1: unscored
            n = int((y != -1).sum())
            with autocast():
                _, loss = model(x.to(device), y.to(device))
            # the model's loss is the mean over this batch's scored targets: weight it by their count
            total_nll += float(loss) * n
            total_tokens += n
    finally:
        model.train(was_training)
    mean = total_nll / total_tokens
    return {"loss": mean, "perplexity": math.exp(mean), "tokens": total_tokens}


# ----------------------------------------------------------------------------------------------
# python -m nanogpt.perplexity

def _read_text(args) -> tuple[str, str]:
    """(text, description) from --file or a Hugging Face dataset; documents joined by blank lines
    (the WikiText recipe)."""
    if args.file:
        path = Path(args.file)
        if not path.is_file():
            raise UserError(f"no text file {path}")
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except UnicodeDecodeError as e:
            raise UserError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                            f"{e.start:,}): pass a UTF-8 text file with --file") from None
    from datasets import load_dataset

    try:
        ds = load_dataset(args.dataset, args.config, split=args.split)
    except Exception as e:  # offline, unknown dataset, missing config name...
        raise UserError(f"could not load dataset {args.dataset!r} (config {args.config!r}, split "
                        f"{args.split!r}): {type(e).__name__}: {e}. Offline? Save the text to a "
                        "file and pass --file") from e
    if args.column not in ds.column_names:
        raise UserError(f"dataset {args.dataset!r} has no column {args.column!r}; its columns: "
                        f"{', '.join(ds.column_names)} (choose one with --column)")
    desc = f"{args.dataset}" + (f" ({args.config})" if args.config else "") + f" {args.split}"
    return "\n\n".join(ds[args.column]), desc


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m nanogpt.perplexity",
                                description="Zero-shot sliding-window perplexity of GPT-2 or a training run.")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--model", default=None, help="OpenAI GPT-2 (gpt2, gpt2-medium, gpt2-large, "
                     "gpt2-xl); the default when --run is not given")
    who.add_argument("--run", default=None, help="a training run directory (ckpt/best.pt)")
    p.add_argument("--path", default=None, help="local Hugging Face GPT-2 directory for --model (offline)")
    p.add_argument("--revision", default=None, help="hub branch, tag or commit of --model (default: the commit "
                                                   "conf/model/pretrained pins; main for the newest)")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint of --run")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset", help="Hugging Face dataset, e.g. Salesforce/wikitext")
    what.add_argument("--file", help="a UTF-8 text file")
    p.add_argument("--config", default=None, help="dataset config, e.g. wikitext-2-raw-v1")
    p.add_argument("--split", default="test")
    p.add_argument("--column", default="text")
    p.add_argument("--block-size", type=int, default=None, help="window length (default: the model's context)")
    p.add_argument("--stride", type=int, default=None, help="window step (default: half the window, 512 for GPT-2)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per forward pass")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens (a quick check)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="autocast dtype (weights stay float32)")
    p.add_argument("--rank-file", default=None, help="local GPT-2 BPE rank file (r50k_base.tiktoken)")
    args = p.parse_args(argv)

    from nanogpt.tokenizer import TokenizerError, load_tokenizer

    rt = make_runtime(args.device, args.dtype)
    device = rt.device
    text, text_desc = _read_text(args)  # before loading a model: a bad source fails fast
    if args.run:
        from nanogpt.checkpoint.load import load_run

        model, ckpt, _ = load_run(args.run, args.which, device=device, fallback=False)
        tokenizer_meta = ckpt.get("tokenizer")
        if not tokenizer_meta:
            raise UserError(f"{args.run}/ckpt/{args.which}.pt records no tokenizer: cannot encode the text")
        model_desc = f"{args.run} ({args.which}, iter {ckpt.get('iter')})"
    else:
        from nanogpt.hf.weights import load_pretrained, preset_revision

        name = args.model or "gpt2"
        model = load_pretrained(name, path=args.path, device=device,
                                revision=args.revision or preset_revision(name))
        tokenizer_meta = {"kind": "gpt2"}  # OpenAI's GPT-2 was trained on its BPE
        model_desc = args.path or args.model or "gpt2"
    try:
        ids = load_tokenizer(tokenizer_meta, rank_file=args.rank_file).encode(text)
    except (TokenizerError, ValueError) as e:  # no rank file; characters outside a char vocabulary
        raise UserError(f"could not tokenize {text_desc}: {e}") from e
    if args.max_tokens:
        ids = ids[:args.max_tokens]
    block_size = model.config.block_size if args.block_size is None else args.block_size
    stride = max(block_size // 2, 1) if args.stride is None else args.stride

    try:
        result = sliding_window_loss(model, ids, block_size=block_size, stride=stride, batch_size=args.batch_size,
                                     device=device, progress=True, autocast=rt.autocast)
    except ValueError as e:  # block size / stride out of range, ids outside the vocabulary
        raise UserError(str(e)) from e
    print(f"{model_desc} on {text_desc}: {result['tokens']:,} tokens scored, "
          f"block {block_size}, stride {stride}")
    print(f"loss {result['loss']:.4f} | perplexity {result['perplexity']:.3f}")
    return result
