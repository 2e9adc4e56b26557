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

from tests.helpers import cli_env, search_cmd, study_file


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
