"""$SEARCH_REQUIRE_PG=1 (set by .ci/run in CI): a PostgreSQL test whose server does not answer fails, where it would
otherwise skip, so that CI cannot pass with the PostgreSQL tests skipped."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import cli_env
from tests.support.wait import free_port

ROOT = Path(__file__).resolve().parents[1]


def _postgres_test_with_no_server(**env: str) -> subprocess.CompletedProcess:
    nobody = f"postgresql://postgres@127.0.0.1:{free_port()}"  # a port nothing listens on
    environ = cli_env(SEARCH_TEST_PG=nobody)
    environ.pop("SEARCH_REQUIRE_PG", None)  # this run's own setting (CI sets it) is not the one under test
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs",
                           "tests/test_enqueue.py", "-k", "claim and postgresql"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**environ, **env})


@pytest.mark.e2e
@pytest.mark.parametrize("required", [False, True])
def test_no_server_skips_with_the_reason_or_fails_when_required(required):
    done = _postgres_test_with_no_server(**({"SEARCH_REQUIRE_PG": "1"} if required else {}))
    if required:
        assert done.returncode == 1 and "1 failed" in done.stdout, done.stdout
        assert "$SEARCH_REQUIRE_PG=1 requires the PostgreSQL tests to run" in done.stdout
    else:
        assert done.returncode == 0 and "1 skipped" in done.stdout, done.stdout
    assert "no PostgreSQL at 127.0.0.1:" in done.stdout  # the reason, naming host:port
