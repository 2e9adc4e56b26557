"""Progress: on a terminal, a line per worker redrawn in place; into a pipe, plain lines without control
characters (`search start` and `search train`)."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios

from tests.helpers import cli_env, run, search_cmd, study_file


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


def test_into_a_pipe_there_is_no_control_character(tmp_path):
    spec = study_file(tmp_path, "piped", epochs=2, trials=2)
    started = run(["start", "--study", str(spec), "--workers", "1"], tmp_path)
    assert started.returncode == 0, started.stderr
    assert "finished 2/2" in started.stdout and "| ETA " in started.stdout
    (tmp_path / "cfg.yaml").write_text("dataset: digits\narchitecture: simple_cnn_v1\nepochs: 3\nbatch_size: 64\n")
    trained = run(["train", "cfg.yaml", "--out", "run", "--seeds", "2"], tmp_path)
    assert trained.returncode == 0, trained.stderr
    for out in (started.stdout, started.stderr, trained.stdout, trained.stderr):
        assert not re.search(r"[\r\x1b\x08]", out), repr(out[:300])
    epochs = re.findall(r"^epoch (\d)/3: loss \S+ val_acc \S+ val_auc \S+ \([\d,]+ images/s\)$", trained.stderr, re.M)
    assert epochs == ["1", "2", "3"] * 2  # one line per epoch of each seed
    assert len(trained.stderr) < 2000
