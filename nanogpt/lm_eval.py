"""`python -m nanogpt.lm_eval`: a run or HF model through EleutherAI's lm-evaluation-harness (the code: nanogpt/evals/lm_eval.py)."""
from nanogpt.errors import run_cli
from nanogpt.evals.lm_eval import main

if __name__ == "__main__":
    run_cli(main)
