"""The `search` command's entry point (the console script and `python -m search`).

Stop signals are taken over before anything else is imported, so that a Ctrl-C at any moment of the command,
even while torch and Optuna load, ends it the same way: one line and exit status 130 (search/interrupt.py).
"""
from __future__ import annotations


def main() -> None:
    from search import interrupt

    interrupt.install()
    from search.cli import main as cli

    cli()


if __name__ == "__main__":
    main()
