"""The journal store (journal:// URLs, Optuna's JournalStorage on a file): Optuna's own storage tests against it,
queued trials and once-only claims under racing processes, heartbeats that fail a killed worker's trial, every
command on it; and the refusal of SQLite on a network filesystem, on a fake statfs answer."""
from __future__ import annotations

import ctypes
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import time

import optuna
import pytest
from click.testing import CliRunner
from optuna.testing.pytest_storages import StorageTestCase
from optuna.trial import TrialState

from search.cli import main
from search.hpo import netfs
from search.hpo.storage import claim_study_attr, open_storage
from tests.support.cli import cli_env, run, search_cmd
from tests.support.store import FINISHED, by_state, trials_of
from tests.support.studies import study_file
from tests.support.wait import free_port, http_get, wait_for
from tests.test_storage import _every_queued_trial_taken_once


class TestOptunaStorageTestsOnTheJournalStore(StorageTestCase):
    """Optuna's storage test case (optuna.testing.pytest_storages), run on the store as the workers open it."""

    @pytest.fixture
    def storage(self, tmp_path):  # type: ignore[no-untyped-def]
        return open_storage(f"journal://{tmp_path}/optuna.log")


@pytest.mark.e2e
def test_eight_processes_take_each_queued_trial_exactly_once_on_the_journal(tmp_path):
    _every_queued_trial_taken_once(f"journal://{tmp_path}/queue.log")


def _claim(url: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    storage = open_storage(url, heartbeat=False)
    barrier.wait()
    results.put(claim_study_attr(storage, "c", "enqueued", [os.getpid()]))


@pytest.mark.e2e
def test_six_processes_claiming_one_study_attribute_at_once_win_it_once(tmp_path):
    url = f"journal:{tmp_path}/claim.log"  # the relative form's parser, on an absolute path
    optuna.create_study(study_name="c", storage=open_storage(url, heartbeat=False))
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(6), ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(url, barrier, results)) for _ in range(6)]
    for p in procs:
        p.start()
    won = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    assert sorted(won) == [False] * 5 + [True]
    winner = optuna.load_study(study_name="c", storage=open_storage(url)).user_attrs["enqueued"]
    assert winner[0] in {p.pid for p in procs}


def _running(url: str, name: str):  # type: ignore[no-untyped-def]
    trials = trials_of(url, name)  # none before the worker created the file and the study
    return next((t for t in by_state(trials, TrialState.RUNNING) if len(t.intermediate_values) >= 1), None)


@pytest.mark.e2e
def test_kill_9_of_a_worker_is_failed_by_the_heartbeat_and_resumed_from_its_checkpoint(tmp_path):
    url = f"journal://{tmp_path}/kill.log"
    spec = study_file(tmp_path, "kill", epochs=4, trials=20, arch="simple_cnn_v2")
    env = cli_env(SEARCH_HEARTBEAT_S="1", SEARCH_GRACE_S="3")
    args = ["worker", "--study", str(spec), "--storage", url, "--device", "cpu"]
    first = subprocess.Popen(search_cmd() + args + ["--trials", "20"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    try:
        victim = wait_for(lambda: _running(url, "kill"), 180, "a trial past its first epoch")
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert trials_of(url, "kill")[victim.number].state == TrialState.RUNNING  # no supervisor fails it
    time.sleep(3 + 1)  # past the grace period: the next worker's first trial fails it and takes the retry
    done = len(by_state(trials_of(url, "kill"), *FINISHED))
    second = subprocess.run(search_cmd() + args + ["--trials", str(done + 1)], cwd=tmp_path, capture_output=True,
                            text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stdout + second.stderr
    trials = trials_of(url, "kill")
    assert [t.number for t in by_state(trials, TrialState.FAIL)] == [victim.number]
    retry = next(t for t in trials if t.user_attrs.get("resumed_from_trial") == victim.number)
    assert retry.state in FINISHED and retry.params == victim.params
    assert retry.user_attrs["resumed_at_epoch"] >= 2  # the epoch the dead worker finished is not trained again
    assert retry.user_attrs["worker"] != f"{socket.gethostname()}:{first.pid}"  # the second worker ran it
    assert not by_state(trials, TrialState.RUNNING, TrialState.WAITING)


@pytest.mark.e2e
def test_start_status_export_enqueue_report_and_the_dashboard_on_a_journal_file(tmp_path):
    spec = study_file(tmp_path, "j", epochs=1, trials=3)
    url = "journal:store/j.log"  # relative to the working directory
    (tmp_path / "store").mkdir()
    started = run(["start", "--study", str(spec), "--storage", url, "--workers", "2"], tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    absolute = f"journal://{tmp_path}/store/j.log"
    trials = trials_of(absolute, "j")
    assert len(by_state(trials, *FINISHED)) == 3 and not by_state(trials, TrialState.FAIL, TrialState.RUNNING)
    assert not (tmp_path / "search.db").exists()
    assert list((tmp_path / "store" / "artifacts").glob("*"))  # the trials' files beside the journal

    status = run(["status", "--study", "j", "--storage", absolute], tmp_path)
    assert status.returncode == 0 and "3 trials" in status.stdout, status.stdout + status.stderr
    exported = run(["export", "--study", "j", "--storage", url, "-o", "best.yaml"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    (tmp_path / "one.yaml").write_text("lr: 0.003\ndropout: 0.25\noptimizer: adam\n")
    queued = run(["enqueue", "--study", "j", "--storage", url, "one.yaml"], tmp_path)
    assert queued.returncode == 0 and "trial 3 queued" in queued.stdout, queued.stdout + queued.stderr
    assert trials_of(absolute, "j")[3].state == TrialState.WAITING
    report = run(["report", "--study", "j", "--storage", url, "-o", "rep"], tmp_path)
    assert report.returncode == 0 and (tmp_path / "rep" / "index.html").exists(), report.stderr

    port = free_port()
    dash = subprocess.Popen(search_cmd() + ["dashboard", "--storage", absolute, "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    try:
        body = wait_for(lambda: http_get(f"http://127.0.0.1:{port}/api/studies"), 60, "the dashboard")
        assert [s["study_name"] for s in json.loads(body)["study_summaries"]] == ["j"]
    finally:
        dash.terminate()
        dash.wait(timeout=30)


@pytest.mark.e2e
@pytest.mark.parametrize(("url", "says"), [
    ("journal://host/x.log", "names a host"),
    ("journal:", "names no file"),
    ("journal:///no/such/folder/x.log", "no study store at /no/such/folder/x.log"),
])
def test_a_bad_journal_url_is_one_line(tmp_path, url, says):
    done = run(["status", "--study", "x", "--storage", url], tmp_path)
    assert done.returncode == 2 and says in done.stderr, done.stderr
    assert len((done.stdout + done.stderr).strip().splitlines()) == 1


@pytest.mark.e2e
def test_read_only_commands_create_no_journal_file(tmp_path):
    done = run(["status", "--study", "x", "--storage", "journal:x.log"], tmp_path)
    assert done.returncode == 2 and f"no study store at {tmp_path}/x.log" in done.stderr, done.stderr
    assert not (tmp_path / "x.log").exists()


# --- SQLite on a network filesystem ----------------------------------------------------------------------


def _answering(magic: int):  # type: ignore[no-untyped-def]
    """A statfs(path, buf) with libc's signature whose buffer says: filesystem ``magic``."""
    def statfs(path: bytes, buffer: ctypes.Array) -> int:
        assert os.path.isdir(path)  # it is asked about the store's folder
        ctypes.c_long.from_buffer(buffer).value = magic
        return 0
    return statfs


def test_the_real_statfs_call_finds_this_folder_local(tmp_path):
    magic = netfs.type_of(tmp_path)
    assert isinstance(magic, int) and magic != 0
    assert netfs.network_filesystem(tmp_path) is None


@pytest.mark.parametrize(("magic", "name"), [(0x6969, "NFS"), (0x0BD00BD0, "Lustre"), (0x47504653, "GPFS"),
                                             (0x19830326, "BeeGFS"), (0xFF534D42, "CIFS")])
def test_a_network_filesystem_is_named_from_the_statfs_answer(tmp_path, monkeypatch, magic, name):
    monkeypatch.setattr(netfs, "STATFS", _answering(magic))
    assert netfs.network_filesystem(tmp_path) == name


def test_sqlite_on_nfs_is_refused_in_one_line_unless_allowed(tmp_path, monkeypatch):
    db = tmp_path / "search.db"
    optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{db}"))
    before = db.read_bytes()
    monkeypatch.setattr(netfs, "STATFS", _answering(0x6969))
    monkeypatch.delenv("SEARCH_ALLOW_NETWORK_SQLITE", raising=False)
    refused = CliRunner().invoke(main, ["status", "--study", "s", "--storage", f"sqlite:///{db}"])
    assert refused.exit_code == 2, refused.output
    line = refused.output.strip()
    assert len(line.splitlines()) == 1 and f"{db} is on NFS" in line
    assert f"journal://{tmp_path}/search.log" in line and "PostgreSQL" in line and "--allow-network-sqlite" in line
    assert db.read_bytes() == before  # nothing written

    allowed = CliRunner().invoke(main, ["status", "--study", "s", "--allow-network-sqlite", "--storage",
                                        f"sqlite:///{db}"])
    assert allowed.exit_code == 0 and "study 's'" in allowed.output, allowed.output
    monkeypatch.delenv("SEARCH_ALLOW_NETWORK_SQLITE", raising=False)  # the flag set it for this process


def test_a_journal_on_nfs_is_what_it_is_made_for(tmp_path, monkeypatch):
    monkeypatch.setattr(netfs, "STATFS", _answering(0x6969))
    storage = open_storage(f"journal://{tmp_path}/ok.log", heartbeat=False)
    optuna.create_study(study_name="s", storage=storage)
    assert [s.study_name for s in storage.get_all_studies()] == ["s"]
