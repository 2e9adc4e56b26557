"""What every `search` command shares, beside the commands themselves (search/cli.py): the one place that turns
errors into what the user sees, the two ways a command stops (search/interrupt.py), and the options several
commands share, each defined once."""
from __future__ import annotations

import functools
import os

import click

from search import interrupt
from search.errors import Interrupted, SearchError, store_fault
from search.hpo.store import DEFAULT_STORAGE, locate

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


# --- the options several commands share, defined once -----------------------------------------------------------

PACK = click.option("--pack", type=click.IntRange(min=1), metavar="K",
                    help="Train up to K trials at once as one fused model, each still a trial of its own (replaces "
                         "the study file's pack; 1: one at a time). See docs/packs.md.")
ALLOW_CHANGES = click.option(
    "--allow-changes", is_flag=True,
    help="Go on with a study although its file differs from the definition it was created with (recorded).")
STUDY_FILE = click.option("--study", required=True, help="A study name (studies/NAME.yaml) or a path to a study file.")
STUDY = click.option("--study", required=True)  # a study in the store
TIMEOUT = click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
                       help="Seconds before no new trial starts.")
DATA_DIR = click.option("--data-dir", help="Folder holding the dataset files.")
DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")


def storage_option(what: str = "Study store URL"):  # type: ignore[no-untyped-def]
    """The --storage option of every command that opens the study store (only the first words of its help differ),
    with --allow-network-sqlite beside it. The command gets the store parsed (search/hpo/store.py's Store), resolved
    here once: --storage, else $SEARCH_STORAGE, else the default."""
    url = click.option("--storage", callback=lambda _ctx, _param, value: locate(value),
                       help=f"{what} (default $SEARCH_STORAGE or {DEFAULT_STORAGE}; on a shared "
                            f"filesystem: journal:///abs/path/study.log).")
    allow = click.option("--allow-network-sqlite", is_flag=True, expose_value=False, callback=_allow_network_sqlite,
                         help="Use a SQLite store on a network filesystem (NFS, Lustre, GPFS, ...) although its "
                              "locking is unsafe there.")
    return lambda fn: url(allow(fn))


def _allow_network_sqlite(_ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    # Through the environment, so that the workers this command starts allow it too.
    if value:
        os.environ["SEARCH_ALLOW_NETWORK_SQLITE"] = "1"
