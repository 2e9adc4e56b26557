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
