"""Any lm-evaluation-harness task on our checkpoints, without exporting them.

    python -m nanogpt.lm_eval RUN --tasks arc_easy,piqa,lambada_openai,wikitext
    python -m nanogpt.lm_eval --model gpt2 --tasks wikitext --limit 100     # OpenAI's weights
    python -m nanogpt.lm_eval --path DIR --tasks my_task --include-path tasks/   # a local HF GPT-2, local task YAMLs

`NanoGPTLM` is an lm_eval LM (lm-eval 0.4.x: `pip install -e ".[eval]"`): log-likelihoods of
continuations (multiple choice: ARC, PIQA, HellaSwag ...), rolling log-likelihoods of whole
documents (perplexity: WikiText, PTB, LAMBADA ...) and greedy generation, scored by our GPT with
the tokenizer the run was trained with (GPT-2's BPE for OpenAI's weights). Importing this module
registers it as lm-eval model "nanogpt" (`lm_eval.simple_evaluate(model="nanogpt",
model_args="run=RUN", ...)`). Results print as lm-eval's table and are written to RUN/lm_eval.json
(or --out).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from nanogpt.errors import UserError

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
except ImportError:  # the optional extra is not installed: main() says how to get it
    TemplateLM, register_model = object, None


def _registered(cls):
    return register_model("nanogpt")(cls) if register_model else cls


@_registered
class NanoGPTLM(TemplateLM):
    """lm-eval's view of a nanogpt model: tokens in, log-probabilities and text out."""

    def __init__(self, model=None, tokenizer=None, rt=None, batch_size: int = 16, max_gen_toks: int = 256,
                 run: str | None = None, which: str = "best", pretrained: str | None = None,
                 path: str | None = None, device: str = "auto", dtype: str = "auto", **_):
        super().__init__()
        if model is None:  # built by lm_eval from --model_args (strings)
            model, tokenizer, rt, _ = load(run, which, pretrained, path, device, dtype)
        self.model, self.tokenizer, self.rt = model.eval(), tokenizer, rt
        self._batch_size, self.max_gen_toks = int(batch_size), int(max_gen_toks)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k == "batch_size"}
        return cls(**args, **extra)

    # ---- what lm-eval asks of every model
    @property
    def eot_token_id(self) -> int:
        eot = getattr(self.tokenizer, "eot_token", None)
        return eot if eot is not None else self.tokenizer.encode("\n")[0]  # char models: a newline

    @property
    def max_length(self) -> int:
        return self.model.config.block_size

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def device(self):
        return self.rt.device

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tokenizer.decode(tokens)

    # ---- scoring
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        """(log P(continuation | context), greedy?) per (key, context tokens, continuation tokens),
        in batches of similar length, longest first."""
        from nanogpt.evals.scoring import continuation_logprobs

        rows = [(list(ctx) + list(cont), len(cont)) for _, ctx, cont in requests]
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))
        out: list = [None] * len(rows)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            logprob, _, greedy = continuation_logprobs(self.model, [rows[i] for i in idx], self.rt)
            for j, i in enumerate(idx):
                out[i] = (float(logprob[j]), bool(greedy[j]))
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], out[i])
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """A document's log-likelihood in windows of the model's context, as lm-eval's HF model does."""
        from lm_eval import utils

        windows, owner = [], []
        for k, (text,) in enumerate(req.args for req in requests):
            for ctx, cont in map(utils.make_disjoint_window, utils.get_rolling_token_windows(
                    token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length, context_len=1)):
                windows.append((None, ctx, cont))
                owner.append(k)
        scores = self._loglikelihood_tokens(windows)
        totals = [0.0] * len(requests)
        for k, (logprob, _) in zip(owner, scores):
            totals[k] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", (req.args[0],), total)
        return totals

    # ---- generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, with do_sample) continuations, cut at the first stop sequence."""
        from lm_eval.models.utils import (
            handle_stop_sequences,
            normalize_gen_kwargs,
            postprocess_generated_text,
        )

        out = []
        for req in requests:
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=self.tok_decode([self.eot_token_id]))
            max_new = kwargs.pop("max_gen_toks")
            if max_new >= self.max_length:
                raise UserError(f"the task asks for {max_new} new tokens, more than the model's context "
                                f"({self.max_length})")
            ids = self.tok_encode(context)[-(self.max_length - max_new):] or [self.eot_token_id]
            x = torch.tensor([ids], dtype=torch.long, device=self.rt.device)
            sampled = kwargs.get("do_sample") and kwargs.get("temperature", 0) > 0
            with self.rt.autocast():
                y = self.model.generate(x, max_new, temperature=kwargs.get("temperature", 1.0) if sampled else 1.0,
                                        top_k=None if sampled else 1)
            text = postprocess_generated_text(self.tok_decode(y[0, len(ids):].tolist()), until, None)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            out.append(text)
        return out


def load(run, which, pretrained, path, device, dtype, revision=None):
    """(model, tokenizer, runtime, what it is) from a run directory or OpenAI's weights (at
    `revision`, else the commit the presets pin)."""
    from nanogpt.checkpoint.load import load_model_and_tokenizer
    from nanogpt.hf.weights import preset_revision
    from nanogpt.runtime.hardware import make_runtime

    rt = make_runtime(device, dtype)
    model, tokenizer, source = load_model_and_tokenizer(run, which, pretrained, path, rt.device,
                                                        revision=revision or preset_revision(pretrained))
    return model, tokenizer, rt, source


def evaluate(lm: NanoGPTLM, tasks: list[str], num_fewshot: int | None = None, limit: float | None = None,
             include_path: str | None = None, only_include_path: bool = False, seed: int = 1234) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    if only_include_path and not include_path:
        raise UserError("--only-include-path needs --include-path DIR")
    manager = TaskManager(include_path=include_path, include_defaults=not only_include_path)
    unknown = [t for t in tasks if not manager.match_tasks([t])]
    if unknown:
        raise UserError(f"lm-eval has no task {', '.join(unknown)}: see `lm_eval ls tasks` (or --include-path DIR "
                        "for your own task YAMLs)")
    try:
        return lm_eval.simple_evaluate(model=lm, tasks=tasks, num_fewshot=num_fewshot, limit=limit,
                                       task_manager=manager, random_seed=seed, numpy_random_seed=seed,
                                       torch_random_seed=seed, fewshot_random_seed=seed)
    except Exception as e:
        reason = _download_failure(e)
        if reason is None:
            raise
        raise UserError(
            f"the data of lm-eval task {', '.join(tasks)} could not be downloaded ({reason}). lm-eval "
            "fetches each task's dataset from the Hugging Face hub: on a machine without internet, "
            "copy the dataset here and point --include-path DIR at task YAMLs that read it from "
            "local files (dataset_path: json, dataset_kwargs: {data_files: {test: FILE.jsonl}}; "
            "docs/evaluation.md), or run once online to fill the hub's cache") from None


def _download_failure(e: BaseException) -> str | None:
    """`ConnectionError: Couldn't reach 'allenai/ai2_arc' on the Hub (OfflineModeIsEnabled)` when
    e (or what caused it) is a failed dataset download (offline, no network, an unknown or gated
    dataset), else None: anything else is not the network's doing and keeps its traceback."""
    offline = ("ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "DatasetNotFoundError",
               "HfHubHTTPError", "ConnectTimeout", "MaxRetryError")
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in offline or isinstance(e, ConnectionError):
            return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        e = e.__cause__ or e.__context__
    return None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", nargs="?", help="a training run's directory")
    p.add_argument("--model", dest="pretrained", help="OpenAI's weights instead: gpt2, gpt2-medium, gpt2-large, gpt2-xl")
    p.add_argument("--path", help="a local Hugging Face GPT-2 directory instead")
    p.add_argument("--revision", help="hub branch, tag or commit of --model (default: the commit "
                                      "conf/model/pretrained pins; main for the newest)")
    p.add_argument("--which", default="best", choices=["best", "last"], help="the run's checkpoint")
    p.add_argument("--tasks", required=True, help="comma-separated lm-eval task names")
    p.add_argument("--num-fewshot", type=int)
    p.add_argument("--limit", type=float, help="examples per task (a fraction if < 1)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--include-path", help="a folder of extra task YAMLs")
    p.add_argument("--only-include-path", action="store_true", help="only the tasks of --include-path (skips "
                   "indexing lm-eval's own thousands of task files: seconds faster)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="autocast dtype: auto, float32, bfloat16, float16")
    p.add_argument("--out", type=Path, help="results JSON (default: RUN/lm_eval.json, or ./lm_eval.json)")
    args = p.parse_args(argv)
    if register_model is None:
        raise UserError("lm-eval is not installed: pip install -e \".[eval]\" (lm-eval 0.4.x)")
    if sum(x is not None for x in (args.run, args.pretrained, args.path)) != 1:
        raise UserError("give one model: a run directory, --model gpt2 (OpenAI's weights) or --path DIR")
    model, tokenizer, rt, source = load(args.run, args.which, args.pretrained, args.path, args.device, args.dtype,
                                        args.revision)
    lm = NanoGPTLM(model, tokenizer, rt, batch_size=args.batch_size)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    results = evaluate(lm, tasks, args.num_fewshot, args.limit, args.include_path, args.only_include_path)
    from lm_eval.utils import make_table

    print(f"\n{source}\n" + make_table(results))
    out = args.out or (Path(args.run) / "lm_eval.json" if args.run else Path("lm_eval.json"))
    record = {"source": source, "tasks": tasks, "results": results["results"], "n-shot": results.get("n-shot"),
              "config": {k: v for k, v in results.get("config", {}).items() if isinstance(v, (str, int, float, type(None)))}}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return results
