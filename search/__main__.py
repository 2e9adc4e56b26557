"""The `search` command's entry point (the console script and `python -m search`).

Stop signals are taken over before anything else is imported, so that a Ctrl-C at any moment of the command,
even while torch and Optuna load, ends it the same way: one line and exit status 130 (search/interrupt.py). An
error that no part of the command expected ends it with one line too, its traceback in a file (errors.unexpected).
"""
from __future__ import annotations


def main() -> None:
    from search import interrupt

    interrupt.install()
    try:
        from search.cli import main as cli

        cli()
    except Exception as err:  # not the user's input (that ends inside the CLI as one line): no traceback either
        from search.errors import unexpected

        raise SystemExit(unexpected(err)) from None


if __name__ == "__main__":
    main()
