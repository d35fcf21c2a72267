"""Training in the test process: the config launch.py would build (Hydra compose, same conf/),
handed to nanogpt.training.loop.train. Seconds faster than a subprocess, and lets a test reach into
the loop (monkeypatch a forward pass, a write)."""
from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import QUICK, REPO
from nanogpt.gate import register_configs
from nanogpt.gate import register_resolvers
from nanogpt.runtime.distributed import Dist

register_configs()
register_resolvers()


# one torch thread: on a busy two-core machine, a second thread spinning for a core makes a
# tiny model 20x slower


def make_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return OmegaConf.to_object(compose("config", overrides=overrides))


def train_tiny(run_dir: Path, *overrides: str) -> dict:
    """Train the TINY model on the data_root fixture's tiny_char data into run_dir."""
    from nanogpt.training.loop import train

    cfg = make_config([*QUICK, *overrides])
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    return train(cfg, Path(run_dir), Dist())
