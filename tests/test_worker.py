"""`search worker` (no supervisor): its own CPU share and its own time limit."""
from __future__ import annotations

import pytest

from tests.support.cli import run
from tests.support.store import FINISHED, by_state, trials_of
from tests.support.studies import study_file

pytestmark = pytest.mark.e2e  # every test here starts real processes


def test_a_standalone_worker_takes_its_cpu_threads_and_stops_at_its_timeout(tmp_path):
    spec = study_file(tmp_path, "solo", epochs=1, trials=500)
    proc = run(["worker", "--study", str(spec), "--device", "cpu", "--threads", "1", "--timeout", "3"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "on cpu (1 threads): joining study 'solo'" in proc.stdout
    done = len(by_state(trials_of(tmp_path / "search.db", "solo"), *FINISHED))
    assert f"timeout of 3 s reached with {done}/500 finished trials" in proc.stdout
    assert 0 < done < 500
    assert proc.stderr == ""  # no library warning either


def test_bad_threads_and_timeout_get_one_line_each(tmp_path):
    spec = study_file(tmp_path, "solo", epochs=1, trials=5)
    for flag, value in (("--threads", "0"), ("--timeout", "-1")):
        proc = run(["worker", "--study", str(spec), flag, value], tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert flag in proc.stderr and "Traceback" not in proc.stderr
        assert not (tmp_path / "search.db").exists()  # nothing written
