"""`task=sample run=RUN_DIR` (or `model=pretrained/gpt2_xl`, `model.path=DIR`): text from a trained run
or from OpenAI's weights, generated with a KV cache."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from nanogpt.build import load_model_and_tokenizer
from nanogpt.errors import UserError
from nanogpt.hardware import runtime
from nanogpt.metrics import progress, write_text_atomic

log = logging.getLogger("nanogpt")


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
                                                        rt.device)
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
