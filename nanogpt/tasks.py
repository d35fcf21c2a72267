"""The tasks: `task=<name>` runs TASKS[name](cfg, run_dir, dist), which returns what a sweeper
optimises (or None), after the gate checked the task's keys against TASK_SCHEMAS[name]. A new task
is a module with a `run` function and its schema beside it, one line in each table below, and
conf/task/<name>.yaml."""
from __future__ import annotations

from nanogpt.evals import core, hellaswag, loss, sample
from nanogpt.training import bench, coord_check, loop, memory_plan

TASKS = {"train": loop.run, "eval": loss.run, "sample": sample.run, "bench": bench.run,
         "hellaswag": hellaswag.run, "plan": memory_plan.run, "core": core.run,
         "coord_check": coord_check.run}
TASK_SCHEMAS = {"train": loop.TrainTask, "eval": loss.EvalTask, "sample": sample.SampleTask,
                "bench": bench.BenchTask, "hellaswag": hellaswag.HellaSwagTask, "plan": memory_plan.PlanTask,
                "core": core.CoreTask, "coord_check": coord_check.CoordCheckTask}
