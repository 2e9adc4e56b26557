"""The search service on a real PostgreSQL: real `search` processes, one fresh database per test.

Skips (with the reason, naming host:port) where no server answers, fails there under $SEARCH_REQUIRE_PG=1; see
tests/support/pg.py.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
import uuid

import pytest
import yaml
from optuna.trial import TrialState

from search.train import config
from tests.support import pg
from tests.support.cli import cli_env, run, search_cmd
from tests.support.store import FINISHED, by_state, trials_of
from tests.support.studies import study_file, write_medmnist_study
from tests.support.wait import free_port, wait_for
from tests.support.wait import http_get as _get

pytestmark = pytest.mark.e2e  # every test here starts real processes

pg.skip_unless_reachable(module=True)


def test_start_status_export_dashboard_then_train_on_postgresql(tmp_path, pg_db):
    url = pg.url_of(pg_db)
    spec = study_file(tmp_path, "pg", epochs=1, trials=3)
    started = run(["start", "--study", str(spec), "--storage", url, "--workers", "2"], tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    assert "finished 3/3" in started.stdout
    assert not (tmp_path / "search.db").exists()  # everything went to PostgreSQL
    trials = trials_of(url, "pg")
    assert len(by_state(trials, *FINISHED)) == 3 and not by_state(trials, TrialState.FAIL, TrialState.RUNNING)

    status = run(["status", "--study", "pg", "--storage", url], tmp_path)
    assert status.returncode == 0, status.stderr
    assert "best val_acc" in status.stdout and "best per architecture" in status.stdout

    exported = run(["export", "--study", "pg", "--storage", url, "-o", "best.yaml"], tmp_path)
    assert exported.returncode == 0, exported.stderr
    best = max(by_state(trials, TrialState.COMPLETE), key=lambda t: t.value)
    assert f"trial {best.number} " in exported.stdout
    assert config.load(tmp_path / "best.yaml").to_dict() == {**best.user_attrs["config"], "device": "auto"}

    port = free_port()
    dash = subprocess.Popen(search_cmd() + ["dashboard", "--storage", url, "--port", str(port)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env())
    try:
        body = wait_for(lambda: _get(f"http://127.0.0.1:{port}/api/studies"), 60, "the dashboard")
        names = [s["study_name"] for s in json.loads(body)["study_summaries"]]
        assert names == ["pg"]
    finally:
        dash.terminate()
        dash.wait(timeout=30)

    trained = run(["train", "best.yaml", "--out", "final"], tmp_path)
    assert trained.returncode == 0, trained.stderr
    m = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert m["epochs"] == 1 and 0 <= m["test_acc"] <= 1


# The cheapest trial the engine runs: one epoch of one batch. The data is a small MedMNIST-format file (256
# training images) rather than digits (1,257): a digits trial costs about 2.5 CPU-seconds, which made 160 trials
# take over 4 minutes on 2 cores; this one about 0.5 s, so the test is about the store, not about training.
# A conditional parameter checks that every worker's suggestions follow the space.
RACE_SPACE = {"lr": {"type": "float", "low": 0.001, "high": 0.01, "log": True},
              "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
              "momentum": {"type": "float", "low": 0.8, "high": 0.95, "when": {"optimizer": "sgd"}}}
WORKERS, TRIALS = 8, 64  # enough trials for every worker to race on each kind of write many times


def test_eight_racing_workers_share_one_study_on_postgresql(tmp_path, pg_db):
    """As Optuna's own storage tests do: many processes on one study, from an empty database (so the eight
    also race to create the tables and the study), and every record must come out whole."""
    url = pg.url_of(pg_db)
    spec = write_medmnist_study(tmp_path, "race", epochs=1, trials=160,
                                sampler={"name": "tpe", "seed": 0, "n_startup_trials": 10},
                                pruner={"name": "median", "n_startup_trials": 5, "n_warmup_steps": 0},
                                space=RACE_SPACE, fixed={"architecture": "simple_cnn_v1", "batch_size": 256})
    # One torch thread per worker: eight workers on a few cores must not each start a thread per core.
    env = cli_env(OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(search_cmd() + ["worker", "--study", str(spec), "--storage", url, "--trials",
                                              str(TRIALS), "--device", "cpu"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(WORKERS)]
    outs = [p.communicate(timeout=900)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out
        assert "Traceback" not in out, out

    trials = trials_of(url, "race")
    finished = by_state(trials, *FINISHED)
    # MaxTrialsCallback stops each worker once the study holds the budget; a worker already in a trial
    # finishes it, so at most one extra trial per worker.
    assert TRIALS <= len(finished) <= TRIALS + WORKERS
    assert not by_state(trials, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # numbers unique and gapless
    assert by_state(trials, TrialState.COMPLETE)
    host = socket.gethostname()
    for t in trials:
        p = t.params
        assert set(p) == ({"lr", "optimizer", "momentum"} if p["optimizer"] == "sgd" else {"lr", "optimizer"})
        assert 0.001 <= p["lr"] <= 0.01 and p["optimizer"] in ("adam", "sgd")
        assert p.get("momentum", 0.8) >= 0.8 and p.get("momentum", 0.95) <= 0.95
        cfg = t.user_attrs["config"]
        assert {k: cfg[k] for k in p} == p, t.number
        assert cfg["epochs"] == 1 and cfg["batch_size"] == 256 and cfg["architecture"] == "simple_cnn_v1"
        assert t.user_attrs["device"] == "cpu" and t.user_attrs["worker"].startswith(host + ":")
        epochs = t.user_attrs["epochs_run"]
        assert sorted(t.intermediate_values) == list(range(1, epochs + 1)), t.number
        assert all(math.isfinite(v) for v in t.intermediate_values.values())
        if t.state == TrialState.COMPLETE:
            assert t.value == max(t.intermediate_values.values()), t.number  # the engine keeps the best epoch
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) >= WORKERS
    assert workers == {f"{host}:{p.pid}" for p in procs}
    attrs = pg.study_attrs(url, "race")[0]
    assert {k: attrs[k] for k in ("dataset", "metric", "epochs")} == {"dataset": "organamnist", "metric": "val_acc",
                                                                     "epochs": 1}
    assert attrs["definition"]["dataset"] == "organamnist"  # stored once, by whichever worker came first


def _running(url: str, study: str):
    running = by_state(trials_of(url, study), TrialState.RUNNING)  # none before the worker created the study
    return next((t for t in running if "config" in t.user_attrs), None)  # its parameters are suggested


def test_kill_9_of_an_unsupervised_worker_is_failed_by_heartbeat_and_retried_once(tmp_path, pg_db):
    url = pg.url_of(pg_db)
    spec = study_file(tmp_path, "kill", epochs=3, trials=20, arch="simple_cnn_v2")
    # Optuna wants whole seconds; a dead worker's trial is stale 3 s after its last heartbeat.
    env = cli_env(SEARCH_HEARTBEAT_S="1", SEARCH_GRACE_S="3")
    args = ["worker", "--study", str(spec), "--storage", url, "--device", "cpu"]
    first = subprocess.Popen(search_cmd() + args + ["--trials", "20"], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    try:
        victim = wait_for(lambda: _running(url, "kill"), 120, "a running trial")
        assert victim.user_attrs["worker"] == f"{socket.gethostname()}:{first.pid}"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == -signal.SIGKILL
    before = trials_of(url, "kill")
    assert before[victim.number].state == TrialState.RUNNING  # nobody else can fail it: no supervisor
    done = len(by_state(before, *FINISHED))

    # A new worker fails a stale trial when it starts one of its own (Optuna's fail_stale_trials) and queues the
    # retry, which ask() then hands out first. Once the grace period has passed, that is the worker's first trial.
    time.sleep(3 + 1)
    second = subprocess.Popen(search_cmd() + args + ["--trials", str(done + 1)], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, out + err
    trials = trials_of(url, "kill")
    assert [t.number for t in by_state(trials, TrialState.FAIL)] == [victim.number]
    # Optuna fails a stale trial without a reason: the trial is FAIL before any callback runs, and a finished
    # trial's attributes cannot change. Its user attributes are what the dead worker wrote.
    assert trials[victim.number].user_attrs == victim.user_attrs and victim.params
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state in FINISHED
    assert retries[0].params == victim.params and "reason" not in retries[0].user_attrs
    assert retries[0].user_attrs["worker"] == f"{socket.gethostname()}:{second.pid}"
    assert [line.split(":")[0] for line in out.splitlines() if line.startswith("trial ")] == \
        [f"trial {retries[0].number}"]
    assert not by_state(trials, TrialState.RUNNING, TrialState.WAITING)
    assert len(by_state(trials, *FINISHED)) == done + 1


def _one_masked_line(proc: subprocess.CompletedProcess, password: str) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert password not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert "***" in lines[0] and "Traceback" not in out
    return lines[0]


def test_unreachable_server_or_missing_database_is_one_masked_line(tmp_path, pg_db):
    # Trust authentication (as on the test server) accepts any password, so a wrong password alone would
    # connect. Port 1 has no server: the connection is refused at once.
    refused = run(["status", "--study", "x", "--storage", "postgresql://postgres:wrongpw@127.0.0.1:1/db"],
                  tmp_path, timeout=15)
    line = _one_masked_line(refused, "wrongpw")
    assert "postgres:***@127.0.0.1:1/db" in line and "cannot open storage" in line

    # A server that accepts the TCP connection and then never answers: the connect timeout ends the wait.
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen(8)
        port = mute.getsockname()[1]
        hung = run(["status", "--study", "x", "--storage", f"postgresql://postgres:wrongpw@127.0.0.1:{port}/db"],
                   tmp_path, timeout=30)
    assert f"postgres:***@127.0.0.1:{port}/db" in _one_masked_line(hung, "wrongpw")

    # The server answers, but the database is not there: its message is shown, the password is not.
    missing = f"search_missing_{uuid.uuid4().hex}"
    gone = run(["status", "--study", "x", "--storage", pg.url_of(missing, password="wrongpw")], tmp_path, timeout=30)
    assert missing in _one_masked_line(gone, "wrongpw")

    # The database is there, the study is not.
    absent = run(["status", "--study", "x", "--storage", pg.url_of(pg_db, password="wrongpw")], tmp_path, timeout=30)
    assert "no study 'x'" in _one_masked_line(absent, "wrongpw")


def test_a_password_in_the_url_appears_in_no_output_and_no_attribute(tmp_path, pg_db):
    secret = "hunter2"
    url = pg.url_of(pg_db, password=secret)  # trust authentication ignores it; the URL carries it everywhere
    spec = study_file(tmp_path, "secret", epochs=1, trials=2)
    outputs = []
    for args in (["start", "--study", str(spec), "--storage", url, "--workers", "1"],
                 ["status", "--study", "secret", "--storage", url],
                 ["studies", "--storage", url],
                 ["export", "--study", "secret", "--storage", url, "-o", "best.yaml"]):
        proc = run(args, tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        outputs.append(proc.stdout + proc.stderr)
    assert "secret" in outputs[2] and "postgres:***@" in outputs[2]  # `studies` names the store, masked
    assert all(secret not in out for out in outputs)
    assert secret not in (tmp_path / "best.yaml").read_text()
    exported = yaml.safe_load((tmp_path / "best.yaml").read_text())
    assert exported["search"]["study"] == "secret"

    trials = trials_of(pg.url_of(pg_db), "secret")
    assert len(by_state(trials, *FINISHED)) == 2
    stored = json.dumps(list(pg.study_attrs(pg.url_of(pg_db), "secret"))
                        + [[t.user_attrs, t.system_attrs, t.params] for t in trials], default=str)
    assert "config" in stored and secret not in stored
