"""What every `search` command shares, beside the commands themselves (search/cli.py): the one place that turns
errors into what the user sees, and the two ways a command stops (search/interrupt.py)."""
from __future__ import annotations

import functools

import click

from search import interrupt
from search.errors import Interrupted, SearchError, store_fault

# `search --help` lists the commands in the order a user meets them; a command left out comes last.
COMMAND_ORDER = ("start", "status", "dashboard", "export", "train", "report", "predict", "init", "enqueue", "worker",
                 "submit", "studies", "proxy")


class OneLineErrors(click.Group):
    """The one place that turns errors into what the user sees: a user error as one line ("Error: ...") and its
    exit code (2, or 130 for an interrupted command); a usage error (a bad option value) too, without the usage
    block. A stop signal (search/interrupt.py) ends every command with one line and exit status 130, whenever it
    came."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        known = [name for name in COMMAND_ORDER if name in self.commands]
        return known + sorted(set(self.commands) - set(known))

    def invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            return self._invoke(ctx)
        except click.UsageError as err:
            err.ctx = None
            err.message = " ".join(err.message.split())  # one line, whatever line breaks the bad value held
            raise
        except SearchError as err:
            raise _one_line(err) from None
        except Exception:
            # The store failed under a library call, which then failed in its own clean-up: the store's line says
            # what happened and what to do (search/errors.py: StoreFault).
            fault = store_fault()
            if fault is None:
                raise
            raise _one_line(fault) from None

    def _invoke(self, ctx: click.Context):  # type: ignore[no-untyped-def]
        try:
            result = super().invoke(ctx)
        except KeyboardInterrupt:  # interrupt.Stop, raised where stopping is safe
            raise Interrupted(f"interrupted ({interrupt.requested() or 'SIGINT'})") from None
        return result


# Every command is one of two kinds (search/interrupt.py), said by its decorator below.
def stops_at_safe_points(fn):  # type: ignore[no-untyped-def]
    """For commands with long work: a stop signal is recorded and polled at the work's safe points; one that came
    after the last of them still ends the command with exit 130, its work done and saved."""
    @functools.wraps(fn)
    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = fn(*args, **kwargs)
        if interrupt.requested():
            raise Interrupted(f"interrupted ({interrupt.requested()}) as the command ended; its work is complete")
        return result

    run.stops = "at safe points"  # type: ignore[attr-defined]
    return run


def _one_line(err: SearchError) -> click.ClickException:
    shown = click.ClickException(err.message)
    shown.exit_code = err.exit_code
    return shown


def stops_at_once(fn):  # type: ignore[no-untyped-def]
    """For commands that have no long work to finish cleanly: the first Ctrl-C stops them where they are."""
    @functools.wraps(fn)
    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        with interrupt.raising():
            return fn(*args, **kwargs)

    run.stops = "at once"  # type: ignore[attr-defined]
    return run
