"""The training loop (loop.py) and what it is built from: setup, step, optimizers, schedules, cooldown branches,
resume, guards, the step benchmark."""
