"""The tasks: `task=<name>` runs TASKS[name](cfg, run_dir, dist), which returns what a sweeper
optimises (or None). Each task's keys have a schema in nanogpt.config.TASK_SCHEMAS and a
conf/task/<name>.yaml; a new task is a module with a `run` function plus those two lines."""
from __future__ import annotations

from nanogpt import bench, evaluate, hellaswag, plan, sample, train

TASKS = {"train": train.run, "eval": evaluate.run, "sample": sample.run, "bench": bench.run,
         "hellaswag": hellaswag.run, "plan": plan.run}
