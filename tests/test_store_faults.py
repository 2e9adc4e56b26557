"""The store's own faults through the real command line: its filesystem full (a small tmpfs), its file damaged
(random bytes written into the middle of a copy of a real store). One line each, the exit status stated, no
traceback, nothing lost."""
from __future__ import annotations

import random
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.support.cli import cli_env, search_cmd
from tests.support.required import skip_or_fail
from tests.support.store import FINISHED, by_state, trials_of
from tests.support.studies import study_file

pytestmark = pytest.mark.e2e  # every test here starts real processes


def _mount_small(folder: Path, size: str) -> str | None:
    """A tmpfs of ``size`` at ``folder``; why not, where mounting is not permitted."""
    folder.mkdir()
    if shutil.which("mount") is None:
        return "no mount command"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    return None if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}"


def _fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (65536, 1):
            try:
                while True:
                    f.write(b"\0" * chunk)
            except OSError:
                pass
    return filler


def _start(tmp_path: Path, spec: Path, url: str, trials: int) -> subprocess.CompletedProcess:
    return subprocess.run(search_cmd() + ["start", "--study", str(spec), "--storage", url, "--workers", "2",
                                          "--trials", str(trials)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=cli_env(SEARCH_HEARTBEAT_S="1", SEARCH_GRACE_S="3",
                                      SEARCH_ARTIFACTS=str(tmp_path / "artifacts")))


def test_a_full_store_filesystem_is_one_line_and_the_same_command_resumes(tmp_path):
    small = tmp_path / "small"
    why = _mount_small(small, "32m")  # the store alone: the trials' files go to a folder of their own
    if why:
        pytest.skip(why)
    try:
        db = small / "search.db"
        url = f"sqlite:///{db}"
        spec = study_file(tmp_path, "full", epochs=1, trials=2)
        first = _start(tmp_path, spec, url, 2)
        assert first.returncode == 0, first.stdout + first.stderr
        before = trials_of(db, "full")

        filler = _fill(small)
        full = _start(tmp_path, spec, url, 4)
        out = full.stdout + full.stderr
        assert full.returncode == 1, out
        assert "Traceback" not in out, out
        last = out.strip().splitlines()[-1]
        assert last == (f"Error: no space left on the store's filesystem ({small}); free space and run the same "
                        f"command to resume"), out
        assert [line for line in out.splitlines() if "space" in line.lower() or "disk" in line] == [last], out

        filler.unlink()
        with sqlite3.connect(db) as conn:  # nothing corrupted
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        kept = trials_of(db, "full")
        assert [(t.number, t.state, t.values) for t in kept[:len(before)]] == \
            [(t.number, t.state, t.values) for t in before]
        assert not by_state(kept, TrialState.FAIL)

        time.sleep(4)  # any trial the full disk left RUNNING is stale by now: the next start retries it
        again = _start(tmp_path, spec, url, 4)
        assert again.returncode == 0, again.stdout + again.stderr
        trials = trials_of(db, "full")
        assert len(by_state(trials, *FINISHED)) == 4
        assert not by_state(trials, TrialState.RUNNING, TrialState.WAITING)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def _damage_middle(src: Path, dst: Path) -> None:
    """A copy of the store ``src`` with random bytes over the middle half of the file."""
    data = bytearray(src.read_bytes())
    rng = random.Random(0)
    start, end = len(data) // 4, 3 * len(data) // 4
    data[start:end] = bytes(rng.randrange(256) for _ in range(end - start))
    dst.write_bytes(bytes(data))


def test_a_store_damaged_inside_is_one_line_with_the_way_to_recover(tmp_path):
    spec = study_file(tmp_path, "tiny", epochs=1, trials=3)
    done = subprocess.run(search_cmd() + ["start", "--study", str(spec), "--workers", "2"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=cli_env())
    assert done.returncode == 0, done.stdout + done.stderr
    with sqlite3.connect(tmp_path / "search.db") as conn:  # everything in the file itself, none in its WAL
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    _damage_middle(tmp_path / "search.db", tmp_path / "damaged.db")
    before = (tmp_path / "damaged.db").read_bytes()
    url = "sqlite:///damaged.db"
    for args in (["status", "--study", "tiny"], ["export", "--study", "tiny", "-o", "best.yaml"],
                 ["start", "--study", str(spec), "--trials", "5"], ["studies"]):
        proc = subprocess.run(search_cmd() + args + ["--storage", url], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=cli_env())
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, (args, out)
        assert "Traceback" not in out, out
        line = out.strip().splitlines()[-1]
        assert line.startswith("Error: the study store damaged.db is damaged (SQLite: "), out
        assert "sqlite3 damaged.db .recover | sqlite3 damaged-recovered.db" in line, out
        assert [x for x in out.splitlines() if "damaged" in x] == [line], out
    assert (tmp_path / "damaged.db").read_bytes() == before  # nothing written into it
    assert not (tmp_path / "best.yaml").exists()

    if shutil.which("sqlite3") is None:
        skip_or_fail("the sqlite3 command is not installed: the recovery advice is not tried (apt-get install sqlite3)",
                     "SEARCH_REQUIRE_SQLITE3", "the recovery advice to be tried")
    # The advice works: what the recovery saved opens as a store again.
    subprocess.run("sqlite3 damaged.db .recover | sqlite3 damaged-recovered.db", shell=True, cwd=tmp_path,
                   check=True, capture_output=True, timeout=60)
    studies = subprocess.run(search_cmd() + ["studies", "--storage", "sqlite:///damaged-recovered.db"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120, env=cli_env())
    assert studies.returncode == 0, studies.stdout + studies.stderr  # a valid store, with what could be saved


def test_a_full_artifacts_filesystem_never_fails_a_trial(tmp_path):
    small = tmp_path / "small"
    why = _mount_small(small, "1m")
    if why:
        pytest.skip(why)
    try:
        _fill(small)
        spec = study_file(tmp_path, "files", epochs=2, trials=2)
        proc = subprocess.run(search_cmd() + ["start", "--study", str(spec), "--workers", "2"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600,
                              env=cli_env(SEARCH_ARTIFACTS=str(small)))
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert "Traceback" not in out and not [line for line in out.splitlines() if line.startswith("Error")], out
        warnings = [line for line in out.splitlines() if line.startswith("warning:") and "organamnist" not in line]
        assert warnings, out  # the checkpoint, the learning curve, the log: each trial says what it could not save
        assert all(str(small) in line and "No space left on device" in line for line in warnings), out
        trials = trials_of(tmp_path / "search.db", "files")
        assert len(by_state(trials, *FINISHED)) == 2 and not by_state(trials, TrialState.FAIL)
    finally:
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


def test_a_bad_store_wait_is_one_line_before_anything_is_written(tmp_path):
    spec = study_file(tmp_path, "x", epochs=1, trials=1)
    proc = subprocess.run(search_cmd() + ["start", "--study", str(spec)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env=cli_env(SEARCH_STORE_WAIT_S="soon"))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (proc.stdout + proc.stderr).strip() == \
        "Error: $SEARCH_STORE_WAIT_S must be a number of seconds, at least 0; got 'soon'"
    assert not (tmp_path / "search.db").exists()
