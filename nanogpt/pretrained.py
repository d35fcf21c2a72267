"""`python -m nanogpt.pretrained`: load GPT-2 weights and report load time and peak memory (the code: nanogpt/hf/weights.py)."""
from nanogpt.errors import run_cli
from nanogpt.hf.weights import main

if __name__ == "__main__":
    run_cli(main)
