"""`search --help`: the commands in the order a user meets them, each with a whole one-line description."""
from __future__ import annotations

import re

from click.testing import CliRunner

from search.cli import main
from search.door import COMMAND_ORDER


def help_commands(columns: int) -> list[str]:
    """The lines of the Commands block of `search --help`, in a terminal `columns` wide."""
    done = CliRunner().invoke(main, ["--help"], terminal_width=columns)
    assert done.exit_code == 0, done.output
    return done.output.split("Commands:\n", 1)[1].splitlines()


def test_commands_are_listed_in_the_order_a_user_meets_them() -> None:
    lines = help_commands(80)
    names = [line.split()[0] for line in lines if re.match(r"  \S", line)]
    assert names[:6] == ["start", "status", "dashboard", "export", "train", "report"], names
    assert names == list(COMMAND_ORDER), names
    assert sorted(names) == sorted(main.commands), "a command is missing from COMMAND_ORDER"


def test_each_description_is_one_whole_line_in_an_80_column_terminal() -> None:
    lines = help_commands(80)
    assert len(lines) == len(main.commands), lines  # no description wrapped onto a second line
    for line in lines:
        assert not line.rstrip().endswith("..."), line
        assert re.match(r"  \S+ +\S", line), line  # every command has a description


def test_a_huge_worker_count_is_one_line_before_anything_is_laid_out() -> None:
    """`start` lays out one placement per worker: a count beyond any machine is refused by the option itself."""
    done = CliRunner().invoke(main, ["start", "--study", "digits", "--workers", "99999999999999999999"])
    assert done.exit_code == 2 and "is not in the range 1<=x<=1024" in done.output
    assert len(done.output.strip().splitlines()) == 1
