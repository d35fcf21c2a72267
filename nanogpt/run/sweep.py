"""A local sweep's progress (`python launch.py -m ...` with Hydra's basic launcher): one line as
each point ends, `sweep: 2 of 4 points done, 1 failed`. Hydra's callback (conf/config.yaml);
the SLURM launcher (hydra_plugins/nanogpt_slurm_launcher.py) reports its jobs itself."""
from __future__ import annotations

from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback

from nanogpt.run.metrics import SweepTally, say


class SweepProgress(Callback):
    tally: SweepTally | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if launcher.endswith("BasicLauncher"):  # jobs that end in this process
            self.tally = SweepTally(sweep_points(config))

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if self.tally is not None:
            say(self.tally.add(failed=job_return.status == JobStatus.FAILED))


def sweep_points(config) -> int | None:
    """How many points Hydra's basic sweeper makes of the command's overrides (and of
    hydra.sweeper.params), or None when that cannot be told here (another sweeper, a glob)."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        if not str(config.hydra.sweeper.get("_target_", "")).endswith("BasicSweeper"):
            return None
        params = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
        overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    except Exception:  # noqa: BLE001 (a count is a nicety: the sweep itself reports what is wrong)
        return None
