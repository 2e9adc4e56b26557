"""Optuna's private parts that the study store relies on (search/hpo/storage.py, search/hpo/proxy.py,
search/hpo/artifacts.py) are still there, with the shape we use: a newer Optuna that changes one fails here,
by name, rather than somewhere in a running search. pyproject.toml pins the versions this was checked with."""
from __future__ import annotations

import importlib.metadata
import inspect

import optuna
import pytest
from packaging.requirements import Requirement

from search.hpo import storage

ADVICE = ("check search/hpo/storage.py against this Optuna (the list of calls safe to repeat, the stale-trial "
          "check, the two SQL statements) before widening the optuna pin in pyproject.toml")


def _fail(what: str) -> None:
    pytest.fail(f"Optuna {optuna.__version__}: {what}; {ADVICE}", pytrace=False)


def test_the_installed_optuna_is_one_the_pin_allows():
    pin = next(Requirement(r) for r in importlib.metadata.requires("search") or [] if r.startswith("optuna"))
    if optuna.__version__ not in pin.specifier:
        _fail(f"installed, but pyproject.toml allows {pin.specifier}")


@pytest.mark.parametrize(("name", "params"), [
    ("_get_stale_trial_ids", ["self", "study_id"]),
    ("_create_new_trial", ["self", "study_id", "template_trial"]),
    ("_set_trial_param", ["self", "trial_id", "param_name", "param_value_internal", "distribution",
                          "previous_distribution"]),
    ("_get_trials", None),
    ("set_trial_state_values", ["self", "trial_id", "state", "values"]),
    ("record_heartbeat", ["self", "trial_id"]),
])
def test_rdbstorage_calls_the_wrapper_retries_or_overrides(name, params):
    fn = getattr(optuna.storages.RDBStorage, name, None)
    if fn is None:
        _fail(f"RDBStorage.{name} is gone")
    if params is not None and list(inspect.signature(fn).parameters) != params:
        _fail(f"RDBStorage.{name}{inspect.signature(fn)} is not ({', '.join(params)})")


def test_the_tables_and_columns_our_own_statements_use():
    from optuna.storages._rdb import models

    wanted = {models.TrialModel: ("trials", {"trial_id", "study_id", "state", "datetime_start"}),
              models.TrialHeartbeatModel: ("trial_heartbeats", {"trial_heartbeat_id", "trial_id"}),
              models.StudyUserAttributeModel: ("study_user_attributes", {"study_id", "key", "value_json"})}
    for model, (table, columns) in wanted.items():
        if model.__tablename__ != table or not columns <= set(model.__table__.c.keys()):
            _fail(f"{model.__name__} is not table {table} with columns {sorted(columns)}")


def test_a_storage_error_keeps_the_drivers_error_as_its_cause(tmp_path):
    # faults.kind reads the driver's words from the error's chain: Optuna must raise from the driver's error.
    store = storage.open_storage(f"sqlite:///{tmp_path}/x.db", heartbeat=False)
    store.engine.dispose()
    (tmp_path / "x.db").write_bytes(b"not a database" * 1000)
    session = optuna.storages._rdb.storage._create_scoped_session
    try:
        with session(store.scoped_session) as s:
            s.execute(__import__("sqlalchemy").text("SELECT * FROM studies"))
    except optuna.exceptions.StorageInternalError as err:
        if "file is not a database" not in str(err.__cause__):
            _fail(f"StorageInternalError's cause is {err.__cause__!r}, not the driver's error")
    else:
        _fail("a query on a damaged file raised no StorageInternalError")


def test_the_private_names_used_elsewhere(tmp_path):
    store = storage.open_storage(f"sqlite:///{tmp_path}/x.db", heartbeat=False)
    if getattr(optuna.storages.get_storage(store), "_backend", None) is not store:
        _fail("get_storage no longer wraps an RDBStorage in a cache whose _backend is it: "
              "search/hpo/artifacts.py reads it")
    try:
        from optuna.storages._grpc.auto_generated import api_pb2_grpc  # noqa: F401
    except ImportError as err:
        if err.name in ("grpc", "google", "google.protobuf"):
            pytest.skip(f"grpcio/protobuf not installed ({err.name})")
        _fail(f"optuna.storages._grpc.auto_generated.api_pb2_grpc does not import ({err}): search/hpo/proxy.py")


def test_the_heartbeat_thread_a_packs_members_beat_with():
    # search/hpo/packs.py: the members of a pack other than the first beat as Optuna's optimize makes its trial beat.
    from optuna.storages import _heartbeat

    fn = getattr(_heartbeat, "get_heartbeat_thread", None)
    if fn is None or list(inspect.signature(fn).parameters) != ["trial_id", "storage"]:
        _fail("optuna.storages._heartbeat.get_heartbeat_thread(trial_id, storage) is gone")
