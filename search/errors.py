"""The one exception type for user errors.

Anything the user can fix (a bad config value, a missing data file, an unknown name) raises
:class:`SearchError`. The CLI shows it as one line and exits with status 2; no traceback.
"""
from __future__ import annotations

import click


class SearchError(click.ClickException):
    """A user error: one line that names the bad value and what would be valid."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it to one line whatever the caller built.
        super().__init__(" ".join(str(message).split()))


class Interrupted(SearchError):
    """Ctrl-C or SIGTERM stopped the command: one line saying what was kept and how to go on; exit status 130
    (128 + SIGINT), as a shell reports a command that Ctrl-C ended."""

    exit_code = 130
