"""The store's own faults through the real command line: its filesystem full (a small tmpfs), its file damaged
(random bytes written into the middle of a copy of a real store). One line each, the exit status stated, no
traceback, nothing lost."""
from __future__ import annotations

import errno
import os
import random
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from tests.support.cli import cli_env, search_cmd
from tests.support.store import FINISHED, by_state, trials_of
from tests.support.studies import study_file


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
        return
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


# --- the journal's file on a network filesystem that hiccups ---------------------------------------------------
# In process, on a real journal file: the store's own backend (Optuna's JournalFileBackend, as JournalStore builds
# it) made to fail as an NFS server's restart or timeout does, under the store's retries.


class _Hiccups(JournalFileBackend):
    """The journal file's backend, whose reads and appends raise OSError(``code``) as a network filesystem does:
    every call until ``broken_until`` (time.monotonic), the ``reads_after_append`` reads after each append that
    succeeded, and ``fsyncs`` appends that fail after their line is written."""

    def __init__(self, path: Path, code: int) -> None:
        super().__init__(str(path), lock_obj=JournalFileOpenLock(str(path)))
        self.path = path
        self.code, self.broken_until, self.reads_after_append, self.fsyncs = code, 0.0, 0, 0
        self.failed, self._owed_reads = 0, 0

    def _fail(self) -> None:
        self.failed += 1
        raise OSError(self.code, os.strerror(self.code), str(self.path))

    def read_logs(self, log_number_from: int):  # type: ignore[no-untyped-def]
        if time.monotonic() < self.broken_until or self._owed_reads:
            self._owed_reads = max(0, self._owed_reads - 1)
            self._fail()
        yield from super().read_logs(log_number_from)

    def append_logs(self, logs: list) -> None:
        if time.monotonic() < self.broken_until:
            self._fail()
        super().append_logs(logs)
        self._owed_reads = self.reads_after_append
        if self.fsyncs:
            self.fsyncs -= 1
            self._fail()


@pytest.fixture
def said(monkeypatch):  # type: ignore[no-untyped-def]
    """This process's store state fresh (no fault recorded, no outage), and the lines its waits report."""
    from search import errors
    from search.hpo import faults

    monkeypatch.setattr(errors, "_fault", None)
    monkeypatch.setattr(faults, "outage", faults._Outage())
    lines: list[str] = []
    faults.outage.say = lines.append
    return lines


def _journal(tmp_path: Path, code: int):  # type: ignore[no-untyped-def]
    from search.hpo import journal, storage

    backend = _Hiccups(tmp_path / "study.log", code)
    store = storage.retrying(journal.JournalStore)(backend.path, backend=backend)
    return optuna.create_study(study_name="j", storage=store), backend


def _x(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0, 1)


@pytest.mark.parametrize("code", [errno.EIO, errno.ESTALE, errno.ETIMEDOUT], ids=["EIO", "ESTALE", "ETIMEDOUT"])
def test_a_journal_read_or_append_failing_for_a_while_is_waited_out(tmp_path, said, code):
    study, backend = _journal(tmp_path, code)
    # Past the second after which an outage is reported, with room for the retries' backoff (at most 1.92 s then).
    backend.broken_until = time.monotonic() + 3
    study.optimize(_x, n_trials=2)
    assert backend.failed > 0
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    assert len(said) == 1 and "unreachable" in said[0] and os.strerror(code) in said[0], said


def test_a_journal_that_never_answers_is_one_line_after_the_wait(tmp_path, said, monkeypatch):
    from search.errors import StoreFault

    monkeypatch.setenv("SEARCH_STORE_WAIT_S", "1")
    study, backend = _journal(tmp_path, errno.ESTALE)
    backend.broken_until = float("inf")
    started = time.monotonic()
    with pytest.raises(StoreFault) as fault:
        study.optimize(_x, n_trials=1)
    assert time.monotonic() - started < 10
    line = str(fault.value)
    assert "\n" not in line and line.startswith(f"store journal://{backend.path} unreachable for 1 s"), line
    assert os.strerror(errno.ESTALE) in line and "run the same command again" in line


@pytest.mark.parametrize("what", ["the read after it", "its fsync"])
def test_a_journal_append_that_landed_leaves_no_trial_twice_nor_one_running(tmp_path, said, what):
    study, backend = _journal(tmp_path, errno.EIO)
    study.enqueue_trial({"x": 0.25})  # a queued trial's claim is an append followed by a read too
    if what == "the read after it":
        backend.reads_after_append = 2
    else:
        backend.fsyncs = 6
    study.optimize(_x, n_trials=3)
    assert backend.failed > 0
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, trials
    assert trials[0].params == {"x": 0.25}
