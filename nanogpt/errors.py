"""The one exception type for mistakes a user can fix (bad config, missing data, bad checkpoint).

launch.py prints its message alone (no traceback) and exits with status 2; anything else is a bug
and keeps its traceback."""


class UserError(Exception):
    """What was wrong and what to do, in one message."""
