"""What can stop a training run early: a signal (Ctrl-C, a scheduler's notice) or a loss that
is no longer a number. Both are watched without slowing the loop down."""
from __future__ import annotations

import logging
import signal

import torch

log = logging.getLogger("nanogpt")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM that stops a command at once. `message` says what was kept (None: the
    command stopped before its work began); launch.py prints it and exits with 128 + signum."""

    def __init__(self, signum: int = signal.SIGINT, message: str | None = None):
        super().__init__(message or signal.Signals(signum).name)
        self.signum, self.message = signum, message


def raise_interrupted(signum, frame):
    """A signal handler: stop at once, with an exception that cleanup code sees."""
    raise Interrupted(signum)


class StopRequest:
    """SIGTERM / SIGINT (Ctrl-C, a scheduler's notice) ask the loop to finish its step, save
    and exit; a second Ctrl-C exits at once."""

    def __init__(self, signals=(signal.SIGTERM, signal.SIGINT)):
        self.signum = None
        self.previous = {}
        for s in signals:
            try:
                self.previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise Interrupted(signal.SIGINT)
        self.signum = signum
        log.warning("received %s: finishing this step, then saving a checkpoint",
                    signal.Signals(signum).name)

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def restore(self):
        for s, h in self.previous.items():
            signal.signal(s, h)


class NanGuard:
    """Watches for a non-finite loss without a host sync per step: every loss (and gradient
    norm) is added into a sum on the device, which a NaN or inf poisons for good. The sum is read,
    one sync, at log steps and before every checkpoint (each step with task.on_nan=skip)."""

    def __init__(self, device, start_iter: int = 0):
        self.total = torch.zeros((), device=device, dtype=torch.float32)
        self.checked_at = start_iter  # iterations done at the last good check

    def add(self, value: torch.Tensor):
        self.total += value.detach().float()

    def finite(self, it: int) -> bool:
        """Were all values since the last check finite? `it`: iterations done now."""
        ok = bool(torch.isfinite(self.total))
        if ok:
            self.checked_at = it
        return ok

    def reset(self, it: int):
        """Forget a bad step that was skipped."""
        self.total.zero_()
        self.checked_at = it
