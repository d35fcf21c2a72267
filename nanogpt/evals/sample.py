"""`task=sample run=RUN_DIR` (or `model=pretrained/gpt2_xl`, `model.path=DIR`): text from a trained run
or from OpenAI's weights, generated with a KV cache."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from nanogpt.checkpoint.load import load_model_and_tokenizer
from nanogpt.config import TaskConfig, at_least, one_of
from nanogpt.errors import UserError
from nanogpt.run.metrics import progress, write_text_atomic
from nanogpt.runtime.hardware import runtime

log = logging.getLogger("nanogpt")


@dataclass
class SampleTask(TaskConfig):
    name: str = "sample"
    prompt: str = "\n"  # text, or FILE:path
    num_samples: int = 3
    max_new_tokens: int = 500
    temperature: float = 0.8
    top_k: Optional[int] = 200
    use_cache: bool = True
    which: str = "best"  # best | last checkpoint

    def __post_init__(self):
        super().__post_init__()
        at_least("task.num_samples", self.num_samples, 1)
        at_least("task.max_new_tokens", self.max_new_tokens, 1)
        at_least("task.temperature", self.temperature, 0)
        at_least("task.top_k", self.top_k, 1)
        one_of("task.which", self.which, ("best", "last"))


def read_prompt(prompt: str) -> str:
    if prompt.startswith("FILE:"):
        path = Path(prompt[5:])
        if not path.exists():
            raise UserError(f"prompt file {path} does not exist")
        return path.read_text(encoding="utf-8")
    return prompt


def generate_texts(model, tokenizer, prompt: str, num_samples: int, max_new_tokens: int,
                   temperature: float, top_k, seed: int, rt, use_cache: bool = True,
                   with_prompt: bool = True) -> list[str]:
    """num_samples continuations of prompt, decoded (after the prompt, unless with_prompt)."""
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:  # an empty prompt starts from the end-of-text token (or a newline)
        ids = [tokenizer.eot_token] if tokenizer.eot_token is not None else tokenizer.encode("\n")
    x = torch.tensor([ids] * num_samples, dtype=torch.long, device=rt.device)
    gen = torch.Generator(device=rt.device).manual_seed(seed)
    # generate() runs the model once per new token: a forward hook counts them for the bar
    with progress(total=max_new_tokens, desc="sampling", unit="tok") as bar:
        hook = model.register_forward_hook(lambda *_: bar.update(1))
        try:
            with rt.autocast():
                out = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k,
                                     use_cache=use_cache, generator=gen)
        finally:
            hook.remove()
    return [tokenizer.decode(row if with_prompt else row[len(ids):]) for row in out.tolist()]


def sample(cfg, out_dir: Path) -> list[str]:
    t = cfg.task
    rt = runtime(cfg.hardware)
    model, tokenizer, source = load_model_and_tokenizer(cfg.run, t.which, cfg.model.pretrained, cfg.model.path,
                                                        rt.device, revision=cfg.model.revision)
    prompt = read_prompt(t.prompt)
    try:
        texts = generate_texts(model, tokenizer, prompt, t.num_samples, t.max_new_tokens,
                               t.temperature, t.top_k, cfg.seed, rt, t.use_cache)
    except ValueError as e:  # e.g. a prompt with characters the char vocabulary lacks
        raise UserError(f"cannot encode the prompt for this model: {e}") from e
    log.info("sampled from %s", source)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out_dir / "samples.txt", "".join(f"{text}\n---------------\n" for text in texts))
    for text in texts:
        print(f"{text}\n---------------", flush=True)
    return texts


def run(cfg, run_dir: Path, dist) -> None:
    """task=sample."""
    sample(cfg, Path(run_dir))
