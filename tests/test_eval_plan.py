"""Evaluation sized by what it costs and reported with its noise: the periodic evaluations of
every training recipe stay within task.eval_budget, the final one scores more, and each loss comes
with its standard error."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import TINY, launch, read_metrics
from nanogpt.evals.loss import FINAL_EVAL_FACTOR, plan_evaluation, standard_error

TRAIN_RECIPES = [None, "shakespeare_char", "shakespeare_char_cpu", "finetune_shakespeare", "train_gpt2",
                 "scaling/tiny_sizes", "scaling/isoflop_tiny"]


# the prepared datasets' vocabularies (pydoc_char's depends a little on the Python version)
DATA_VOCAB = {"pydoc_char": 103, "shakespeare_char": 65, "shakespeare": 50257, "owt": 50257}


def _compose(experiment):
    from test_app import compose_cfg
    from omegaconf import OmegaConf

    return OmegaConf.to_object(compose_cfg([f"experiment={experiment}"] if experiment else []))


def _plan(cfg):
    """The evaluation plan of a recipe's run, with max_iters as training derives it (a token or
    FLOP budget sets it in the scaling presets)."""
    import torch

    from nanogpt.model import GPT, GPTConfig
    from nanogpt.training.setup import plan_steps

    t, hw, block = cfg.task, cfg.hardware, cfg.model.block_size
    with torch.device("meta"):
        model = GPT(GPTConfig(n_layer=cfg.model.n_layer, n_head=cfg.model.n_head, n_embd=cfg.model.n_embd,
                              block_size=block, vocab_size=cfg.model.vocab_size or DATA_VOCAB[cfg.data.name]))
    tokens_per_step, _, max_iters = plan_steps(t, hw.micro_batch_size * block, 1, hw.micro_batch_size,
                                               model.flops_per_token(block))
    eval_batch = hw.eval_batch_size or 2 * hw.micro_batch_size
    return plan_evaluation(t, max_iters, tokens_per_step, eval_batch * block)


@pytest.mark.parametrize("experiment", TRAIN_RECIPES)
def test_every_recipe_spends_at_most_five_percent_evaluating(experiment):
    plan = _plan(_compose(experiment))
    assert plan.share <= 0.05, (experiment, plan)
    assert plan.final_iters >= plan.iters >= 1


def test_the_default_run_scores_three_batches_per_split_and_four_times_that_at_the_end():
    # 500 steps of 12 x 128 tokens, evaluations at 0 and 250 on batches of 24 x 128: the budget of
    # 5% allows (0.05 / 0.95) x 3 x 500 x 1536 forward tokens, spread over 2 periodic evaluations
    # plus a final one of 4x the size, two splits each
    plan = _plan(_compose(None))
    allowed = 0.05 / 0.95 * 3 * 500 * 1536
    assert plan.iters == int(allowed / (2 * 24 * 128) // (2 + FINAL_EVAL_FACTOR)) == 3
    assert plan.final_iters == 12 and 0.04 < plan.share <= 0.05


def test_explicit_eval_iters_are_kept_and_the_budget_is_reported_not_imposed():
    t = SimpleNamespace(eval_iters=200, final_eval_iters=None, eval_interval=250, eval_budget=0.05)
    plan = plan_evaluation(t, 5000, 16384, 128 * 256)
    assert (plan.iters, plan.final_iters) == (200, 800) and plan.share > 0.3  # nanoGPT's GPU recipe


def test_standard_error_matches_numpy():
    x = np.random.default_rng(0).normal(2.0, 0.1, size=37)
    se = standard_error(x.sum(), (x * x).sum(), len(x))
    assert se == pytest.approx(x.std(ddof=1) / math.sqrt(len(x)), rel=1e-9)
    assert standard_error(2.0, 4.0, 1) is None


@pytest.mark.slow
def test_a_run_logs_each_val_loss_with_its_standard_error(tmp_path, data_root):
    run = tmp_path / "run"
    proc = launch([*TINY, "task.max_iters=4", "task.eval_interval=2", "task.eval_iters=3", f"run={run}"],
                  cwd=tmp_path)
    evals = [r for r in read_metrics(run) if r["kind"] == "eval"]
    assert [r["iter"] for r in evals] == [0, 2, 4]
    assert all(r["val_loss_se"] > 0 for r in evals)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["final_val_loss_se"] == evals[-1]["val_loss_se"] and summary["eval_time_s"] > 0
    assert "evaluation: 3 batches of 8 x 32 tokens per split every 2 iterations, 12 at the end" in proc.stderr + proc.stdout
    assert f"val loss {evals[-1]['val_loss']:.4f} ± " in proc.stderr + proc.stdout
