"""The one exception type for mistakes a user can fix (bad config, missing data, bad checkpoint).

launch.py and the command-line modules (`run_cli`) print its message alone (no traceback) and
exit with status 2; anything else is a bug and keeps its traceback."""
from __future__ import annotations

import os
import sys
from typing import Callable


class UserError(Exception):
    """What was wrong and what to do, in one message."""


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> None:
    """Run a command line's main(argv): a UserError is `error: ...` on stderr and exit status 2."""
    try:
        main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        if argv is not None:  # called in-process, not as a command: an ordinary SystemExit
            sys.exit(2)
        # the command ends here, at once: the interpreter's teardown could meet a library's C++
        # threads still alive (Arrow's pool under datasets) and abort with SIGABRT ("terminate
        # called without an active exception") instead of exiting 2. Nothing is left to write.
        sys.stdout.flush()
        os._exit(2)
