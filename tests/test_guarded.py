"""A study keeps the definition it was created with: a start from an edited file is refused in one line naming
what changed, before anything is written; --allow-changes goes on and records the change. The same real runs show
the warm start: the file's `enqueue:` entry is trial 0, and no later start queues it again."""
from __future__ import annotations

import optuna
import pytest

from tests.support.cli import run
from tests.support.store import trials_of
from tests.support.studies import study_file

pytestmark = pytest.mark.e2e  # every test here starts real processes


def _attrs(tmp_path, name: str) -> dict:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'search.db'}").user_attrs


def test_an_edited_study_file_is_refused_naming_the_changed_key_and_nothing_is_written(tmp_path):
    spec = study_file(tmp_path, "guard", epochs=1, trials=1)
    entry = {"lr": 0.003, "dropout": 0.1, "optimizer": "adam"}
    spec.write_text(spec.read_text() + "enqueue:\n  - {lr: 0.003, dropout: 0.1, optimizer: adam}\n")
    first = run(["start", "--study", str(spec)], tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    created = _attrs(tmp_path, "guard")
    assert created["definition"]["epochs"] == 1 and created["definition"]["dataset"] == "digits"
    before = trials_of(tmp_path / "search.db", "guard")
    # The warm start: a real worker trained the queued entry first, with exactly its values.
    assert [t.params for t in before] == [entry] and before[0].user_attrs["queued_by"] == "study file enqueue[0]"
    assert {k: before[0].user_attrs["config"][k] for k in entry} == entry

    spec.write_text(spec.read_text().replace("epochs: 1", "epochs: 2"))
    refused = run(["start", "--study", str(spec), "--trials", "2"], tmp_path)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "(epochs changed)" in lines[0] and "--allow-changes" in lines[0], lines
    assert "new name" in lines[0] and "Traceback" not in refused.stderr
    assert _attrs(tmp_path, "guard") == created  # nothing written
    assert len(trials_of(tmp_path / "search.db", "guard")) == len(before)
    assert run(["worker", "--study", str(spec), "--trials", "2"], tmp_path).returncode == 2  # the same for a worker

    # The budget is reached already: --allow-changes stores the new definition, and nothing trains.
    forced = run(["start", "--study", str(spec), "--trials", "1", "--allow-changes"], tmp_path)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    attrs = _attrs(tmp_path, "guard")
    assert attrs["definition"]["epochs"] == 2
    assert [c["changed"] for c in attrs["definition_changes"]] == [["epochs"]] and attrs["definition_changes"][0]["at"]
    again = run(["start", "--study", str(spec), "--trials", "1", "--seed", "7"], tmp_path)
    assert again.returncode == 0, again.stderr  # the new definition holds now; a seed changes nothing
    assert len(trials_of(tmp_path / "search.db", "guard")) == 1  # no start queued the warm start again
