"""The `search` command as a real process: the installed console script, with the test runner's variables left out."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def search_cmd() -> list[str]:
    """The installed console script, run as a real process."""
    exe = Path(sys.executable).with_name("search")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "search"]


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env.update(extra)
    return env


def run(args: list[str], cwd: Path, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """`search ARGS` to its end, its output captured."""
    return subprocess.run(search_cmd() + args, cwd=cwd, capture_output=True, text=True, env=cli_env(),
                          timeout=timeout, **kw)
