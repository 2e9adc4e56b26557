"""A PostgreSQL store that goes away under a running 2-worker `search start`, on the real server: every connection
dropped (pg_terminate_backend), the database closed to connections for a while (ALLOW_CONNECTIONS false: an outage
of this test's database alone), and, where the test may control the server, a real stop of it.

Skips (with the reason, naming host:port) where no server answers, fails instead under $SEARCH_REQUIRE_PG=1; see
tests/support/pg.py for $SEARCH_TEST_PG.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import threading
import time

import pytest
from optuna.trial import TrialState

from tests.support import pg
from tests.support.cli import cli_env, search_cmd
from tests.support.store import FINISHED, by_state, trials_of
from tests.support.studies import write_medmnist_study
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e  # every test here starts real processes

pg.skip_unless_reachable(module=True)  # fails instead under $SEARCH_REQUIRE_PG=1

def _study(tmp_path, trials: int):
    """Trials of about a second (a small MedMNIST-format file), so that the search is still running while the store
    goes away and comes back, and short enough that the whole test stays well under a minute of training."""
    return write_medmnist_study(tmp_path, "outage", epochs=3, trials=trials)


def _start(tmp_path, spec, url, trials=None, **env):
    more = ["--trials", str(trials)] if trials else []
    return subprocess.Popen(search_cmd() + ["start", "--study", str(spec), "--storage", url, "--workers", "2", *more],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cli_env(OMP_NUM_THREADS="1", **env))


def _read(proc, into: list[str]) -> threading.Thread:
    """The command's output, read as it comes (a full pipe would stop the command)."""
    thread = threading.Thread(target=lambda: into.extend(proc.stdout), daemon=True)
    thread.start()
    return thread


def _trials(url):
    try:
        return trials_of(url, "outage")
    except Exception:  # the study or its tables do not exist yet, or the database is closed right now
        return []


def _terminate(database: str) -> int:
    """End every connection to ``database`` (and only to it); how many there were."""
    conn = pg.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                        "AND pid <> pg_backend_pid()", (database,))
            return cur.fetchone()[0]
    finally:
        conn.close()


def _allow_connections(database: str, allow: bool) -> None:
    conn = pg.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {"true" if allow else "false"}')
    finally:
        conn.close()


def _finished_whole(url: str, budget: int) -> list:
    trials = trials_of(url, "outage")
    assert len(by_state(trials, *FINISHED)) == budget
    assert not by_state(trials, TrialState.RUNNING, TrialState.WAITING)
    return trials


def test_dropped_connections_are_waited_out_with_no_failed_trial(tmp_path, pg_db):
    url, budget = pg.url_of(pg_db), 16
    proc = _start(tmp_path, _study(tmp_path, budget), url)
    lines: list[str] = []
    reader = _read(proc, lines)
    dropped = []
    try:
        wait_for(lambda: by_state(_trials(url), TrialState.RUNNING), 300, "a running trial")
        # Every connection, again and again while the search runs: some die idle in a pool, some in the middle of
        # a statement or a commit, some while they are being opened (a worker opening the store). Looked for
        # often, so that the count of drops follows the search's own connections, not the machine's speed.
        while proc.poll() is None:
            dropped.append(_terminate(pg_db))
            time.sleep(0.3 if dropped[-1] else 0.05)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(30)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert sum(bool(n) for n in dropped) >= 10, dropped
    assert "Traceback" not in out and "Error" not in out, out
    trials = _finished_whole(url, budget)
    assert not by_state(trials, TrialState.FAIL), out


def test_a_closed_database_is_waited_out_then_given_up_with_the_trials_left_to_resume(tmp_path, pg_db):
    url, budget = pg.url_of(pg_db), 12
    spec = _study(tmp_path, budget)
    env = dict(SEARCH_STORE_WAIT_S="60", SEARCH_HEARTBEAT_S="1", SEARCH_GRACE_S="3")

    # 1. Closed for about 8 s while trials run: waited out, one line on the terminal, no trial failed.
    proc = _start(tmp_path, spec, url, **env)
    lines: list[str] = []
    reader = _read(proc, lines)
    try:
        wait_for(lambda: by_state(_trials(url), TrialState.RUNNING), 300, "a running trial")
        _allow_connections(pg_db, False)
        try:
            _terminate(pg_db)
            time.sleep(8)
        finally:
            _allow_connections(pg_db, True)
        proc.wait(timeout=600)
    finally:
        _allow_connections(pg_db, True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(30)
    out = "".join(lines)
    assert proc.returncode == 0, out
    waits = [line for line in out.splitlines() if "unreachable" in line]
    assert len(waits) == 1 and "retrying for up to 60 s" in waits[0], out
    assert "Traceback" not in out, out
    assert not by_state(_finished_whole(url, budget), TrialState.FAIL), out

    # 2. Closed for longer than the wait: one line, exit 1, the running trials left RUNNING; the same command,
    # once the database is back, resumes them and finishes the budget.
    more = budget + 8
    proc = _start(tmp_path, spec, url, more, **{**env, "SEARCH_STORE_WAIT_S": "4"})
    lines = []
    reader = _read(proc, lines)
    try:
        wait_for(lambda: [t for t in by_state(_trials(url), TrialState.RUNNING) if t.intermediate_values], 300,
                 "a running trial with an epoch done")
        _allow_connections(pg_db, False)
        _terminate(pg_db)
        proc.wait(timeout=120)
    finally:
        _allow_connections(pg_db, True)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(30)
    out = "".join(lines)
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    last = out.strip().splitlines()[-1]
    assert "unreachable for 4 s" in last and "run the same command again" in last, out
    left = by_state(trials_of(url, "outage"), TrialState.RUNNING)
    assert left, out  # not failed: they resume
    assert not by_state(trials_of(url, "outage"), TrialState.FAIL)

    time.sleep(4)  # the left trials' heartbeats are older than the grace period now
    again = subprocess.run(search_cmd() + ["start", "--study", str(spec), "--storage", url, "--workers", "2",
                            "--trials", str(more)],
                           cwd=tmp_path, capture_output=True, text=True, env=cli_env(OMP_NUM_THREADS="1", **env),
                           timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    trials = trials_of(url, "outage")
    assert len(by_state(trials, *FINISHED)) == more
    resumed = {t.system_attrs.get("failed_trial") for t in trials}
    assert {t.number for t in left} <= resumed  # each left trial was retried, from its checkpoint


def _server_control() -> tuple[str, str] | str:
    """(pg_ctlcluster, version) when this test may stop and start the server; otherwise why not."""
    if pg.WHERE.split(":")[0] not in ("127.0.0.1", "localhost"):
        return f"the test server {pg.WHERE} is not on this machine"
    tool = shutil.which("pg_ctlcluster")
    if tool is None:
        return "pg_ctlcluster is not installed (Debian's postgresql-common)"
    versions = sorted(os.path.basename(os.path.dirname(v)) for v in glob.glob("/etc/postgresql/*/main"))
    if not versions:
        return "no cluster under /etc/postgresql/*/main"
    if os.geteuid() != 0:
        return "stopping the server needs root"
    return tool, versions[-1]


@pytest.mark.slow
def test_a_real_server_stop_of_ten_seconds_is_waited_out(tmp_path, pg_db):
    control = _server_control()
    if isinstance(control, str):
        pytest.skip(control)
    tool, version = control
    url, budget = pg.url_of(pg_db), 12
    proc = _start(tmp_path, _study(tmp_path, budget), url)
    lines: list[str] = []
    reader = _read(proc, lines)
    try:
        wait_for(lambda: by_state(_trials(url), TrialState.RUNNING), 300, "a running trial")
        subprocess.run([tool, version, "main", "stop"], check=True, capture_output=True, timeout=60)
        try:
            time.sleep(10)
        finally:
            subprocess.run([tool, version, "main", "start"], check=True, capture_output=True, timeout=120)
        proc.wait(timeout=600)
    finally:
        if pg.unreachable():
            subprocess.run([tool, version, "main", "start"], capture_output=True, timeout=120)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(30)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out
    assert len([line for line in out.splitlines() if "unreachable" in line and "retrying for up to 120 s" in line]) \
        == 1, out
    assert not by_state(_finished_whole(url, budget), TrialState.FAIL), out
