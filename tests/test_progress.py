"""Progress on a terminal: a line per worker, redrawn in place. (Into a pipe, plain lines without control
characters: tests/test_search.py for `search start`, tests/test_cli_train.py for `search train`.)"""
from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios

import pytest

from tests.support.cli import cli_env, search_cmd
from tests.support.studies import study_file


@pytest.mark.e2e
def test_on_a_terminal_each_worker_has_a_line_with_its_epoch_redrawn_in_place(tmp_path):
    spec = study_file(tmp_path, "live", epochs=3, trials=2)
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 40 rows, 160 columns
    proc = subprocess.Popen(search_cmd() + ["start", "--study", str(spec), "--workers", "1"], cwd=tmp_path,
                            stdout=terminal, stderr=subprocess.PIPE, env=cli_env())
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal's other side closed: the command ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, err
    text = b"".join(chunks).decode()
    assert re.search(r"worker 0: trial \d+, epoch [123]/3, val_acc \d\.\d{4}, [\d,]+ images/s", text), text
    assert re.search(r"finished \d/2 .* \| ETA ", text) and "finished 2/2" in text
    assert "\r" in text or "\x1b[" in text  # redrawn in place, not appended


def test_into_a_pipe_a_summary_comes_after_30_s_without_a_line_never_right_after_one():
    from search.hpo import progress

    lines: list[str] = []
    board = progress.Board(lines.append, live=False)
    board.last_summary -= progress.SUMMARY_EVERY_S + 1  # 31 s of silence
    board.say("trial 3 finished")  # ... ended by a line: no summary right after it
    board.show(["worker 0: trial 4, starting"], "[ 31 s] totals")
    assert lines == ["trial 3 finished"]
    board.last_summary -= progress.SUMMARY_EVERY_S + 1  # 31 s more without a line
    board.show(["worker 0: trial 4, epoch 1/3"], "[ 62 s] totals")
    assert lines[-1] == "[ 62 s] totals || worker 0: trial 4, epoch 1/3"
    assert all("\r" not in line and "\x1b" not in line for line in lines)
