"""The search service end to end: real `search` processes, a real SQLite file, real signals, digits data."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from search.train import config
from tests.support.cli import cli_env, run, search_cmd
from tests.support.store import FINISHED, by_state, trials_of
from tests.support.studies import study_file
from tests.support.wait import free_port, wait_for
from tests.support.wait import http_get as _get

pytestmark = pytest.mark.e2e  # every test here starts real processes


def test_two_workers_reach_the_budget_exactly_and_prune(tmp_path):
    spec = study_file(tmp_path)
    proc = run(["start", "--study", str(spec), "--workers", "2"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = trials_of(tmp_path / "search.db", "tiny")
    assert len(by_state(trials, *FINISHED)) == 8  # exactly the budget
    assert not by_state(trials, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    assert len(by_state(trials, TrialState.PRUNED)) >= 1
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2 and all(w.startswith(socket.gethostname() + ":") for w in workers)
    for t in trials:
        assert t.user_attrs["device"] == "cpu" and t.user_attrs["params"] > 0
        assert t.user_attrs["epoch_seconds"] > 0 and t.user_attrs["images_per_second"] > 0
        assert ("momentum" in t.params) == (t.params["optimizer"] == "sgd")
    pruned = by_state(trials, TrialState.PRUNED)[0]
    assert pruned.user_attrs["epochs_run"] < 3
    assert "finished 8/8" in proc.stdout and "| ETA " in proc.stdout
    assert not re.search(r"[\r\x1b\x08]", proc.stdout + proc.stderr)  # into a pipe: plain lines only

    # A second run of the same command finds the budget done; --trials raises it and resumes the same study.
    again = run(["start", "--study", str(spec), "--workers", "2", "--trials", "10"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(by_state(trials_of(tmp_path / "search.db", "tiny"), *FINISHED)) == 10

    # status, export, then train the exported file unchanged
    status = run(["status", "--study", "tiny"], tmp_path)
    assert status.returncode == 0 and "best val_acc" in status.stdout and "best per architecture" in status.stdout
    exported = run(["export", "--study", "tiny", "-o", "best.yaml"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    best = max(by_state(trials_of(tmp_path / "search.db", "tiny"), TrialState.COMPLETE), key=lambda t: t.value)
    cfg = config.load(tmp_path / "best.yaml")
    assert cfg.to_dict() == {**best.user_attrs["config"], "device": "auto"}
    assert cfg.epochs == 3 and cfg.lr == best.params["lr"]
    trained = run(["train", "best.yaml", "--out", "final"], tmp_path)
    assert trained.returncode == 0, trained.stderr
    m = json.loads((tmp_path / "final" / "metrics.json").read_text())
    # the search's best configuration learns the ten digits (chance: 0.1), and so does its retraining
    assert best.value > 0.5 and m["epochs"] == 3 and m["val_acc"] > 0.5 and m["test_acc"] > 0.5, (best.value, m)
    second = run(["export", "--study", "tiny", "-o", "second.yaml", "--rank", "2"], tmp_path)
    assert second.returncode == 0, second.stderr
    values = sorted((t.value for t in by_state(trials_of(tmp_path / "search.db", "tiny"), TrialState.COMPLETE)),
                    reverse=True)
    notes = yaml.safe_load((tmp_path / "second.yaml").read_text())["search"]
    assert notes["rank"] == 2 and notes["value"] == values[1] and notes["study"] == "tiny"


def running_trial(db: Path, name: str):
    running = by_state(trials_of(db, name), TrialState.RUNNING)  # none before the study exists
    # "config" is recorded once the trial's parameters are drawn (its worker is recorded before): a trial taken
    # earlier may still have none, and its kill would test a retry of nothing
    return next((t for t in running if "config" in t.user_attrs), None)


def test_kill_9_of_a_worker_fails_its_trial_once_retries_it_and_replaces_the_worker(tmp_path):
    spec = study_file(tmp_path, "kill", epochs=4, trials=6, arch="simple_cnn_v2")
    db = tmp_path / "search.db"
    proc = subprocess.Popen(search_cmd() + ["start", "--study", str(spec), "--workers", "2"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    victim = wait_for(lambda: running_trial(db, "kill"), 300, "a running trial")
    pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
    os.kill(pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    trials = trials_of(db, "kill")
    failed = by_state(trials, TrialState.FAIL)
    assert [t.number for t in failed] == [victim.number]
    assert "died (killed by SIGKILL)" in failed[0].user_attrs["reason"]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == victim.params and "reason" not in retries[0].user_attrs
    assert not by_state(trials, TrialState.RUNNING, TrialState.WAITING)
    assert len(by_state(trials, *FINISHED)) == 6
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) >= 3  # the two first workers and the replacement
    assert "started replacement" in out
    assert "Warning" not in out and "Traceback" not in out  # no library warning reaches the terminal


def test_sigint_stops_within_30_s_and_the_rerun_resumes(tmp_path):
    spec = study_file(tmp_path, "stop", epochs=4, trials=30, arch="simple_cnn_v2")
    db = tmp_path / "search.db"
    proc = subprocess.Popen(search_cmd() + ["start", "--study", str(spec), "--workers", "2"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env(),
                            start_new_session=True)
    wait_for(lambda: running_trial(db, "stop"), 300, "a running trial")
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 30
    assert proc.returncode == 130, out + err
    assert "Run the same command again to resume" in err and "Traceback" not in err
    trials = trials_of(db, "stop")
    assert not by_state(trials, TrialState.RUNNING)
    interrupted = by_state(trials, TrialState.FAIL)
    assert interrupted and all(t.user_attrs.get("reason") == "interrupted" for t in interrupted)
    done = len(by_state(trials, *FINISHED))
    again = run(["start", "--study", str(spec), "--workers", "2", "--trials", str(done + 2)], tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(by_state(trials_of(db, "stop"), *FINISHED)) == done + 2


def test_eight_workers_and_a_live_dashboard_share_one_sqlite_file(tmp_path):
    spec = study_file(tmp_path, "many", epochs=1, trials=16)
    db = tmp_path / "search.db"
    # create the store first so the dashboard has something to serve from the start
    assert run(["start", "--study", str(spec), "--workers", "1", "--trials", "1"], tmp_path).returncode == 0
    port = free_port()
    dash = subprocess.Popen(search_cmd() + ["dashboard", "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    try:
        url = f"http://127.0.0.1:{port}/api/studies"
        wait_for(lambda: _get(url), 60, "the dashboard")
        proc = subprocess.Popen(search_cmd() + ["start", "--study", str(spec), "--workers", "8"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
        reads = 0
        while proc.poll() is None:
            assert _get(url) is not None  # the dashboard keeps answering while 8 workers write
            reads += 1
            time.sleep(0.3)
        out = proc.stdout.read()
        assert proc.returncode == 0, out
        assert "database is locked" not in out and reads > 0
    finally:
        dash.terminate()
        dash.wait(timeout=30)
    trials = trials_of(db, "many")
    assert len(by_state(trials, *FINISHED)) == 16
    assert not by_state(trials, TrialState.FAIL, TrialState.RUNNING)
    assert len({t.user_attrs["worker"] for t in trials}) >= 8
