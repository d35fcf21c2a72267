"""How well a model predicts given continuations: the scoring that HellaSwag and lm-eval share.

A row is (tokens, n): the last n tokens are the continuation, scored given everything before
them. Rows are padded on the right into one batch (causal attention never looks ahead, so padding
changes nothing) and a row longer than the model's context keeps its last block_size + 1 tokens,
as lm-eval's Hugging Face model does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.inference_mode()
def continuation_logprobs(model, rows: list[tuple[list[int], int]], rt) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed log-probability, number of tokens scored, greedy?) of each row's continuation, on the
    CPU. greedy: every continuation token is the model's argmax at its position."""
    block = model.config.block_size
    rows = [(toks[-(block + 1):], min(n, len(toks[-(block + 1):]) - 1)) for toks, n in rows]
    length = max(len(toks) for toks, _ in rows) - 1
    x = torch.zeros((len(rows), length), dtype=torch.long)
    y = torch.full((len(rows), length), -1, dtype=torch.long)  # -1: not a continuation token
    for i, (toks, n) in enumerate(rows):
        k = len(toks) - 1
        x[i, :k] = torch.tensor(toks[:-1])
        if n > 0:
            y[i, k - n:k] = torch.tensor(toks[k + 1 - n:])
    x, y = x.to(rt.device), y.to(rt.device)
    with rt.autocast():
        logits, _ = model(x, y)  # the targets make the model return every position's logits
    scored = y != -1
    picked = logits[scored].float()
    logprob = -F.cross_entropy(picked, y[scored], reduction="none")
    hit = (picked.argmax(-1) == y[scored]).float()
    row = scored.nonzero()[:, 0]
    sums = torch.zeros(len(rows), dtype=torch.float64, device=rt.device).index_add_(0, row, logprob.double())
    misses = torch.zeros(len(rows), device=rt.device).index_add_(0, row, 1 - hit)
    return sums.cpu(), scored.sum(1).cpu(), (misses == 0).cpu()
