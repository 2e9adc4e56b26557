"""A `search` command in its own process group, stopped as a terminal stops it (tests/test_ctrl_c.py, bench/ctrl_c.py).
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import TrialState

from tests.support.cli import cli_env, search_cmd
from tests.support.store import trials_of

STOP_LIMIT_S = 30  # the promise: stopped within 30 s of the signal
OUTPUT_END_S = 30  # after the command's exit, how long its output may take to end (every process closing it)


def _wait_for_exec(pid: int, word: str, timeout: float = 10) -> None:
    """Until the child runs the command (its /proc cmdline names it). Before that it is still a copy of this
    process between fork and exec: a signal there is a property of this harness (a terminal's shell resets SIGINT
    in that instant), not of the command under test."""
    cmdline = Path(f"/proc/{pid}/cmdline")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if word.encode() in cmdline.read_bytes().split(b"\0"):
                return
        except OSError:  # gone already: the caller sees its exit
            return
        time.sleep(0.001)


def sigint_as_in_a_terminal() -> None:
    """A command a terminal runs in the foreground has SIGINT at its default. This process may have it ignored
    (started in the background by a shell), and ignored signals stay ignored in the commands it starts, which
    would then rightly ignore Ctrl-C: undo that before starting them."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class Interruptible:
    """A `search` process in its own group, its output read line by line as it comes."""

    proc: subprocess.Popen
    started: float = field(default_factory=time.monotonic)
    out: list[str] = field(default_factory=list)
    err: list[str] = field(default_factory=list)
    readers: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start(cls, args: list[str], cwd: Path, **env: str) -> Interruptible:
        sigint_as_in_a_terminal()
        proc = subprocess.Popen(search_cmd() + args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env=cli_env(**env), start_new_session=True)
        run = cls(proc)
        _wait_for_exec(proc.pid, args[0])
        run.started = time.monotonic()
        for stream, lines in ((proc.stdout, run.out), (proc.stderr, run.err)):
            reader = threading.Thread(target=lambda s=stream, ls=lines: ls.extend(iter(s.readline, "")), daemon=True)
            reader.start()
            run.readers.append(reader)
        return run

    def printed(self, text: str) -> bool:
        return any(text in line for line in self.out)

    def ctrl_c(self) -> float:
        """Ctrl-C to the whole group; the seconds until the command exited. Returns once its output is read to the
        end, so that a last line (a traceback) cannot be missed."""
        os.killpg(self.proc.pid, signal.SIGINT)  # the whole process group, as a terminal does
        sent = time.monotonic()
        self.proc.wait(timeout=120)
        seconds = time.monotonic() - sent
        self.read_to_the_end()
        return seconds

    def read_to_the_end(self) -> None:
        """Join the reader threads: each ends at the end of its stream, once every process that holds it (the
        command and whatever it started) has closed it."""
        for reader in self.readers:
            reader.join(OUTPUT_END_S)
        assert not any(r.is_alive() for r in self.readers), (
            f"the output did not end within {OUTPUT_END_S} s of the command's exit: a process it started still "
            f"holds it\n{self.text()}")

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)


def assert_clean_stop(run: Interruptible, seconds: float, db: Path, name: str) -> None:
    """The outcome the user is promised, whatever the moment."""
    trials = trials_of(db, name)
    if run.proc.returncode == -signal.SIGINT and not run.text():
        # The signal came before the interpreter ran a line of ours (its own start-up, a few ms): SIGINT's default
        # action ended it, nothing was printed or written, and a shell reports exit status 130 (128 + 2).
        assert not [t for t in trials if t.state == TrialState.RUNNING]
        return
    assert run.proc.returncode == 130, run.text()
    assert seconds < STOP_LIMIT_S, f"stopped {seconds:.1f} s after the signal"
    errors = [line for line in run.err if line.strip()]
    assert len(errors) == 1, run.text()  # one line, from the supervisor: nothing from the workers
    assert errors[0].startswith("Error: interrupted (SIGINT)"), errors
    assert "Run the same command again" in errors[0] or "run the same command" in errors[0], errors
    assert "Traceback" not in run.text() and "Exception ignored" not in run.text(), run.text()
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs.get("reason") == "interrupted", t.user_attrs
