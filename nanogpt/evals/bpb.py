"""Bits per byte: the validation loss on an axis that does not depend on the tokenizer.

A loss in nats per token rewards a tokenizer with long tokens; bits per byte does not:

    bpb = (sum of the targets' cross-entropies, in nats) / (ln 2 x UTF-8 bytes of their text)

so a char-level and a BPE run, or two BPE vocabularies, compare on one scale. A token's bytes
come from its tokenizer (a char's UTF-8 length, a BPE token's byte string); a special token
(GPT-2's <|endoftext|>) is no text: it has 0 bytes, and its loss is left out (nanochat's
convention). For ASCII char-level data every token is one byte: bpb = loss / ln 2.
"""
from __future__ import annotations

import logging
import math

import torch
from torch.nn import functional as F

from nanogpt.tokenizer import TokenizerError, load_tokenizer

log = logging.getLogger("nanogpt")


def token_bytes_table(tokenizer_meta: dict, vocab_size: int) -> list[int] | None:
    """Bytes of each id's text (ids the tokenizer does not have, e.g. a padded vocabulary's:
    0). None, with a warning, when the tokenizer cannot be built (no GPT-2 rank file here)."""
    try:
        sizes = load_tokenizer(tokenizer_meta).token_bytes()
    except TokenizerError as e:
        log.warning("validation bits per byte not measured: %s", e)
        return None
    return (sizes + [0] * vocab_size)[:vocab_size]


def nats_and_bytes(logits: torch.Tensor, targets: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """[summed cross-entropy of the targets that are text, their bytes] (float64, on the device)
    for logits (B, T, V) and targets (B, T) (-1: ignored); table: token_bytes_table as a tensor."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    t = targets.reshape(-1)
    nbytes = table[t.clamp(min=0)] * (t >= 0)
    nats = F.cross_entropy(logits.reshape(-1, logits.size(-1)), t, ignore_index=-1, reduction="none")
    text = nbytes > 0
    return torch.stack([nats[text].double().sum(), nbytes.double().sum()])


def bits_per_byte(nats: float, nbytes: float) -> float:
    return nats / (math.log(2) * nbytes) if nbytes > 0 else math.nan
