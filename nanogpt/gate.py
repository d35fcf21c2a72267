"""The one validation gate: the whole config, composed from each section's schema (each lives
beside the code it configures), registered in Hydra's ConfigStore, and checked once before any
work. launch.py's `check_overrides` names a mistyped key before Hydra composes anything; `Gate`
(Hydra's callback, conf/config.yaml) checks every value of the composed config before the run
directory exists, and launch.py's main takes that checked config (a sweep's jobs, which the
callback does not see, are checked there).
"""
from __future__ import annotations

import contextlib
import dataclasses
import difflib
import io
import itertools
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf, open_dict

from nanogpt.config import (
    MISSING,
    ConfigError,
    DataConfig,
    ModelConfig,
    TaskConfig,
    at_least,
    at_most,
    one_of,
)
from nanogpt.errors import UserError
from nanogpt.run.identity import NOT_IN_RUN_NAME
from nanogpt.run.metrics import LoggerConfig
from nanogpt.run.rundir import GuardRunDir, fail, run_dir, run_name
from nanogpt.runtime.schema import HardwareConfig
from nanogpt.tasks import TASK_SCHEMAS
from nanogpt.training.branch import cooldown_end
from nanogpt.training.optim import OPTIM_SCHEMAS, OptimConfig

INIT_FROM = ("scratch", "resume", "pretrained")
MAX_SEED = 2**63 - 1  # torch seeds with 64 bits, and each rank adds its rank to the seed


@dataclass
class Config:
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING  # one of OPTIM_SCHEMAS, chosen by the optim group
    hardware: HardwareConfig = MISSING
    task: TaskConfig = MISSING  # one of TASK_SCHEMAS, chosen by the task group
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 1337
    init_from: str = "scratch"  # scratch | resume | pretrained (model.pretrained / model.path)
    run: Optional[str] = None  # an existing run directory: resume, sample or evaluate it
    sweep_name: Optional[str] = None

    def __post_init__(self):
        _check_task(self.task)
        at_least("seed", self.seed, 0)
        at_most("seed", self.seed, MAX_SEED)
        one_of("init_from", self.init_from, INIT_FROM)
        branching = getattr(self.task, "branch_from", None) or getattr(self.task, "keep_checkpoints", None)
        if branching and getattr(self.hardware, "strategy", None) == "fsdp":
            raise ConfigError("cooldown branches (task.keep_checkpoints, task.branch_from) use single-file "
                              "checkpoints, and hardware.strategy=fsdp writes sharded ones: use "
                              "hardware.strategy=ddp")
        if getattr(self.task, "branch_from", None) and self.init_from == "pretrained":
            raise ConfigError("init_from=pretrained and task.branch_from both say where the weights "
                              "come from: a branch starts from its parent's checkpoint, drop init_from")


def _check_task(task) -> None:
    """The task's name against the task group's schemas (each task's own keys were checked by its
    schema's __post_init__)."""
    one_of("task", task.name, sorted(TASK_SCHEMAS))
    if not isinstance(task, TASK_SCHEMAS[task.name]):
        raise ConfigError(f"task.name={task.name!r} does not match the task's keys: choose "
                          f"the task with task={task.name}")


GROUPS = {"model": ModelConfig, "data": DataConfig, "hardware": HardwareConfig, "logger": LoggerConfig}
# groups with one schema per option: the keys a command may set depend on the option chosen
SCHEMA_GROUPS: dict[str, dict[str, type]] = {"optim": OPTIM_SCHEMAS, "task": TASK_SCHEMAS}


def register_configs() -> None:
    from hydra.core.config_store import ConfigStore

    # at the root, not in their groups: a node stored in group `model` would be one of model's
    # options in --help and tab completion (model=base_model); the group files extend them by
    # absolute name (`defaults: [/schema_model]`) and take their package from the group
    cs = ConfigStore.instance()
    cs.store(name="schema_config", node=Config)
    for group, schema in GROUPS.items():
        cs.store(name=f"schema_{group}", node=schema)
    for group, schemas in SCHEMA_GROUPS.items():
        for name, schema in schemas.items():
            cs.store(name=f"schema_{group}_{name}", node=schema)


def validate(cfg) -> Any:
    """The plain config of a composed one (an OmegaConf DictConfig without `hydra`): every
    schema's __post_init__ checks its values on the way, so a bad value raises ConfigError.
    The config the Gate checked for this run is returned as it is, not checked again."""
    values = OmegaConf.to_container(cfg, resolve=True)
    if _checked is not None and _checked[0] == values:
        return _checked[1]
    return _check(cfg, values)


def _check(cfg, values: dict) -> Any:
    _refuse_non_finite(values, "")
    return OmegaConf.to_object(cfg)


_checked: tuple[dict, Any] | None = None  # (values, plain config) of the run the Gate checked


def _refuse_non_finite(node, key: str) -> None:
    """No key takes nan or inf (an unset one is null): before any schema's check, which may do
    arithmetic with it (round(inf * n_embd)), and before training turns it into a NaN loss."""
    if isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"{key}={node} is not a finite number: use a finite value")
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, child in children:
        _refuse_non_finite(child, f"{key}.{name}" if key else str(name))


# ----------------------------------------------------------------------------------------------
# after composition: the values, before the run directory exists

class Gate(GuardRunDir):
    """Hydra's callback (conf/config.yaml): every value checked, then the run directory made."""

    def on_run_start(self, config, **kwargs) -> None:
        from hydra.core.hydra_config import HydraConfig

        HydraConfig.instance().set_config(config)  # as run_job does next: resolves ${hydra:...}
        job = config.copy()
        with open_dict(job):
            del job["hydra"]
        global _checked
        try:
            values = OmegaConf.to_container(job, resolve=True)
            _checked = (values, _check(job, values))
        except UserError as e:
            fail(str(e))
        super().on_run_start(config, **kwargs)


# ----------------------------------------------------------------------------------------------
# the resolvers conf/config.yaml's interpolations use

def register_resolvers() -> None:
    if not OmegaConf.has_resolver("nanogpt_run_dir"):
        OmegaConf.register_new_resolver("nanogpt_run_dir", run_dir)
        OmegaConf.register_new_resolver("nanogpt_run_name", run_name)
        OmegaConf.register_new_resolver("nanogpt_not_in_run_name", lambda: list(NOT_IN_RUN_NAME))
        # the SLURM launcher's tasks per node: one per GPU, or one on a CPU node
        OmegaConf.register_new_resolver("nanogpt_tasks_per_node", lambda gpus: gpus or 1)
        # a cooldown branch's length: its WSD cooldown (the last decay_frac) starts at branch_iter
        OmegaConf.register_new_resolver("nanogpt_cooldown_end", _cooldown_end)


def _cooldown_end(branch_iter, decay_frac) -> int:
    return cooldown_end(int(branch_iter), float(decay_frac))


# ----------------------------------------------------------------------------------------------
# before composition: the command line's keys, named against the schemas with the closest match
# (Hydra itself says only "Key 'n_layers' is not in struct")

def _fields(schema) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _chosen_keys(group: str, args: list[str], conf_dir: Path) -> list[str]:
    """The keys of a group whose options have schemas of their own (optim, task): those of the
    option the command chooses, as Hydra composes it (a model preset may choose the optimizer:
    modern_124m, and so modern_baby, choose Muon), and of every option a sweep reaches; with an
    experiment, which may choose another, or when the choices do not compose, those of any option."""
    schemas = SCHEMA_GROUPS[group]
    chosen = next((a.split("=", 1)[1] for a in args if a.startswith(f"{group}=")), None)
    if chosen is not None:
        options = chosen.split(",")
    elif any(a.startswith("experiment=") for a in args):
        options = []
    else:
        options = _composed_choices(group, args, conf_dir)
    if options and all(o in schemas for o in options):
        return [k for k in _fields(schemas[options[0]]) if all(k in _fields(schemas[o]) for o in options)]
    return sorted({k for schema in schemas.values() for k in _fields(schema)})


MAX_SWEEP_POINTS = 16  # a larger sweep over presets is left to Hydra


def _composed_choices(group: str, args: list[str], conf_dir: Path) -> list[str]:
    """The options of `group` that the command's group choices (model=..., +variant=...) compose
    to, one per point of a sweep over them (model=baby,modern_baby). Hydra composes them, rather
    than this module reading the YAML files, so a preset that extends another inherits its
    choice. Empty when they do not compose (an unknown option, sweep syntax other than a comma
    list: Hydra then says what is wrong), or when Hydra is already initialised in this process."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    groups = {p.name for p in conf_dir.iterdir() if p.is_dir()} - {"hydra"}
    choices = [a.split("=", 1) for a in args if "=" in a and a.split("=", 1)[0].lstrip("+") in groups]
    points = list(itertools.product(*[[f"{key}={v}" for v in value.split(",")] for key, value in choices]))
    if GlobalHydra.instance().is_initialized() or len(points) > MAX_SWEEP_POINTS:
        return []
    register_configs()
    register_resolvers()  # config.yaml's hydra section names the run directory with them
    try:
        with initialize_config_dir(config_dir=str(conf_dir.resolve()), version_base="1.3"):
            return sorted({getattr(compose(config_name="config", overrides=list(p)), group).name for p in points})
    except Exception:  # noqa: BLE001 (what does not compose, Hydra reports on its own)
        return []


def problems(args: list[str], conf_dir: Path) -> list[str]:
    errors = []
    top_keys = _fields(Config)
    for arg in args:
        if arg.startswith("-") or "=" not in arg or arg[0] in "+~":
            continue  # flags (-m, --cfg job), additions and deletions are Hydra's business
        key = arg.split("=", 1)[0]
        if key.startswith("hydra") or "/" in key or key.startswith("experiment"):
            continue
        parts = key.split(".")
        head = parts[0]
        if len(parts) == 1:
            groups = [p.name for p in conf_dir.iterdir() if p.is_dir()]
            if head not in top_keys and head not in groups:
                errors.append(_unknown(key, "top-level keys and groups", sorted(set(top_keys) | set(groups))))
            continue
        if head in SCHEMA_GROUPS:
            valid = _chosen_keys(head, args, conf_dir)
        elif head in GROUPS:
            valid = _fields(GROUPS[head])
        else:
            errors.append(_unknown(key, "sections", sorted([*GROUPS, *SCHEMA_GROUPS])))
            continue
        if len(parts) == 2 and parts[1] not in valid:
            errors.append(_unknown(key, f"keys of {head}", valid))
    return errors


def _unknown(key: str, what: str, valid: list[str]) -> str:
    last = key.split(".")[-1]
    close = difflib.get_close_matches(last, valid, n=1)
    hint = f" Did you mean '{'.'.join(key.split('.')[:-1] + [close[0]])}'?" if close else ""
    return f"unknown config key '{key}'.{hint} Valid {what}: {', '.join(valid)}"


def overrides_of(args: list[str]) -> list[str] | None:
    """The command line's overrides, as Hydra's own parser splits them from its flags and their
    arguments (`-sc install=bash`, `--config-name NAME`); None when the command asks for no
    composition of these overrides (shell completion, --version) or does not parse (Hydra says why)."""
    from hydra._internal.utils import get_args_parser

    if any(a in ("--version",) for a in args):
        return None
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # Hydra's own parse reports a bad flag
            parsed, _ = get_args_parser().parse_known_args(args)
    except SystemExit:
        return None
    return None if parsed.shell_completion else list(parsed.overrides)


def check_overrides(args: list[str], conf_dir: Path) -> None:
    overrides = overrides_of(args)
    if overrides is None:
        return
    errors = problems(overrides, conf_dir)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print("(`python launch.py --cfg job` shows the whole resolved config)", file=sys.stderr)
        sys.exit(2)
