"""The parametrisations, every rule in one place: `model.param=sp|mup|completep`.

    sp         GPT-2's standard parametrisation: today's model, bit for bit (the default)
    mup        μP (Yang et al., Tensor Programs V): the optimal learning rate and initialisation
               stay put as the width grows past `base_width`
    completep  μP plus CompleteP's depth rules (Dey et al. 2025, α = 1): the same as the depth
               grows past `base_depth`

Both are written relative to a base shape, so that at the base shape μP and CompleteP *are* SP:
every multiplier below is 1 when n_embd == base_width (and n_layer == base_depth), and the
hyperparameters tuned on an SP model of the base shape carry over unchanged. With
m = n_embd / base_width (the width multiplier) and d = n_layer / base_depth (CompleteP's depth
multiplier, 1 under μP):

    token/position embedding  init std 0.02, AdamW lr x1, multiplier 1 (its fan-in is the
                              vocabulary, which does not grow with the width)
    hidden matrices           init std 0.02 / sqrt(m) (the residual projections also
                              / sqrt(2 n_layer), with n_layer = base_depth under CompleteP)
                              AdamW lr x 1/m, AdamW eps x 1/(m d)
                              Muon: lr x1 with adjust_lr=original, x 1/sqrt(m) with
                              match_rms_adamw (docs/mup.md: the spectral condition)
    attention scores          q.k x sqrt(d_head_base) / d_head  (1/d_head scaling; d_head_base =
                              base_width / n_head, so at the base it is GPT-2's 1/sqrt(d_head))
    residual branches         x 1/d (CompleteP only): x + f(x) / d
    logits                    x 1/m (before a soft-cap); the head (tied or untied) keeps lr x1
    gains, biases             unchanged (vector-like: lr x1, init as before)

This module sits at the bottom layer: the model (nanogpt.model) and the optimizer factories
(nanogpt.training.optim) read it, and the HF export folds the multipliers with it.
"""
from __future__ import annotations

import math

PARAMS = ("sp", "mup", "completep")
GPT2_INIT_STD = 0.02


def check(config) -> None:
    """The base shape a parametrisation needs (raises ValueError; the config names the key)."""
    if config.param not in PARAMS:
        raise ValueError(f"unknown param={config.param!r}: use {', '.join(PARAMS[:-1])} or {PARAMS[-1]}")
    if config.param == "sp":
        return
    if config.base_width is None:
        raise ValueError(f"param={config.param} needs model.base_width, the width its learning rate "
                         f"was tuned at (e.g. model.base_width={config.n_embd} to tune at this width)")
    if config.base_width <= 0 or config.base_width % config.n_head:
        raise ValueError(f"base_width={config.base_width} does not divide into n_head={config.n_head} "
                         "heads: the base model's head size base_width / n_head sets the attention "
                         "scale; choose a multiple of n_head")
    if config.param == "completep":
        if config.base_depth is None:
            raise ValueError(f"param=completep needs model.base_depth, the depth its learning rate "
                             f"was tuned at (e.g. model.base_depth={config.n_layer})")
        if config.base_depth <= 0:
            raise ValueError(f"base_depth must be positive, got {config.base_depth}")


def width_mult(config) -> float:
    """m = n_embd / base_width (1 under SP)."""
    return 1.0 if config.param == "sp" else config.n_embd / config.base_width


def depth_mult(config) -> float:
    """d = n_layer / base_depth under CompleteP (1 otherwise)."""
    return config.n_layer / config.base_depth if config.param == "completep" else 1.0


def hidden_init_std(config) -> float:
    """The std of the hidden matrices' initialisation: variance ∝ 1 / fan-in."""
    return GPT2_INIT_STD / math.sqrt(width_mult(config))


def residual_init_std(config) -> float:
    """The residual projections' std: GPT-2 divides by sqrt(2 n_layer) (each block adds two);
    CompleteP scales the branches by 1/d instead, so its init keeps the base depth's."""
    layers = config.base_depth if config.param == "completep" else config.n_layer
    return hidden_init_std(config) / math.sqrt(2 * layers)


def attention_scale(config) -> float | None:
    """The q.k scale: None (GPT-2's 1/sqrt(d_head), the kernels' default) under SP, else
    sqrt(d_head_base) / d_head: under μP q and k become correlated as they learn, so q.k grows
    like d_head, not sqrt(d_head)."""
    if config.param == "sp":
        return None
    head, base_head = config.n_embd // config.n_head, config.base_width // config.n_head
    return math.sqrt(base_head) / head


def branch_multiplier(config) -> float:
    """What each residual branch (attention, MLP) is multiplied by before it is added: 1/d."""
    return 1.0 / depth_mult(config)


def output_multiplier(config) -> float:
    """What the logits are multiplied by (before a soft-cap): 1/m."""
    return 1.0 / width_mult(config)


def is_hidden_matrix(name: str, param) -> bool:
    """A matrix of the transformer blocks (attention and MLP weights): μP's "hidden" weights,
    whose fan-in and fan-out both grow with the width."""
    return param.dim() == 2 and "transformer.h." in name


def adamw_hidden_scales(config) -> tuple[float, float]:
    """(lr, eps) multipliers of AdamW on the hidden matrices: 1/m for the rate (an Adam update
    of a width-n matrix moves its output by ~ n lr), 1/(m d) for eps (their gradients shrink by
    that much, and an eps that stays put would swamp them: CompleteP's rule)."""
    m = width_mult(config)
    return 1.0 / m, 1.0 / (m * depth_mult(config))


def muon_hidden_lr_scale(config, adjust_lr: str) -> float:
    """Muon's rate multiplier on the hidden matrices. Its orthogonalised update has spectral norm
    1; torch's adjust_lr=original scales it by sqrt(max(1, fan_out / fan_in)), which is already
    μP's spectral condition ||ΔW|| ~ sqrt(fan_out / fan_in) (width-independent for hidden
    matrices): x1. match_rms_adamw scales by 0.2 sqrt(max(fan_out, fan_in)), a spectral norm
    growing like sqrt(width): x 1/sqrt(m) undoes it."""
    return 1.0 if adjust_lr == "original" else 1.0 / math.sqrt(width_mult(config))
