"""Queued trials: a study file's `enqueue:` entries run first, once per study, and `search enqueue` adds one trial
to an existing study's queue (one line and nothing queued for a value or key outside the space). Real SQLite (and
PostgreSQL where one answers) stores; Optuna in this process with a stand-in objective (tests/test_guarded.py shows
the warm start with real `search start` runs)."""
from __future__ import annotations

import threading
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.errors import SearchError
from search.hpo.storage import claim_study_attr, open_storage
from search.hpo.studies import load_study, make_sampler, suggest_config
from search.hpo.supervisor import ensure_study
from search.train import config
from tests.support import pg
from tests.support.cli import run
from tests.support.store import trials_of
from tests.test_search_errors import invoke, one_line_exit_2

optuna.logging.set_verbosity(optuna.logging.WARNING)

STUDY = """\
name: {name}
dataset: digits
epochs: 1
trials: 1
sampler: {{name: random, seed: 0}}
pruner: none
space:
  lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
  batch_size: {{type: int, low: 16, high: 64, step: 16}}
  optimizer: {{type: categorical, choices: [adam, sgd]}}
  momentum: {{type: float, low: 0.8, high: 0.95, when: {{optimizer: sgd}}}}
fixed:
  architecture: simple_cnn_v1
  schedule: cosine
"""
ENTRIES = [{"lr": 0.001, "batch_size": 32, "optimizer": "adam"}, {"optimizer": "sgd", "momentum": 0.9}]
ENQUEUE = "enqueue:\n  - {lr: 1e-3, batch_size: 32, optimizer: adam}\n  - {optimizer: sgd, momentum: 0.9}\n"


def study_file(folder: Path, name: str = "warm", extra: str = ENQUEUE) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(STUDY.format(name=name) + extra)
    return path


def run_trials(spec, url: str, n: int) -> list[optuna.trial.FrozenTrial]:
    """n trials as a worker runs them (the study's own sampler, queued trials first), with a stand-in objective."""
    study = optuna.load_study(study_name=spec.name, storage=url, sampler=make_sampler(spec))
    study.optimize(lambda trial: suggest_config(spec, trial).lr, n_trials=n)
    return study.get_trials()


def test_the_first_trials_are_the_enqueued_ones_and_a_resume_queues_them_no_more(tmp_path):
    spec = load_study(str(study_file(tmp_path)))
    url = f"sqlite:///{tmp_path / 'search.db'}"
    study = ensure_study(spec, url)
    assert study.user_attrs["enqueued"] == ENTRIES and study.user_attrs["definition"]["enqueue"] == ENTRIES
    ensure_study(spec, url)  # a resume, before any trial ran
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == ENTRIES
    assert [t.user_attrs["queued_by"] for t in waiting] == ["study file enqueue[0]", "study file enqueue[1]"]

    trials = run_trials(spec, url, 4)
    assert trials[0].params == ENTRIES[0]
    assert {k: trials[1].params[k] for k in ENTRIES[1]} == ENTRIES[1] and set(trials[1].params) == {
        "lr", "batch_size", "optimizer", "momentum"}  # the keys it left out were sampled
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)

    ensure_study(spec, url)  # a resume after the queued trials ran, from a second opener (another worker)
    assert len(optuna.load_study(study_name=spec.name, storage=open_storage(url)).trials) == 4


def test_workers_meeting_a_new_study_together_queue_the_entries_once(tmp_path):
    spec = load_study(str(study_file(tmp_path)))
    url = f"sqlite:///{tmp_path / 'search.db'}"
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            ensure_study(spec, url)
        except BaseException as err:  # noqa: BLE001 (reported below)
            errors.append(err)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    trials = optuna.load_study(study_name=spec.name, storage=url).trials
    assert [t.system_attrs["fixed_params"] for t in trials] == ENTRIES


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.servers)])
def test_the_claim_is_won_once(tmp_path, backend, request):
    if backend == "postgresql":
        url = pg.url_of(request.getfixturevalue("pg_db"))  # skips (or fails) as the fixture says
    else:
        url = f"sqlite:///{tmp_path / 'search.db'}"
    storage = open_storage(url, heartbeat=False)
    optuna.create_study(study_name="c", storage=storage)
    assert claim_study_attr(storage, "c", "enqueued", [{"lr": 0.1}]) is True
    assert claim_study_attr(open_storage(url, heartbeat=False), "c", "enqueued", [{"lr": 0.2}]) is False
    assert optuna.load_study(study_name="c", storage=storage).user_attrs["enqueued"] == [{"lr": 0.1}]


def test_an_edited_enqueue_is_a_changed_definition_and_allow_changes_queues_only_the_new_entry(tmp_path):
    path = study_file(tmp_path)
    url = f"sqlite:///{tmp_path / 'search.db'}"
    ensure_study(load_study(str(path)), url)
    path.write_text(path.read_text() + "  - {optimizer: adam, lr: 0.005}\n")
    edited = load_study(str(path))
    with pytest.raises(SearchError, match=r"\(enqueue changed\)"):
        ensure_study(edited, url)
    assert len(optuna.load_study(study_name="warm", storage=url).trials) == 2  # nothing queued
    study = ensure_study(edited, url, allow_changes=True)
    assert [t.system_attrs["fixed_params"] for t in study.trials] == [*ENTRIES, {"lr": 0.005, "optimizer": "adam"}]
    assert study.trials[2].user_attrs["queued_by"] == "study file enqueue[2]"
    ensure_study(edited, url)
    assert len(study.trials) == 3


# --- search enqueue -----------------------------------------------------------------------------------------

@pytest.fixture
def stored(tmp_path) -> Path:
    """A study in tmp_path/search.db created from a file with no warm start; returns the database."""
    ensure_study(load_study(str(study_file(tmp_path, "q", extra=""))), f"sqlite:///{tmp_path / 'search.db'}")
    return tmp_path / "search.db"


def queued(db: Path) -> list[dict]:
    return [t.system_attrs["fixed_params"] for t in trials_of(db, "q") if t.state == TrialState.WAITING]


def test_search_enqueue_queues_a_train_config_file_and_a_mapping(tmp_path, stored):
    best = tmp_path / "best.yaml"
    # As `search export` writes it: every TrainConfig key, this machine's data_dir, notes under `search:`.
    cfg = config.TrainConfig(dataset="digits", data_dir=str(tmp_path), epochs=1, architecture="simple_cnn_v1",
                             schedule="cosine", lr=0.002, batch_size=48, optimizer="adam")
    config.dump(cfg, best, notes={"study": "other", "trial": 3})
    code, output = invoke(["enqueue", "--study", "q", str(best)], tmp_path)
    assert code == 0, output
    assert output == ("trial 0 queued in study 'q' with lr=0.002, batch_size=48, optimizer=adam; the next free "
                      "worker takes it")
    assert queued(stored) == [{"lr": 0.002, "batch_size": 48, "optimizer": "adam"}]  # momentum: not asked for adam

    mapping = tmp_path / "mine.yaml"
    mapping.write_text("momentum: 0.85\noptimizer: sgd\n")
    code, output = invoke(["enqueue", "--study", "q", "mine.yaml"], tmp_path)
    assert code == 0, output
    assert output.startswith("trial 1 queued in study 'q' with optimizer=sgd, momentum=0.85;")
    # two queued, a budget of one finished trial: the line says so, and how to run both
    assert output.endswith("2 queued trials wait in study 'q', 1 of them beyond its budget of 1 finished trials "
                           "(0 finished); to run them, start the study with --trials 2: "
                           "search start --study q --trials 2")
    assert queued(stored) == [{"lr": 0.002, "batch_size": 48, "optimizer": "adam"},
                              {"optimizer": "sgd", "momentum": 0.85}]
    assert trials_of(stored, "q")[1].user_attrs["queued_by"] == "search enqueue mine.yaml"


@pytest.mark.parametrize("text, words", [
    ("lr: 0.5\n", ["bad.yaml: lr: 0.5 is outside the space", "values in [0.0001, 0.01] (log scale)"]),
    ("batch_size: 40\n", ["batch_size: 40 is not on the space's steps", "in steps of 16 from 16"]),
    ("optimizer: adamw\n", ["optimizer: 'adamw' is not a choice", "'adam', 'sgd'"]),
    ("schedule: cosine\n", ["schedule: not a searched parameter", "searched: lr, batch_size, optimizer, momentum"]),
    ("dropout: 0.1\nlr: 0.001\n", ["dropout: not a searched parameter"]),
    ("momentum: 0.9\n", ["momentum: 0.9 would never be used", "optimizer one of 'sgd'"]),
    ("- lr: 0.001\n", ["expected a mapping of searched parameters"]),
    # a TrainConfig file: keys other than the searched ones must be what the study runs
    ("dataset: digits\nepochs: 1\narchitecture: simple_cnn_v1\nschedule: constant\nlr: 0.001\nbatch_size: 32\n",
     ["schedule 'constant' differs from what study 'q' runs with it (schedule 'cosine')"]),
    ("dataset: mnist\nlr: 0.001\nbatch_size: 32\n",
     ["dataset 'mnist', architecture 'simple_cnn_v2', epochs 10, schedule 'constant' differ", "dataset 'digits'"]),
    ("dataset: digits\nepochs: 1\narchitecture: simple_cnn_v1\nschedule: cosine\nlr: 0.05\nbatch_size: 32\n",
     ["lr: 0.05 is outside the space"]),
])
def test_search_enqueue_refuses_what_the_space_cannot_hold_in_one_line_and_queues_nothing(tmp_path, stored, text,
                                                                                         words):
    before = len(trials_of(stored, "q"))
    (tmp_path / "bad.yaml").write_text(text)
    code, output = invoke(["enqueue", "--study", "q", "bad.yaml"], tmp_path)
    one_line_exit_2(code, output, "bad.yaml", *words)
    assert len(trials_of(stored, "q")) == before


def test_search_enqueue_needs_an_existing_study_and_refuses_a_duplicate(tmp_path, stored):
    (tmp_path / "one.yaml").write_text("lr: 0.001\n")
    code, output = invoke(["enqueue", "--study", "nosuch", "one.yaml"], tmp_path)
    one_line_exit_2(code, output, "no study 'nosuch'", "studies there: q", "search start --study nosuch")
    assert invoke(["enqueue", "--study", "q", "one.yaml"], tmp_path)[0] == 0
    code, output = invoke(["enqueue", "--study", "q", "one.yaml"], tmp_path)
    one_line_exit_2(code, output, "already has trial 0 (waiting) with these parameters; nothing queued")
    assert len(trials_of(stored, "q")) == 1



@pytest.mark.e2e
def test_queue_and_budget_agree_in_enqueue_and_start(tmp_path, stored):
    """A trial queued in a study whose budget is met: `enqueue` and `start` both say it waits and how to run it,
    and `start --trials N` as they say runs it."""
    spec = load_study(str(tmp_path / "q.yaml"))
    run_trials(spec, f"sqlite:///{stored}", 1)  # the budget (trials: 1) is met
    (tmp_path / "one.yaml").write_text("lr: 0.001\nbatch_size: 32\noptimizer: adam\n")
    code, output = invoke(["enqueue", "--study", "q", "one.yaml"], tmp_path)
    line = ("1 queued trial waits in study 'q', it is beyond its budget of 1 finished trials (1 finished); to run "
            "it, start the study with --trials 2: search start --study q --trials 2")
    assert code == 0 and output.endswith(f"with lr=0.001, batch_size=32, optimizer=adam; {line}"), output
    code, output = invoke(["start", "--study", "q.yaml"], tmp_path)
    assert (code, output) == (0, line)
    proc = run(["start", "--study", "q.yaml", "--trials", "2"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "queued trial" not in proc.stdout  # the budget runs it now
    trials = trials_of(stored, "q")
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 and trials[1].params["lr"] == 0.001
