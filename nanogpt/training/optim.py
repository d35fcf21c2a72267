"""Optimizers by name: AdamW, and Muon for the hidden matrices beside AdamW for the rest.

OPTIMIZERS maps `optim=<name>` to a factory `(model, optim_cfg, device_type) -> optimizer`. Each
of the optimizer's parameter groups may carry an "lr_scale": the schedule sets every group's lr
to the scheduled lr times that group's scale (1 when absent), so an optimizer whose groups need
different rates (Muon for matrices beside AdamW for the rest) keeps them through warm-up and
decay (nanogpt.training.schedule). Each optimizer's keys have a schema here too (OPTIM_SCHEMAS), beside its factory:
adding one touches this module and conf/optim/<name>.yaml.
"""
from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Optional

import torch

from nanogpt import parametrization
from nanogpt.config import (
    MISSING,
    ConfigError,
    above,
    at_least,
    in_unit_interval,
    one_of,
)
from nanogpt.errors import UserError
from nanogpt.runtime import fsdp, hardware
from nanogpt.training.schedule import COOLDOWNS, SCHEDULES


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay every >=2-D tensor (matmul weights, embeddings), not biases or LayerNorm gains."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def model_config(model: torch.nn.Module):
    """The GPTConfig of a GPT (compiled or not); None for another module."""
    return getattr(getattr(model, "_orig_mod", model), "config", None)


def parametrised(model: torch.nn.Module) -> bool:
    """Whether the model is μP or CompleteP (the optimizers then scale the hidden matrices)."""
    config = model_config(model)
    return config is not None and getattr(config, "param", "sp") != "sp"


def mup_adamw_groups(model: torch.nn.Module, weight_decay: float, eps: float) -> list[dict]:
    """decay_groups with μP's rules (nanogpt.parametrization): the hidden matrices in a group
    of their own at lr x 1/m (lr_scale, which the schedule keeps) and eps x 1/(m d); AdamW's
    decoupled decay is lr x weight_decay, so theirs shrinks with their rate."""
    lr_scale, eps_scale = parametrization.adamw_hidden_scales(model_config(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    hidden = [p for n, p in named if parametrization.is_hidden_matrix(n, p)]
    taken = {id(p) for p in hidden}
    rest = [p for _, p in named if id(p) not in taken]
    return [
        {"params": hidden, "weight_decay": weight_decay, "lr_scale": lr_scale, "eps": eps * eps_scale},
        {"params": [p for p in rest if p.dim() >= 2], "weight_decay": weight_decay, "lr_scale": 1.0},
        {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0, "lr_scale": 1.0},
    ]


def _adamw_kernel(ocfg, device_type: str) -> dict:
    """Fused AdamW (one kernel for all parameters) where the device supports it."""
    supports_fused = "fused" in inspect.signature(torch.optim.AdamW).parameters and device_type in ("cuda", "cpu")
    fused = supports_fused if ocfg.fused is None else ocfg.fused
    if fused and not supports_fused:
        raise UserError(f"optim.fused=true is not supported on {device_type}: use optim.fused=null")
    return {"fused": True} if fused else {"foreach": device_type != "cpu" or None}


def make_adamw(model: torch.nn.Module, ocfg, device_type: str = "cpu") -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (and μP's rates for a μP model)."""
    groups = (mup_adamw_groups(model, ocfg.weight_decay, ocfg.eps) if parametrised(model)
              else decay_groups(model, ocfg.weight_decay))
    optimizer = torch.optim.AdamW(groups, lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2), eps=ocfg.eps,
                                  **_adamw_kernel(ocfg, device_type))
    set_lr(optimizer, ocfg.lr)  # each group at its own multiple from the start
    return optimizer


class Optimizers:
    """Several optimizers stepped as one, for the training loop, the GradScaler and checkpoints:
    `param_groups` is all of theirs (the schedule sets each group's lr), and the state dict
    holds each optimizer's own under its name."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self, closure=None):
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.optimizers):
            raise UserError(f"the checkpoint's optimizer state holds {sorted(state)[:4]}, not "
                            f"{' + '.join(self.optimizers)}: resume with the optim it was trained with")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state[name])


def muon_split(model: torch.nn.Module) -> tuple[list, list, list, list]:
    """(embeddings (token, position), an untied LM head, the hidden matrices Muon takes, the gains
    and biases): optim=muon's split of the parameters (also what task=plan counts)."""
    embeddings = [p for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()]
    taken = {id(p) for p in embeddings}
    head = [p for p in model.get_submodule("lm_head").parameters() if id(p) not in taken]
    taken |= {id(p) for p in head}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    return embeddings, head, [p for p in rest if p.dim() == 2], [p for p in rest if p.dim() != 2]


def muon_groups(model: torch.nn.Module, ocfg) -> tuple[list, list[dict]]:
    """(the hidden matrices for Muon, AdamW's groups): the embeddings (token, position), an
    untied LM head, and the gains and biases, each with its own rate (as a multiple of the
    scheduled lr, which is Muon's) and weight decay."""
    embeddings, head, hidden, scalars = muon_split(model)
    scale = 1.0 / ocfg.lr
    adamw = [{"params": params, "lr": lr, "lr_scale": lr * scale, "weight_decay": wd}
             for params, lr, wd in ((embeddings, ocfg.embed_lr, ocfg.adamw_weight_decay),
                                    (head, ocfg.head_lr, ocfg.adamw_weight_decay),
                                    (scalars, ocfg.scalar_lr, 0.0)) if params]
    return hidden, adamw


NS_DTYPES = ("auto", "bfloat16", "float32")


def ns_dtype_for(name: str, device_type: str) -> torch.dtype:
    """Newton-Schulz's dtype: `auto` is bf16 (as torch.optim.Muon) on GPUs and on CPUs with bf16
    matrix units, and float32 on other CPUs, where bf16 matmuls are emulated: on an AVX2 CPU the
    orthogonalisation is then ~5x slower in bf16 than in float32 (BENCHMARKS.md)."""
    if name == "auto":
        return torch.bfloat16 if device_type != "cpu" or hardware.cpu_has_fast_bf16() else torch.float32
    return getattr(torch, name)


def orthogonalise(g: torch.Tensor, ns_steps: int, dtype: torch.dtype, eps: float = 1e-7) -> torch.Tensor:
    """Newton-Schulz's quintic iteration towards U V^T of g = U S V^T, as torch.optim.Muon computes
    it (its coefficients), but in `dtype`."""
    from torch.optim._muon import DEFAULT_A as a
    from torch.optim._muon import DEFAULT_B as b
    from torch.optim._muon import DEFAULT_C as c

    x = g.to(dtype)
    wide = x.size(0) <= x.size(1)
    x = x if wide else x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x if wide else x.T


def momentum_update(grad: torch.Tensor, buf: torch.Tensor, group: dict) -> torch.Tensor:
    """torch.optim.Muon's update before orthogonalisation: the momentum buffer moves toward the
    gradient (in place), and the update is its Nesterov blend with the gradient (or the buffer)."""
    buf.lerp_(grad, 1 - group["momentum"])
    return grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf


class Float32Muon(torch.optim.Muon):
    """torch.optim.Muon with its orthogonalisation in float32 (torch's is always bf16, which CPUs
    without bf16 units emulate slowly). The same update: Nesterov momentum, Newton-Schulz, the
    shape-adjusted rate, decoupled weight decay; the same state ("momentum_buffer")."""

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim._muon import _adjust_lr

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr = group["lr"]
            for param, grad, buf in zip(params, grads, bufs):
                update = orthogonalise(momentum_update(grad, buf, group), group["ns_steps"], torch.float32,
                                       group["eps"])
                param.mul_(1 - lr * group["weight_decay"])
                param.add_(update.to(param.dtype), alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


def newton_schulz(update: torch.Tensor, group: dict, dtype: torch.dtype) -> torch.Tensor:
    """The orthogonalisation torch.optim.Muon computes (bf16, its own function) or Float32Muon's."""
    if dtype == torch.bfloat16:
        from torch.optim._muon import _zeropower_via_newtonschulz

        return _zeropower_via_newtonschulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"])
    return orthogonalise(update, group["ns_steps"], dtype, group["eps"])


class ShardedMuon(torch.optim.Muon):
    """torch.optim.Muon for FSDP2's row-sharded matrices (DTensors), with the same numbers as one
    process: the momentum and Nesterov blend are elementwise, so each rank computes them on its own
    rows (the momentum buffer stays sharded, and so resumes through DCP on any world size); the
    orthogonalisation needs the whole matrix, so each matrix is gathered on one owner rank
    (owners spread by Newton-Schulz cost), orthogonalised there and its rows scattered back; each
    rank then applies the shape-adjusted rate and weight decay to its rows. The update is cast to
    Newton-Schulz's dtype before it travels (the first thing the iteration does anyway): bf16
    halves the traffic. Plain tensors (one process) are orthogonalised where they are."""

    def __init__(self, params, ns_dtype: torch.dtype, **kwargs):
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype  # an attribute, not a group key: the state dict is torch.optim.Muon's

    @torch.no_grad()
    def step(self, closure=None):
        from torch.optim._muon import _adjust_lr

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)
            lr = group["lr"]
            updates = []
            for grad, buf in zip(grads, bufs):
                updates.append(momentum_update(fsdp.local(grad), fsdp.local(buf), group).to(self.ns_dtype))
            owners = fsdp.owners_by_cost([p.shape for p in params], _world(params))
            wholes = fsdp.gather_whole(updates, params, owners)
            orthogonal = [None if w is None else newton_schulz(w, group, self.ns_dtype) for w in wholes]
            for param, update in zip(params, fsdp.scatter_rows(orthogonal, params, owners, self.ns_dtype)):
                rows = fsdp.local(param)
                rows.mul_(1 - lr * group["weight_decay"])
                rows.add_(update.to(rows.dtype), alpha=-_adjust_lr(lr, group["adjust_lr_fn"], param.shape))
        return loss


def _world(params) -> int:
    """The ranks the matrices are sharded over (1 for plain tensors)."""
    mesh = getattr(params[0], "device_mesh", None) if params else None
    return mesh.size() if mesh is not None else 1


def make_muon(model: torch.nn.Module, ocfg, device_type: str = "cpu") -> Optimizers:
    """torch.optim.Muon on the transformer's 2-D matrices, AdamW on the rest (MuonConfig); for
    matrices FSDP has sharded (build it after sharding), ShardedMuon: the same step, each matrix
    orthogonalised whole on one rank."""
    hidden, adamw_groups = muon_groups(model, ocfg)
    if not hidden:
        raise UserError("optim=muon needs 2-D hidden matrices (attention and MLP weights) to "
                        "orthogonalise, and this model has none: use optim=adamw")
    ns_dtype = ns_dtype_for(ocfg.ns_dtype, device_type)
    muon_class = torch.optim.Muon if ns_dtype == torch.bfloat16 else Float32Muon
    if any(hasattr(p, "device_mesh") for p in hidden):  # sharded by FSDP: whole matrices on owner ranks
        muon_class = functools.partial(ShardedMuon, ns_dtype=ns_dtype)
    # μP: Muon's update already meets the spectral condition with adjust_lr=original (x1)
    hidden_scale = (parametrization.muon_hidden_lr_scale(model_config(model), ocfg.adjust_lr)
                    if parametrised(model) else 1.0)
    muon = muon_class([{"params": hidden, "lr_scale": hidden_scale}], lr=ocfg.lr * hidden_scale,
                      weight_decay=ocfg.weight_decay, momentum=ocfg.momentum, nesterov=ocfg.nesterov, ns_steps=ocfg.ns_steps,
                      adjust_lr_fn=ocfg.adjust_lr)
    adamw = torch.optim.AdamW(adamw_groups, lr=ocfg.lr, betas=(ocfg.beta1, ocfg.beta2), eps=ocfg.eps,
                              **_adamw_kernel(ocfg, device_type))
    return Optimizers(muon=muon, adamw=adamw)


# optim=<name> -> factory(model, optim_cfg, device_type) -> torch.optim.Optimizer
OPTIMIZERS = {"adamw": make_adamw, "muon": make_muon}


def make_optimizer(model: torch.nn.Module, ocfg, device_type: str) -> torch.optim.Optimizer:
    return OPTIMIZERS[ocfg.name](model, ocfg, device_type)


def check_resumable(ckpt: dict, ocfg, path) -> None:
    """A checkpoint's optimizer state only loads into the optimizer that wrote it."""
    saved = ((ckpt.get("config") or {}).get("optim") or {}).get("name", "adamw")
    if saved != ocfg.name:
        raise UserError(f"{path} was trained with optim={saved}, and this run asks for "
                        f"optim={ocfg.name}: its optimizer state cannot carry over. Use optim={saved}, "
                        "or a new run directory")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group at lr times its own scale."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# ----------------------------------------------------------------------------------------------
# the optim group's schemas: the common schedule and clipping, then each optimizer's own keys

@dataclass
class OptimConfig:
    """What every optimizer shares: the learning-rate schedule and gradient clipping. Each
    parameter group of an optimizer gets lr x its own multiplier (nanogpt.training.optim)."""
    name: str = MISSING  # the optimizer: a key of nanogpt.training.optim.OPTIMIZERS
    lr: float = 1e-3
    min_lr: Optional[float] = None  # None: lr / 10 (Chinchilla)
    warmup_iters: int = 100
    decay_iters: Optional[int] = None  # None: max_iters
    schedule: str = "cosine"  # cosine | linear | constant | wsd (after warm-up; nanogpt.training.schedule)
    decay_frac: float = 0.2  # wsd: the cooldown is the last decay_frac of the run
    cooldown: str = "linear"  # wsd: the cooldown's shape, linear | cosine | 1-sqrt
    grad_clip: float = 1.0  # 0 disables

    def __post_init__(self):
        one_of("optim", self.name, sorted(OPTIMIZERS))
        if not isinstance(self, OPTIM_SCHEMAS[self.name]):
            raise ConfigError(f"optim.name={self.name!r} does not match the optimizer's keys: "
                              f"choose the optimizer with optim={self.name}")
        at_least("optim.lr", self.lr, 0)
        at_least("optim.min_lr", self.min_lr, 0)
        at_least("optim.warmup_iters", self.warmup_iters, 0)
        at_least("optim.decay_iters", self.decay_iters, 1)
        one_of("optim.schedule", self.schedule, SCHEDULES)
        one_of("optim.cooldown", self.cooldown, COOLDOWNS)
        if not 0.0 < self.decay_frac <= 1.0:
            raise ConfigError(f"optim.decay_frac={self.decay_frac} is out of range: it must be in (0, 1]")
        at_least("optim.grad_clip", self.grad_clip, 0)


@dataclass
class AdamWConfig(OptimConfig):
    name: str = "adamw"
    weight_decay: float = 0.1  # on >=2-D tensors only (matmul weights, embeddings)
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    fused: Optional[bool] = None  # None: fused AdamW where the device supports it

    def __post_init__(self):
        super().__post_init__()
        at_least("optim.weight_decay", self.weight_decay, 0)
        in_unit_interval("optim.beta1", self.beta1)
        in_unit_interval("optim.beta2", self.beta2)
        above("optim.eps", self.eps, 0)


@dataclass
class MuonConfig(OptimConfig):
    """torch.optim.Muon for the 2-D matrices of the transformer blocks (attention and MLP), AdamW
    for the rest: token embedding, position table, LM head, norm gains, biases. `lr` is Muon's;
    each AdamW group has its own rate, and the schedule scales every rate alike."""
    name: str = "muon"
    lr: float = 0.02  # Muon's, for the hidden matrices (Keller Jordan's default)
    momentum: float = 0.95
    nesterov: bool = True
    ns_steps: int = 5  # Newton-Schulz iterations of the orthogonalisation
    adjust_lr: str = "original"  # torch.optim.Muon's adjust_lr_fn: original | match_rms_adamw
    ns_dtype: str = "auto"  # Newton-Schulz's: auto (bf16 where the hardware has it) | bfloat16 | float32
    weight_decay: float = 0.0  # the hidden matrices' (decoupled, as AdamW's)
    # AdamW's rates, tuned with Muon at lr 0.02-0.03 on the small CPU models (experiment=speedrun_cpu)
    embed_lr: float = 0.0067  # AdamW's rate for the token embedding and position table
    head_lr: float = 0.0027  # AdamW's rate for an untied LM head (a tied one is the embedding)
    scalar_lr: float = 0.0067  # AdamW's rate for norm gains and biases
    adamw_weight_decay: float = 0.0  # of the embeddings and the head (never of gains and biases)
    beta1: float = 0.8  # AdamW's, as modded-nanogpt's
    beta2: float = 0.95
    eps: float = 1e-10
    fused: Optional[bool] = None  # None: fused AdamW where the device supports it

    def __post_init__(self):
        super().__post_init__()
        in_unit_interval("optim.momentum", self.momentum)
        at_least("optim.ns_steps", self.ns_steps, 1)
        one_of("optim.adjust_lr", self.adjust_lr, MUON_ADJUST_LR)
        one_of("optim.ns_dtype", self.ns_dtype, NS_DTYPES)
        at_least("optim.weight_decay", self.weight_decay, 0)
        for key in ("embed_lr", "head_lr", "scalar_lr", "adamw_weight_decay"):
            at_least(f"optim.{key}", getattr(self, key), 0)
        in_unit_interval("optim.beta1", self.beta1)
        in_unit_interval("optim.beta2", self.beta2)
        above("optim.eps", self.eps, 0)
        above("optim.lr", self.lr, 0)  # the AdamW groups' rates are multiples of it


MUON_ADJUST_LR = ("original", "match_rms_adamw")
OPTIM_SCHEMAS = {"adamw": AdamWConfig, "muon": MuonConfig}  # the optim group's options: name -> schema
