"""The one exception type for user errors.

Anything the user can fix (a bad config value, a missing data file, an unknown name) raises
:class:`SearchError`. It is a plain exception, so the core depends on no CLI library; the command line
(search/cli.py) shows it as one line and exits with its ``exit_code`` (2 unless a subclass says otherwise).
"""
from __future__ import annotations

from pathlib import Path


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


class ProcessFailed(SearchError):
    """A process failed on something that is not the user's input (a crashed worker or training process): one line
    with the reason and the file that holds its traceback; exit status 1."""

    exit_code = 1


def reason(err: BaseException) -> str:
    """An exception as one line: a SearchError's message, else "Type: message"."""
    text = err.message if isinstance(err, SearchError) else f"{type(err).__name__}: {err}"
    return " ".join(text.split())[:1000]


def write_log(folder: Path | None, name: str, text: str) -> Path | None:
    """Append ``text`` (a traceback) to ``folder/name`` (the current folder when None, or when ``folder`` cannot
    be written); returns where it went, None when nowhere could be written. Appended: an earlier failure's stays."""
    for where in ([folder] if folder is not None else []) + [Path.cwd()]:
        try:
            where.mkdir(parents=True, exist_ok=True)
            with (where / name).open("a") as f:
                f.write(text if text.endswith("\n") else text + "\n")
            return where / name
        except OSError:
            continue
    return None


def unexpected(err: BaseException) -> int:
    """A command's last resort for an error that is not the user's input and that nothing expected: its traceback
    to search-<pid>.log in the current folder, one line on stderr; returns the exit status, 1."""
    import os
    import sys
    import traceback

    log = write_log(None, f"search-{os.getpid()}.log", traceback.format_exc())
    where = f"its traceback is in {log}" if log is not None else "no folder could be written for its traceback"
    print(f"Error: {reason(err)}; {where}", file=sys.stderr, flush=True)
    return 1


class StoreFault(SearchError):
    """The study store failed under this process: unreachable for longer than the wait, its disk full, its file
    damaged. One line saying what to do, exit status 1 (the machine, not the input; 2 for a damaged file, which
    needs the user's repair). Once raised it is recorded: the process writes nothing more to the store, and an
    error that a library raised on the way out (while cleaning up after it) is shown as this line instead."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_fault: StoreFault | None = None


def record_fault(fault: StoreFault) -> StoreFault:
    """Remember the first store fault of this process (later ones are its consequences) and return it."""
    global _fault
    if _fault is None:
        _fault = fault
    return _fault


def store_fault() -> StoreFault | None:
    """The store fault this process met, if any."""
    return _fault
