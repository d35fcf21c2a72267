"""The learning-rate schedules: nanoGPT's cosine and linear, and WSD with its three cooldowns."""
import math

import pytest

from nanogpt.training.schedule import lr_at, wsd_decay_start


def test_cosine_and_linear_are_nanogpts():
    # nanoGPT's get_lr: warm-up (it + 1) / (warmup + 1), then cosine from warmup to decay_iters
    assert lr_at(0, 1.0, 0.1, 10, 110) == pytest.approx(1 / 11)
    assert lr_at(10, 1.0, 0.1, 10, 110) == pytest.approx(1.0)
    assert lr_at(60, 1.0, 0.1, 10, 110) == pytest.approx(0.1 + 0.5 * 0.9)
    assert lr_at(60, 1.0, 0.1, 10, 110, "linear") == pytest.approx(0.1 + 0.5 * 0.9)
    assert lr_at(35, 1.0, 0.1, 10, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, 1.0, 0.1, 10, 110) == lr_at(500, 1.0, 0.1, 10, 110) == 0.1
    assert lr_at(500, 1.0, 0.1, 10, 110, "constant") == 1.0


def test_wsd_warms_up_holds_then_cools_down_over_the_last_fraction():
    lrs = [lr_at(it, 2.0, 0.0, 10, 100, "wsd", decay_frac=0.2) for it in range(101)]
    assert lrs[:10] == pytest.approx([2.0 * (i + 1) / 11 for i in range(10)])  # warm-up
    assert lrs[10:81] == [2.0] * 71  # stable up to and including the cooldown's first iteration
    assert wsd_decay_start(100, 0.2) == 80
    assert lrs[90] == pytest.approx(1.0)  # linear: half way down at half the cooldown
    assert lrs[100] == 0.0
    assert all(a >= b for a, b in zip(lrs[80:], lrs[81:]))


@pytest.mark.parametrize("cooldown,mid", [
    ("linear", 0.5), ("cosine", 0.5), ("1-sqrt", 1 - math.sqrt(0.5)),
])
def test_wsd_cooldown_shapes(cooldown, mid):
    lr = lambda it: lr_at(it, 1.0, 0.1, 0, 1000, "wsd", 0.4, cooldown)  # noqa: E731
    assert lr(600) == 1.0 and lr(1000) == pytest.approx(0.1)
    assert lr(800) == pytest.approx(0.1 + 0.9 * mid)
    # a quarter of the way: the shapes differ
    quarter = {"linear": 0.75, "cosine": 0.5 * (1 + math.cos(math.pi / 4)), "1-sqrt": 0.5}[cooldown]
    assert lr(700) == pytest.approx(0.1 + 0.9 * quarter)


def test_a_branch_and_its_parent_agree_until_the_branch_cools_down():
    """A long WSD run (8000 iterations) branched at 2000 into a run of 2500 (decay_frac 0.2):
    the same lr up to the branch point, then the branch's own cooldown."""
    parent = [lr_at(it, 1e-3, 0.0, 100, 8000, "wsd", 0.2) for it in range(2001)]
    branch = [lr_at(it, 1e-3, 0.0, 100, 2500, "wsd", 0.2) for it in range(2001)]
    assert parent == branch
    assert lr_at(2250, 1e-3, 0.0, 100, 2500, "wsd", 0.2) == pytest.approx(5e-4)


def test_a_wsd_run_too_short_for_its_warmup_follows_the_lower_ramp():
    """`python launch.py task.max_iters=10`: the default recipe's 20-iteration warm-up and its
    cooldown (the last 40%: from iteration 6) overlap; the lr rises with the warm-up until the
    cooldown line is lower, then follows it down to min_lr."""
    lrs = [lr_at(it, 1.0, 0.0, 20, 10, "wsd", 0.4) for it in range(10)]
    warmup = [(it + 1) / 21 for it in range(10)]
    cooldown = [1.0] * 6 + [1 - (it - 6) / 4 for it in range(6, 10)]
    assert lrs == pytest.approx([min(w, c) for w, c in zip(warmup, cooldown)])
    assert lrs[:6] == pytest.approx(warmup[:6]) and lrs[-1] == pytest.approx(0.25)
    # apart from such runs nothing changes: the warm-up, the stable phase and the cooldown as before
    long = [lr_at(it, 1.0, 0.1, 20, 100, "wsd", 0.4) for it in range(100)]
    assert long[:20] == pytest.approx([(it + 1) / 21 for it in range(20)])
    assert long[20:60] == [1.0] * 40 and long[99] == pytest.approx(0.1 + 0.9 / 40)
