"""What makes two runs the same experiment: every setting except those that do not change what
is trained (NOT_IN_RUN_NAME, kept out of a run directory's name) and, for a group of repeats, the
seed. Light on purpose (no torch, no Hydra): the scaling tools read it to group seeds."""
from __future__ import annotations

import hashlib
import json

from nanogpt.run.results import flatten

# settings that do not change what is trained stay out of a run's name (Hydra's exclude_keys)
NOT_IN_RUN_NAME = [
    "init_from", "run", "sweep_name", "hardware", "hardware.device", "hardware.compile",
    "hardware.num_threads", "hardware.gpus_per_node", "hardware.strategy",
    "hardware.activation_checkpointing", "hardware.fsdp_accumulation", "logger", "logger.wandb",
    "logger.mode", "logger.project", "logger.entity", "logger.name", "logger.tags",
    "logger.tensorboard", "logger.mlflow", "logger.tracking_uri",
    "task.num_samples", "task.temperature", "task.top_k", "task.plot", "task.hellaswag_interval",
    "task.hellaswag_limit", "task.hellaswag_file", "task.core_interval", "task.core_limit", "task.core_bundle",
    "task.keep_checkpoints", "hydra.launcher", "hydra/launcher",
]

# what repeats of one experiment differ in: the seed (and the keys above)
REPEAT_KEYS = ("seed",)


def identity_settings(config: dict) -> dict:
    """The flattened settings that define a run's experiment, the seed left out: runs with equal
    settings are seeds (repeats) of one point of a sweep. Config groups in NOT_IN_RUN_NAME
    ("hardware") name a preset on the command line; their resolved values (hardware.dtype)
    still count, except the leaf keys listed."""
    excluded = set(NOT_IN_RUN_NAME) | set(REPEAT_KEYS)
    return {k: v for k, v in flatten(config).items()
            if k not in excluded and not k.startswith("logger.")}


def point_id(config: dict, *extra) -> str:
    """A short stable id of a run's experiment: equal for runs that differ only by seed (or by
    settings that do not change what is trained). `extra` (e.g. the parameter and token counts)
    joins the config, for runs whose config does not say everything (synthetic sweeps)."""
    text = json.dumps([sorted(identity_settings(config).items()), *extra], default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:10]
