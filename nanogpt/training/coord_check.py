"""`task=coord_check`: μP's coordinate check (Yang et al., Tensor Programs V, figure 5).

    python launch.py task=coord_check model=baby optim=adamw
    python launch.py task=coord_check model=baby task.params=[completep] task.depths=[2,4,8,16]

Trains each model of a family a few steps (the same batches, a constant learning rate) and
records, before every step, on one fixed probe batch, the mean absolute value of the output of
each layer type (the token embedding, the attention and MLP outputs averaged over the blocks,
the logits) and how far it moved from step 0 (mean |h_t - h_0|). The family is `task.widths`
(n_embd, at model.n_layer) and `task.depths` (n_layer, at the smallest width).

Under μP each of these stays put as the width grows; under SP the updates grow with it (an Adam
step moves a width-n matmul's output by ~ n lr) and the logits blow up first. coord_check.json
holds every figure and the spread (largest / smallest across the family) per parametrisation,
layer type and step; coord_check.png plots them against width (and depth).
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from nanogpt import parametrization
from nanogpt.config import ConfigError, TaskConfig, at_least, model_args, one_of
from nanogpt.data.batches import Batches
from nanogpt.data.catalog import open_dataset
from nanogpt.model import GPT
from nanogpt.run.metrics import write_json_atomic
from nanogpt.runtime.hardware import runtime
from nanogpt.training.optim import make_optimizer, set_lr

log = logging.getLogger("nanogpt")
LAYER_TYPES = ("embedding", "attn_out", "mlp_out", "logits")


@dataclass
class CoordCheckTask(TaskConfig):
    name: str = "coord_check"
    params: list = field(default_factory=lambda: ["sp", "mup"])  # parametrisations to compare
    widths: list = field(default_factory=lambda: [64, 128, 256, 512])  # n_embd of each model
    depths: list = field(default_factory=list)  # n_layer of each model (at the smallest width)
    steps: int = 5  # optimizer steps; activations are recorded before each and after the last
    lr: float = 1e-2  # constant, for every model (large enough that SP's updates show)
    batch_size: int = 8
    seeds: int = 1  # each figure is the mean over this many initialisations and batch streams
    base_width: Optional[int] = None  # None: the smallest width (model.base_width if set)
    base_depth: Optional[int] = None  # None: the smallest depth (model.n_layer without depths)
    plot: bool = True

    def __post_init__(self):
        super().__post_init__()
        for p in self.params:
            one_of("task.params", p, parametrization.PARAMS)
        if not self.widths:
            raise ConfigError("task.widths is empty: give the n_embd of each model, e.g. [64,128,256,512]")
        for w in list(self.widths) + list(self.depths):
            at_least("task.widths/depths", w, 1)
        at_least("task.steps", self.steps, 1)
        at_least("task.lr", self.lr, 0)
        at_least("task.batch_size", self.batch_size, 1)
        at_least("task.seeds", self.seeds, 1)


def family(cfg, vocab: int) -> list[tuple[str, int, int, object]]:
    """(param, width, depth, GPTConfig) of every model to check, refused before any training if
    a width does not divide into the heads."""
    t, base = cfg.task, model_args(cfg.model, vocab)
    depths = list(t.depths) or [base.n_layer]
    models = []
    for param in t.params:
        shapes = [(w, base.n_layer) for w in t.widths]
        if t.depths:
            shapes += [(min(t.widths), d) for d in depths if d != base.n_layer]
        for width, depth in shapes:
            try:
                config = dataclasses.replace(
                    base, n_embd=width, n_layer=depth, param=param,
                    base_width=t.base_width or cfg.model.base_width or min(t.widths),
                    base_depth=t.base_depth or cfg.model.base_depth or min(depths))
            except ValueError as e:
                raise ConfigError(f"task=coord_check: width {width}, depth {depth}, param={param}: {e}") from None
            models.append((param, width, depth, config))
    return models


def layer_hooks(model: GPT, store: dict) -> list:
    """Forward hooks that put each layer type's outputs (a list per type) into `store`."""
    def keep(kind):
        return lambda module, args, out: store.setdefault(kind, []).append(out.detach().float())
    handles = [model.transformer.wte.register_forward_hook(keep("embedding")),
               model.lm_head.register_forward_hook(keep("logits"))]
    for block in model.transformer.h:
        handles += [block.attn.register_forward_hook(keep("attn_out")),
                    block.mlp.register_forward_hook(keep("mlp_out"))]
    return handles


@torch.no_grad()
def probe(model: GPT, x: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    store: dict = {}
    handles = layer_hooks(model, store)
    try:
        model.eval()
        model(x, x)
    finally:
        for h in handles:
            h.remove()
        model.train()
    return store


def check_model(config, cfg, dataset, device: torch.device) -> dict[str, dict[str, list[float]]]:
    """check_one averaged over task.seeds seeds (initialisation and batches)."""
    runs = [check_one(config, cfg, Batches(dataset, config.block_size, cfg.task.batch_size, cfg.seed + i,
                                           torch.device("cpu")), cfg.seed + i, device)
            for i in range(cfg.task.seeds)]
    return {measure: {kind: [sum(r[measure][kind][s] for r in runs) / len(runs)
                             for s in range(cfg.task.steps + 1)] for kind in LAYER_TYPES}
            for measure in ("abs", "delta")}


def check_one(config, cfg, batches: Batches, seed: int, device: torch.device) -> dict[str, dict[str, list[float]]]:
    """Train one model `steps` steps in float32; per layer type, mean |h| and mean |h - h_0|
    per step."""
    torch.manual_seed(seed)
    model = GPT(config).to(device)
    optimizer = make_optimizer(model, dataclasses.replace(cfg.optim, fused=False), device.type)
    x_probe = batches.cpu_batch("val", 0)[0].to(device)
    first, out = None, {"abs": {k: [] for k in LAYER_TYPES}, "delta": {k: [] for k in LAYER_TYPES}}
    for step in range(cfg.task.steps + 1):
        acts = probe(model, x_probe)
        first = first or acts
        for kind in LAYER_TYPES:
            out["abs"][kind].append(sum(a.abs().mean().item() for a in acts[kind]) / len(acts[kind]))
            out["delta"][kind].append(sum((a - a0).abs().mean().item() for a, a0 in zip(acts[kind], first[kind]))
                                      / len(acts[kind]))
        if step == cfg.task.steps:
            break
        set_lr(optimizer, cfg.task.lr)
        x, y = batches.cpu_batch("train", step)
        _, loss = model(x.to(device), y.to(device))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return out


def spread(values: list[float]) -> float:
    """Largest over smallest (1: the same at every size)."""
    low = min(values)
    return float("inf") if low <= 0 else max(values) / low


def coord_check(cfg, out_dir: Path) -> dict:
    t = cfg.task
    device = runtime(cfg.hardware).device  # and the CPU threads the hardware config says
    dataset = open_dataset(cfg.data.name, cfg.data.root, cfg.data.auto_prepare)
    models = family(cfg, dataset.vocab_size)  # every shape checked before the first step
    block = cfg.model.block_size
    dataset.check_block_size(block)
    results = []
    for param, width, depth, config in models:
        log.info("coord_check: param=%s width=%d depth=%d", param, width, depth)
        results.append({"param": param, "width": width, "depth": depth, **check_model(config, cfg, dataset, device)})
    summary = summarise(results, t)
    report = {"steps": t.steps, "lr": t.lr, "optim": cfg.optim.name, "layer_types": list(LAYER_TYPES),
              "models": results, "spread": summary}
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "coord_check.json", report)
    for line in spread_table(summary, t.steps):
        print(line)
    if t.plot:
        plot(results, out_dir / "coord_check.png", t.steps)
    return report


def summarise(results: list[dict], t) -> dict:
    """spread[param][axis][measure][layer type] = the spread at each step across the family
    (axis "width" at the base depth; "depth" at the smallest width, CompleteP with task.depths)."""
    summary: dict = {}
    for param in t.params:
        rows = [r for r in results if r["param"] == param]
        axes = {"width": [r for r in rows if r["depth"] == rows[0]["depth"]]}
        deep = [r for r in rows if r["width"] == min(t.widths)]
        if len({r["depth"] for r in deep}) > 1:
            axes["depth"] = deep
        summary[param] = {
            axis: {measure: {kind: [spread([r[measure][kind][s] for r in group]) for s in range(t.steps + 1)]
                             for kind in LAYER_TYPES} for measure in ("abs", "delta")}
            for axis, group in axes.items()}
    return summary


def spread_table(summary: dict, steps: int) -> list[str]:
    lines = [f"coord_check: spread (largest / smallest across the family) at step {steps}"]
    lines.append(f"{'param':<10} {'axis':<6} {'measure':<8} " + " ".join(f"{k:>10}" for k in LAYER_TYPES))
    for param, axes in summary.items():
        for axis, measures in axes.items():
            for measure, kinds in measures.items():
                lines.append(f"{param:<10} {axis:<6} {measure:<8} "
                             + " ".join(f"{kinds[k][steps]:>10.2f}" for k in LAYER_TYPES))
    return lines


def plot(results: list[dict], path: Path, steps: int) -> None:
    """One row per parametrisation, one column per layer type: mean |h - h_0| against width
    (log-log), a line per step."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: coord_check.png not drawn")
        return
    params = list(dict.fromkeys(r["param"] for r in results))
    fig, axes = plt.subplots(len(params), len(LAYER_TYPES), figsize=(4 * len(LAYER_TYPES), 3 * len(params)),
                             squeeze=False)
    for i, param in enumerate(params):
        rows = [r for r in results if r["param"] == param]
        rows = [r for r in rows if r["depth"] == rows[0]["depth"]]
        for j, kind in enumerate(LAYER_TYPES):
            ax = axes[i][j]
            for s in range(1, steps + 1):
                ax.plot([r["width"] for r in rows], [r["delta"][kind][s] for r in rows], marker="o",
                        label=f"step {s}", color=plt.cm.viridis(s / steps))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{param}: {kind}")
            ax.set_xlabel("width (n_embd)")
            if j == 0:
                ax.set_ylabel("mean |h_t - h_0|")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(cfg, run_dir: Path, dist) -> None:
    """task=coord_check: coord_check.json and coord_check.png in the run directory."""
    coord_check(cfg, Path(run_dir))
