"""Catch a mistyped override before Hydra starts, and name the valid keys.

Hydra itself rejects unknown keys of a structured config, but only with "Key 'n_layers' is not in
struct". Here the message names the group's valid keys and the closest match."""
from __future__ import annotations

import dataclasses
import difflib
import itertools
import sys
from pathlib import Path

from nanogpt.config import GROUPS, SCHEMA_GROUPS, Config


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

    from nanogpt.config import register_configs
    from nanogpt.rundir import register_resolvers

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


def check_overrides(args: list[str], conf_dir: Path) -> None:
    errors = problems(args, conf_dir)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print("(`python launch.py --cfg job` shows the whole resolved config)", file=sys.stderr)
        sys.exit(2)
