"""Catch a mistyped override before Hydra starts, and name the valid keys.

Hydra itself rejects unknown keys of a structured config, but only with "Key 'n_layers' is not in
struct". Here the message names the group's valid keys and the closest match."""
from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path

from nanogpt.config import GROUPS, SCHEMA_GROUPS, Config


def _fields(schema) -> list[str]:
    return [f.name for f in dataclasses.fields(schema)]


def _chosen_keys(group: str, args: list[str], conf_dir: Path) -> list[str]:
    """The keys of a group whose options have schemas of their own (optim, task): those of the
    option the command chose (or the default one); with an experiment, which may choose
    another, those of any option."""
    chosen = next((a.split("=", 1)[1] for a in args if a.startswith(f"{group}=")), None)
    if chosen is None and not any(a.startswith("experiment=") for a in args):
        model = next((a.split("=", 1)[1] for a in args if a.startswith("model=")), None)
        chosen = _preset_choice(group, model or _default_option("model", conf_dir), conf_dir) \
            or _default_option(group, conf_dir)
    schemas = SCHEMA_GROUPS[group]
    if chosen in schemas:
        return _fields(schemas[chosen])
    return sorted({k for schema in schemas.values() for k in _fields(schema)})


def _defaults_list(path: Path) -> list:
    import yaml

    return (yaml.safe_load(path.read_text()) or {}).get("defaults", []) if path.is_file() else []


def _default_option(group: str, conf_dir: Path) -> str | None:
    defaults = _defaults_list(conf_dir / "config.yaml")
    return next((d[group] for d in defaults if isinstance(d, dict) and group in d), None)


def _preset_choice(group: str, model: str | None, conf_dir: Path) -> str | None:
    """The option of `group` a model preset chooses (modern_* choose optim=muon), if any."""
    for d in _defaults_list(conf_dir / "model" / f"{model}.yaml") if model else []:
        for key, value in (d.items() if isinstance(d, dict) else []):
            if key.startswith(f"override /{group}"):
                return value
    return None


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
