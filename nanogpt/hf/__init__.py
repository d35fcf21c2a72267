"""Hugging Face GPT-2 format, both directions: weights in (weights.py) and a run exported out (export.py)."""
