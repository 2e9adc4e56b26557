"""The one exception type for user errors.

Anything the user can fix (a bad config value, a missing data file, an unknown name) raises
:class:`SearchError`. It is a plain exception, so the core depends on no CLI library; the command line
(search/cli.py) shows it as one line and exits with its ``exit_code`` (2 unless a subclass says otherwise).
"""
from __future__ import annotations


class SearchError(Exception):
    """A user error: one line that names the bad value and what would be valid."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep it to one line whatever the caller built.
        self.message = " ".join(str(message).split())
        super().__init__(self.message)

    def format_message(self) -> str:
        """The line the user sees (the name click gives it, so callers of either read errors alike)."""
        return self.message


class Interrupted(SearchError):
    """Ctrl-C or SIGTERM stopped the command: one line saying what was kept and how to go on; exit status 130
    (128 + SIGINT), as a shell reports a command that Ctrl-C ended."""

    exit_code = 130

    @classmethod
    def before_start(cls, signame: str | None) -> Interrupted:
        """The stop of a search that had not started a trial yet."""
        return cls(f"interrupted ({signame}) before any trial started; nothing was run. "
                   f"Run the same command again to start.")
