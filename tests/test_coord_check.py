"""task=coord_check (nanogpt/training/coord_check.py): the property μP promises, measured.

The bound (docs/mup.md, "Coordinate check"): across an 8x width range a coordinate that scales
like width^a spreads by 8^a. Under SP an Adam step moves a width-n matmul's output by ~ n lr
(a = 1: 8x, compounding through the blocks) and the logits by at least the init's sqrt(n)
(a = 1/2: 2.8x); under μP every coordinate is width-independent (a = 0) up to finite-width
noise. We ask μP for a spread <= 1.5x (a <= 0.19) at step 3 for every layer type, and SP for
>= 2.8x on the logits and >= 8x on the attention and MLP outputs: the check can fail.
"""
from __future__ import annotations

import json

import pytest
from conftest import TINY
from inprocess import make_config

from nanogpt.config import ConfigError
from nanogpt.training.coord_check import LAYER_TYPES, coord_check

MODEL = [a for a in TINY if not a.startswith("task.")] + ["data.name=tiny_char"]
CHECK = ["task=coord_check", "task.widths=[32,64,128,256]", "task.steps=3", "task.seeds=3", "task.lr=3e-3",
         "task.plot=true"]
MUP_BOUND, SP_LOGITS_FLOOR, SP_HIDDEN_FLOOR = 1.5, 8 ** 0.5, 8.0


def test_mup_keeps_every_coordinate_across_8x_width_and_sp_does_not(tmp_path, data_root):
    coord_check(make_config([*MODEL, *CHECK]), tmp_path)
    report = json.loads((tmp_path / "coord_check.json").read_text())
    assert (tmp_path / "coord_check.png").stat().st_size > 0
    spread = {p: a["width"]["delta"] for p, a in report["spread"].items()}
    for kind in LAYER_TYPES:
        assert spread["mup"][kind][3] <= MUP_BOUND, (kind, spread["mup"][kind])
    assert spread["sp"]["logits"][3] >= SP_LOGITS_FLOOR, spread["sp"]["logits"]
    assert spread["sp"]["attn_out"][3] >= SP_HIDDEN_FLOOR and spread["sp"]["mlp_out"][3] >= SP_HIDDEN_FLOOR
    widths = [m["width"] for m in report["models"] if m["param"] == "sp"]
    assert widths == [32, 64, 128, 256]


def test_a_width_that_does_not_divide_into_the_heads_is_refused_before_training(tmp_path, data_root):
    cfg = make_config([*MODEL, "task=coord_check", "task.widths=[32,33]"])
    with pytest.raises(ConfigError, match=r"task=coord_check: width 33, depth 2, param=sp: n_embd \(33\) "
                                          r"must be divisible by n_head \(2\)"):
        coord_check(cfg, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_unknown_parametrisation_is_refused_by_the_schema(data_root):
    with pytest.raises(ConfigError, match="unknown task.params='mu': use sp, mup or completep"):
        make_config([*MODEL, "task=coord_check", "task.params=[sp,mu]"])
