"""Checkpoints: single files (single.py), sharded DCP saves (sharded.py), and the one loader of runs and models (load.py)."""
