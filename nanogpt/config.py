"""The building blocks of the config's schemas, and the model and data sections.

Every YAML file under conf/ extends a dataclass schema, so a typo in a key or a value of the wrong
type fails at composition time instead of being silently ignored. Each schema checks its values in
`__post_init__` with the checks below (an enumerated value against its choices, a number against
its range). Each section's schema lives beside the code it configures (the optimizers' in
nanogpt/training/optim.py, the hardware's in nanogpt/runtime/schema.py, each task's in its module);
nanogpt/gate.py composes them into the whole config and checks it once, before any work. The core
modules never see OmegaConf: they get these plain dataclasses.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from nanogpt.errors import UserError
from nanogpt.model import GPTConfig, padded_vocab_size

MISSING = "???"  # OmegaConf's marker for a required value (kept Hydra-free at import time)


class ConfigError(UserError):
    """A config value outside what its key accepts: names the key, the value and the valid ones."""


# ----------------------------------------------------------------------------------------------
# value checks, called from the schemas' __post_init__

def one_of(key: str, value, choices) -> None:
    if value not in choices:
        listed = [str(c) for c in choices]
        raise ConfigError(f"unknown {key}={value!r}: use {', '.join(listed[:-1])} or {listed[-1]}"
                          if len(listed) > 1 else f"unknown {key}={value!r}: use {listed[0]}")


def at_least(key: str, value, low) -> None:
    """value >= low; None (unset) passes."""
    if value is not None and value < low:
        raise ConfigError(f"{key}={value} is out of range: it must be >= {low}")


def at_most(key: str, value, high) -> None:
    """value <= high; None (unset) passes."""
    if value is not None and value > high:
        raise ConfigError(f"{key}={value} is out of range: it must be <= {high}")


def above(key: str, value, low) -> None:
    """value > low; None (unset) passes."""
    if value is not None and not value > low:
        raise ConfigError(f"{key}={value} is out of range: it must be > {low}")


def in_unit_interval(key: str, value) -> None:
    """0 <= value < 1 (Adam's betas, dropout)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{key}={value} is out of range: it must be in [0, 1)")


# ----------------------------------------------------------------------------------------------
# model, data

@dataclass
class ModelConfig(GPTConfig):
    """The model group: the architecture (every GPTConfig field, declared there once), plus where
    the vocabulary and the weights come from."""
    vocab_size: Optional[int] = None  # None: the prepared dataset's vocabulary
    pad_vocab: bool = False  # round the vocabulary up to a multiple of 64 (50257 -> 50304): faster
    # initialise from OpenAI's GPT-2 weights: gpt2, gpt2-medium, gpt2-large, gpt2-xl
    pretrained: Optional[str] = None
    path: Optional[str] = None  # a local Hugging Face model directory (offline machines)
    # the hub revision of model.pretrained (branch, tag or commit); None: main. Either way the run
    # records the commit it got (summary.json "weights")
    revision: Optional[str] = None

    def __post_init__(self):
        try:
            super().__post_init__()
        except ValueError as e:
            raise ConfigError(f"invalid model config: {e}") from None
        if self.param != "sp" and (self.pretrained or self.path):  # μP: docs/mup.md
            raise ConfigError(f"model.param={self.param} with pretrained weights: GPT-2's weights were "
                              "trained in the standard parametrisation; load them with model.param=sp")


@dataclass
class DataConfig:
    name: str = "pydoc_char"
    root: Optional[str] = None  # None: $NANOGPT_DATA_ROOT, else <repo>/data
    auto_prepare: bool = False  # prepare on first use (only for data that needs no download)
    # training rows: window (random windows, nanoGPT) | bos (each starts at a document) | bestfit
    # (nanochat's packing of whole documents, crops counted): nanogpt/data/packing.py, docs/modern.md
    packing: str = "window"

    def __post_init__(self):
        one_of("data.packing", self.packing, ("window", "bos", "bestfit"))


def model_args(mcfg, data_vocab: int | None) -> GPTConfig:
    """The model's GPTConfig: the model group's architecture fields, with the vocabulary filled in
    from the data (model.vocab_size=null) and padded if asked."""
    vocab = mcfg.vocab_size or data_vocab
    if vocab is None:
        raise UserError("model.vocab_size is not set and the data has no vocabulary size")
    if data_vocab is not None and data_vocab > vocab:
        raise UserError(f"the data's vocabulary ({data_vocab} tokens) is larger than the model's "
                        f"vocab_size ({vocab}): drop model.vocab_size or set it >= {data_vocab}")
    if mcfg.pad_vocab:
        vocab = padded_vocab_size(vocab)
    try:
        return GPTConfig.from_dict({**dataclasses.asdict(mcfg), "vocab_size": vocab})
    except ValueError as e:
        raise UserError(f"invalid model config: {e}") from e


@dataclass
class TaskConfig:
    """What every task's schema has: its name, a key of nanogpt.tasks.TASKS (checked by the gate)."""
    name: str = MISSING

    def __post_init__(self):
        pass
