"""`python -m nanogpt.perplexity`: perplexity and bits per byte of a text file under a run or HF model (the code: nanogpt/evals/perplexity.py)."""
from nanogpt.errors import run_cli
from nanogpt.evals.perplexity import main

if __name__ == "__main__":
    run_cli(main)
