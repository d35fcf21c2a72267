"""What document-aware batches cost and buy: data.packing x model.doc_mask on tiny Shakespeare as
documents (prepare/shakespeare_docs.py: one speech per document, GPT-2 BPE).

Every mode trains the same model from the same initial weights on the same number of tokens (rows
are always full: bestfit pads nothing), and is scored on the same fixed val windows (what the
training loop scores: packing changes only the training rows; a masked model is scored with its
mask). The modes train interleaved, one optimizer step each in turn, so a machine shared with others
slows them alike: tokens/s is reported as a ratio to window without the mask. The step is timed
without building its batch (the training loop builds batches in a background thread); the batch's
build time is reported on its own.

    python bench/packing.py --threads 2          # docs/modern.md: ~30 min on a 2-core EPYC at load ~8
    python bench/packing.py --iters 20 --eval-batches 2   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchlib import REPO, SHAKESPEARE, machine, set_threads

import torch  # noqa: E402

from nanogpt.data.batches import Batches, TokenDataset, eval_batch  # noqa: E402
from nanogpt.model import GPT, GPTConfig  # noqa: E402
from nanogpt.tokenizer import EOT_ID  # noqa: E402
from nanogpt.training.optim import AdamWConfig, make_adamw  # noqa: E402

MODES = [("window", False), ("window", True), ("bos", False), ("bos", True), ("bestfit", False),
         ("bestfit", True)]
GPT2_RANKS = REPO.parent / "shared" / "data" / "gpt2_bpe" / "gpt2.tiktoken"


def dataset(path: str | None, compact: bool) -> TokenDataset:
    if path:
        out = Path(path)
    else:
        from prepare.shakespeare_docs import prepare

        out = Path(tempfile.mkdtemp(prefix="nanogpt-bench-")) / "shakespeare_docs"
        prepare(out, SHAKESPEARE, rank_file=GPT2_RANKS if GPT2_RANKS.is_file() else None)
    return TokenDataset(compacted(out) if compact else out)


def compacted(src: Path) -> Path:
    """The corpus with its GPT-2 ids renumbered over the ~12k it uses: the same text and
    documents, but an LM head 4x smaller, which dominates a small model's step (meta.json names
    the separator's new id: data.packing finds it there)."""
    splits = {s: np.fromfile(src / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")}
    used = np.unique(np.concatenate(list(splits.values())))
    out = src.with_name(src.name + "_compact")
    out.mkdir(exist_ok=True)
    for s, ids in splits.items():
        np.searchsorted(used, ids).astype(np.uint16).tofile(out / f"{s}.bin")
    sep = int(np.searchsorted(used, EOT_ID))
    (out / "meta.json").write_text(json.dumps({
        "dataset": out.name, "tokenizer": {"kind": "gpt2_compact"}, "vocab_size": len(used),
        "dtype": "uint16", "separator": sep}))
    return out


class Mode:
    def __init__(self, data: TokenDataset, packing: str, doc_mask: bool, args):
        self.name = f"{packing}{' + doc_mask' if doc_mask else ''}"
        config = GPTConfig(block_size=args.block, vocab_size=data.vocab_size, n_layer=args.layers,
                           n_head=args.heads, n_embd=args.width, pos_emb=args.pos_emb, doc_mask=doc_mask)
        torch.manual_seed(0)  # the same initial weights for every mode
        self.model = GPT(config)
        self.opt = make_adamw(self.model, AdamWConfig(lr=args.lr, weight_decay=0.1, beta1=0.9, beta2=0.95),
                              device_type="cpu")
        self.train = Batches(data, args.block, args.batch, 1337, torch.device("cpu"), packing=packing,
                             doc_mask=doc_mask)
        self.val = Batches(data, args.block, args.eval_batch, 1337, torch.device("cpu"), doc_mask=doc_mask)
        self.scales = [g["lr"] / args.lr for g in self.opt.param_groups]  # each group's share of lr
        self.step_s = self.batch_s = 0.0
        self.losses = []

    def step(self, it: int, lr: float):
        t0 = time.perf_counter()
        x, y, *docs = self.train.cpu_batch("train", it)
        t1 = time.perf_counter()
        for g, scale in zip(self.opt.param_groups, self.scales):
            g["lr"] = lr * scale
        _, loss = self.model(x, y, docs=docs[0] if docs else None)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.item())
        t2 = time.perf_counter()
        self.batch_s += t1 - t0
        self.step_s += t2 - t1

    @torch.no_grad()
    def val_loss(self, batches: int) -> float:
        self.model.eval()
        total = 0.0
        for k in range(batches):
            x, y, *docs = eval_batch(self.val, "val", k)
            total += self.model(x, y, docs=docs[0] if docs else None)[1].item()
        self.model.train()
        return total / batches


def attention_cost(lengths=(128, 512, 1024), heads: int = 4, head_size: int = 16, batch: int = 4,
                   repeats: int = 5) -> None:
    """The document mask's cost in attention alone (forward + backward, float32): SDPA with the
    boolean block-diagonal mask vs SDPA's causal kernel, interleaved, median of `repeats`."""
    from nanogpt.model import causal_attention, document_ids, document_mask, masked_attention

    print("| T | causal ms | doc mask ms | ratio |\n|---|---|---|---|")
    for T in lengths:
        torch.manual_seed(0)
        q, k, v = (torch.randn(batch, heads, T, head_size, requires_grad=True) for _ in range(3))
        x = torch.randint(0, 20, (batch, T))  # ~20-token documents
        mask = document_mask(document_ids(x, 0), flex=False)
        times = {"causal": [], "mask": []}
        for _ in range(repeats):
            for name, f in (("causal", lambda: causal_attention(q, k, v)),
                            ("mask", lambda: masked_attention(q, k, v, mask))):
                t = time.perf_counter()
                f().sum().backward()
                times[name].append(time.perf_counter() - t)
        c, m = (1e3 * float(np.median(times[n])) for n in ("causal", "mask"))
        print(f"| {T} | {c:.1f} | {m:.1f} | {m / c:.2f} |", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", help="a prepared shakespeare_docs folder (default: prepared into a temp dir)")
    p.add_argument("--iters", type=int, default=150)
    p.add_argument("--full-vocab", dest="compact", action="store_false",
                   help="keep GPT-2's 50257 ids (default: renumber the ~12k the corpus uses)")
    p.add_argument("--block", type=int, default=128)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--eval-batches", type=int, default=20)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--pos-emb", default="rope")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoints", type=int, default=3, help="val losses at this many equal-token points")
    p.add_argument("--attention", action="store_true", help="only time the mask in attention alone")
    args = p.parse_args()
    set_threads(args.threads)
    if args.attention:
        print(machine())
        return attention_cost()
    data = dataset(args.data, args.compact)
    modes = [Mode(data, packing, mask, args) for packing, mask in MODES]
    tokens_per_step = args.batch * args.block
    print(f"{data.path.name}: {len(data.splits['train']):,} train tokens, vocabulary {data.vocab_size:,} | {args.layers}x{args.width} "
          f"{args.pos_emb} model, {args.batch}x{args.block} tokens/step, {args.iters} steps | {machine()}")
    at = sorted({round(args.iters * (i + 1) / args.checkpoints) for i in range(args.checkpoints)})
    vals = {m.name: {} for m in modes}
    for it in range(args.iters):
        lr = args.lr * min(1.0, (it + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * it / args.iters)))
        for m in modes:  # interleaved: the load of the moment falls on every mode alike
            m.step(it, lr)
        if it + 1 in at:
            for m in modes:
                vals[m.name][it + 1] = m.val_loss(args.eval_batches)
            print(f"step {it + 1} ({(it + 1) * tokens_per_step:,} tokens): " +
                  ", ".join(f"{m.name} {vals[m.name][it + 1]:.4f}" for m in modes), flush=True)
            table(modes, vals, at[:at.index(it + 1) + 1], it + 1, tokens_per_step)


def table(modes: list[Mode], vals: dict, at: list[int], iters: int, tokens_per_step: int) -> None:
    """The markdown table so far (printed at every checkpoint: a stopped run keeps its figures)."""
    base = modes[0]
    print("\n| packing | doc_mask | tokens/s vs window | batch build ms | "
          + " | ".join(f"val loss @ {n * tokens_per_step / 1e3:,.0f}k tokens" for n in at) + " | crop rate |")
    print("|---|---|---|---|" + "---|" * len(at) + "---|")
    for m, (packing, mask) in zip(modes, MODES):
        crop = m.train.crop_rate
        print(f"| {packing} | {str(mask).lower()} | {base.step_s / m.step_s:.2f} | {1e3 * m.batch_s / iters:.2f} | "
              + " | ".join(f"{vals[m.name][n]:.4f}" for n in at)
              + f" | {'-' if crop is None or packing != 'bestfit' else f'{100 * crop:.1f}%'} |")
    print(f"\nafter {iters} steps: window's own step {1e3 * base.step_s / iters:.0f} ms "
          f"({tokens_per_step * iters / base.step_s:,.0f} tokens/s at this load) | {machine()}", flush=True)

if __name__ == "__main__":
    main()
