"""A failed trial keeps its full traceback in its log (an artifact beside its learning curve), and
`search status --trial N` shows it; the failure line of `search start` ends with that command."""
from __future__ import annotations

import pytest

from tests.support.cli import run
from tests.support.studies import study_file

pytestmark = pytest.mark.e2e  # every test here starts real processes


def test_a_failed_trial_keeps_its_traceback_and_status_shows_it(tmp_path):
    spec = study_file(tmp_path, "broken", epochs=1, trials=1)
    spec.write_text(spec.read_text().replace("batch_size: 64", "batch_size: 5000"))  # digits has 1,437 images
    proc = run(["start", "--study", str(spec)], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr  # every trial fails: the search gives up, in one line
    assert ("trial 0 failed: SearchError: batch_size 5000 is larger than the" in proc.stdout
            and "(details: search status --study broken --trial 0)" in proc.stdout), proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr  # the terminal keeps to one line per failure

    status = run(["status", "--study", "broken", "--trial", "0"], tmp_path)
    assert status.returncode == 0, status.stderr
    out = status.stdout
    assert out.startswith("trial 0: fail\n") and "parameters: lr=" in out and "device: cpu" in out
    assert "reason: SearchError: batch_size 5000" in out
    assert "lines of trial-0-log.txt:" in out and "Traceback (most recent call last):" in out
    assert "search.errors.SearchError: batch_size 5000 is larger than the" in out.splitlines()[-1]

    missing = run(["status", "--study", "broken", "--trial", "99"], tmp_path)
    assert missing.returncode == 2 and "--trial 99" in missing.stderr and "valid: 0.." in missing.stderr
