"""`python -m nanogpt.export RUN OUT`: a run's checkpoint as a Hugging Face GPT-2 folder
(the mapping and the writer: nanogpt/hf/)."""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from nanogpt.checkpoint.load import load_run
from nanogpt.errors import run_cli
from nanogpt.hf.export import MARKER, check_target, export_hf
from nanogpt.hf.weights import check_exportable


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(prog="python -m nanogpt.export",
                                description="Export a run's checkpoint as a Hugging Face GPT-2 model directory.")
    p.add_argument("run_dir", help="the training run's directory (holds ckpt/best.pt, ckpt/last.pt)")
    p.add_argument("out_dir", help="the model directory to write")
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint (default: best)")
    p.add_argument("--force", action="store_true", help="replace an earlier export in OUT_DIR")
    p.add_argument("--rank-file", default=None,
                   help="GPT-2 BPE ranks (r50k_base.tiktoken) for the tokenizer files; default: "
                        "$NANOGPT_GPT2_RANKS, tiktoken's cache, the shared data folder")
    args = p.parse_args(argv)

    check_target(Path(args.out_dir), args.force, Path(args.run_dir))  # before the (slow) load
    model, ckpt, _ = load_run(args.run_dir, args.which, fallback=False)
    check_exportable(model.config)  # before any warning about the tokenizer
    if not ckpt.get("tokenizer"):
        warnings.warn(f"{args.run_dir} records no tokenizer: exporting the model without tokenizer files",
                      stacklevel=2)
    dataset = ((ckpt.get("config") or {}).get("data") or {}).get("name")
    source = {"checkpoint": str(Path(args.run_dir).resolve() / "ckpt" / f"{args.which}.pt"),
              "iter": ckpt.get("iter"), "dataset": dataset}
    out = export_hf(model, args.out_dir, tokenizer_meta=ckpt.get("tokenizer"),
                    rank_file=args.rank_file, force=args.force, source=source)
    files = ", ".join(sorted(f.name for f in out.iterdir() if f.name != MARKER))
    print(f"exported {source['checkpoint']} (iter {source['iter']}, data {dataset}, "
          f"{model.num_params(non_embedding=False) / 1e6:.2f}M parameters) to {out}: {files}")
    print(f"load it with transformers: GPT2LMHeadModel.from_pretrained({str(out)!r})")
    return out


if __name__ == "__main__":
    run_cli(main)
