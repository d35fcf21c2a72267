"""Yardsticks: val loss and bits per byte, HellaSwag, lm-eval, perplexity of a file, sampling."""
