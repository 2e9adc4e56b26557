"""Tests that need something outside Python (a PostgreSQL server, a SLURM, kubectl): where it is missing they skip
with the reason; where CI sets the variable that requires them ($SEARCH_REQUIRE_PG, $SEARCH_REQUIRE_SLURM,
$SEARCH_REQUIRE_KUBECTL: .ci/run) they fail instead, so that a run cannot pass with them skipped."""
from __future__ import annotations

import os

import pytest


def required(variable: str) -> bool:
    return os.environ.get(variable, "") == "1"


def skip_or_fail(reason: str, variable: str, what: str, *, module: bool = False) -> None:
    """Skip the calling test (with `module`, its whole module) saying why; fail instead under $VARIABLE=1."""
    if required(variable):
        pytest.fail(f"{reason}; ${variable}=1 requires {what} to run", pytrace=False)
    pytest.skip(reason, allow_module_level=module)
